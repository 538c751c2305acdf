"""The training loop as one rank of a torch.distributed group: 2 real processes, gloo on
127.0.0.1, one thread each, on digits. No Ray.

One spawn runs every case in order (starting two torch processes costs seconds): shards,
a 2-epoch run, a refused batch size, a non-finite loss forced on rank 1 only."""

import json
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainables import distributed
from trainables.data import load_data
from trainables.errors import ConfigError
from trainables.loop import Trainer, train
from trainables.recipe import Recipe

TINY = {"dataset": "digits", "width": 8, "epochs": 2, "batch_size": 64, "precision": "fp32",
        "lr": 0.1}
WORLD = 2
TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    try:
        data = load_data("digits")
        result: dict = {"rank": rank, "world_size": distributed.world_size()}
        n = len(data.train_y)
        result["shard"] = distributed.shard(
            distributed.epoch_permutation(n, 0, 0, torch.device("cpu")), rank, world).tolist()
        run = train(Recipe.from_dict(TINY), data, "cpu")
        result["history"] = run.history
        if rank == 0:
            torch.save(run.model.state_dict(), Path(out) / "weights.pt")
        try:
            Trainer(Recipe.from_dict({**TINY, "batch_size": 63}), data, torch.device("cpu"))
        except ConfigError as e:
            result["refused"] = str(e)
        if rank == 1:  # a non-finite loss seen by this rank alone
            import trainables.loop as loop
            loop._finite = lambda loss: False
        result["nonfinite"] = train(Recipe.from_dict({**TINY, "epochs": 3}), data, "cpu").history
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(result, default=str))
        dist.barrier()
    finally:
        _leave(rank, world, Path(out))


def _leave(rank: int, world: int, out: Path) -> None:
    """Rank 0 hosts the TCP store, and tearing it down while another rank still talks to it
    aborts that process ("terminate called without an active exception"; a barrier before
    leaving still lost the race once in 700 runs): the others leave first and say so in a
    file, then rank 0."""
    if rank != 0:
        dist.destroy_process_group()
        (out / f"left{rank}").touch()
        return
    deadline = time.monotonic() + 30
    while (time.monotonic() < deadline
           and not all((out / f"left{r}").exists() for r in range(1, world))):
        time.sleep(0.05)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    ctx = mp.start_processes(_rank_main, args=(WORLD, _free_port(), str(out)), nprocs=WORLD,
                             join=False, start_method="spawn")
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not ctx.join(timeout=5):
            assert time.monotonic() < deadline, "ranks still running: a collective hangs"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def test_shards_are_disjoint_and_cover_the_split(ranks):
    _, (r0, r1) = ranks
    n = len(load_data("digits").train_y)
    assert not set(r0["shard"]) & set(r1["shard"])
    assert sorted(r0["shard"] + r1["shard"]) == list(range(n))
    assert abs(len(r0["shard"]) - len(r1["shard"])) <= 1


def test_both_ranks_report_the_same_global_metrics(ranks):
    _, (r0, r1) = ranks
    assert r0["world_size"] == r1["world_size"] == WORLD
    for a, b in zip(r0["history"], r1["history"], strict=True):
        assert a["world_size"] == b["world_size"] == WORLD
        assert a["val_acc"] == b["val_acc"] and a["val_loss"] == pytest.approx(b["val_loss"])
        assert a["train_loss"] == pytest.approx(b["train_loss"])
    assert r0["history"][-1]["stop_reason"] == r1["history"][-1]["stop_reason"] == "completed"
    assert r0["history"][-1]["test_acc"] == r1["history"][-1]["test_acc"]
    assert r0["history"][-1]["val_acc"] > 0.3  # it learned something in 2 epochs


def test_global_val_accuracy_is_what_one_process_computes_on_the_same_weights(ranks):
    out, (r0, _) = ranks
    trainer = Trainer(Recipe.from_dict(TINY), load_data("digits"), torch.device("cpu"))
    trainer.model.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    val_loss, val_acc = trainer.evaluate("val")
    assert trainer.world_size == 1
    assert val_acc == r0["history"][-1]["val_acc"]
    assert val_loss == pytest.approx(r0["history"][-1]["val_loss"], rel=1e-5)


def test_batch_size_not_divisible_by_world_size_is_refused_in_one_line(ranks):
    _, (r0, r1) = ranks
    for r in (r0, r1):
        msg = r["refused"]
        assert "\n" not in msg and "batch_size" in msg and "63" in msg and "divisible" in msg
        assert "world size 2" in msg


def test_non_finite_loss_on_one_rank_stops_both(ranks):
    _, (r0, r1) = ranks
    for r in (r0, r1):
        assert len(r["nonfinite"]) == 1, "both ranks stop after the first epoch"
        assert r["nonfinite"][-1]["stop_reason"] == "non_finite_loss"
    assert r0["nonfinite"][0]["train_loss"] < 10  # rank 0's own loss was fine


def test_one_process_is_world_one_without_a_group():
    assert not dist.is_initialized()
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.local_batch(63, 1) == 63
    with pytest.raises(ConfigError, match="divisible by the world size 4"):
        distributed.local_batch(10, 4)
    assert distributed.shard_bounds(10, 0, 3) == (0, 4)
    assert distributed.shard_bounds(10, 2, 3) == (7, 10)
    rows = train(Recipe.from_dict({**TINY, "epochs": 1}), load_data("digits"), "cpu").history
    assert rows[-1]["world_size"] == 1
