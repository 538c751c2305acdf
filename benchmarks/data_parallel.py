"""Benchmark 8, data-parallel trials: one trial over 2 workers vs 1 worker, same global batch.

The pure loop (``trainables.loop.train``), no Ray: 1 process x 2 threads against 2 processes x
1 thread (``torch.multiprocessing``, gloo on 127.0.0.1: what Ray Train's TorchTrainer sets up
for a ``--workers-per-trial 2`` trial), on the same recipe and global batch size. Figures:
training images/s of the last epoch (median over seeds) and the final val_acc (mean over seeds).
The target: 2 workers reach val_acc within 1 point of 1 worker (the recipe means the same thing
at any worker count). Speed on CPU is reported, not targeted: two processes on two cores pay
an all-reduce per step.

    python benchmarks/data_parallel.py [--seeds 0 1 2] [--epochs 6] [--width 16]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _common import emit, mean, median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.data import load_data  # noqa: E402
from trainables.loop import train  # noqa: E402
from trainables.recipe import Recipe  # noqa: E402


def _recipe(args: argparse.Namespace, seed: int) -> Recipe:
    return Recipe.from_dict({"dataset": "digits", "width": args.width, "epochs": args.epochs,
                             "batch_size": args.batch_size, "precision": "fp32", "seed": seed})


def _summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    return {"val_acc": history[-1]["val_acc"], "images_per_s": history[-1]["images_per_s"],
            "world_size": history[-1]["world_size"]}


def _rank(rank: int, world: int, port: int, out: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    data = load_data("digits")
    rows = [_summary(train(_recipe(args, seed), data, "cpu").history) for seed in args.seeds]
    dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(rows))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128, help="GLOBAL batch")
    args = p.parse_args()
    torch.set_num_threads(2)
    data = load_data("digits")
    one = [_summary(train(_recipe(args, seed), data, "cpu").history) for seed in args.seeds]
    with tempfile.TemporaryDirectory() as d:
        out = str(Path(d) / "two.json")
        mp.start_processes(_rank, args=(2, _free_port(), out, args), nprocs=2,
                           start_method="spawn")
        two = json.loads(Path(out).read_text())
    acc1, acc2 = mean([r["val_acc"] for r in one]), mean([r["val_acc"] for r in two])
    ips1, ips2 = median([r["images_per_s"] for r in one]), median([r["images_per_s"] for r in two])
    emit("data_parallel", {
        "one_worker_2_threads": {"val_acc_mean": acc1, "images_per_s": ips1,
                                 "val_acc": [r["val_acc"] for r in one]},
        "two_workers_1_thread": {"val_acc_mean": acc2, "images_per_s": ips2,
                                 "val_acc": [r["val_acc"] for r in two]},
        "val_acc_gap_points": 100 * (acc2 - acc1)},
        ratio=ips2 / ips1, target="|val_acc gap| <= 1 point (ratio: images/s 2 workers / 1)",
        met=abs(acc2 - acc1) <= 0.01, args=args)


if __name__ == "__main__":
    main()
