"""Faults caused on purpose, on real Ray: killed trial workers, out of memory, corrupt state
(killed drivers: test_contract.py). Nothing already earned may be lost, and nothing may silently
start over."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from search_spaces import grid, loguniform
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.data import DataSplits, load_data
from trainables.errors import ConfigError
from trainables.loop import Trainer, TrialOutOfMemory
from trainables.recipe import Recipe
from tuner.cli import main

from grouped import run_tune

TINY = {"dataset": "digits", "width": 8}


def _epochs(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


# -- out of memory ---------------------------------------------------------------------------
def test_oom_in_the_loop_names_the_batch_size():
    trainer = Trainer(Recipe.from_dict({**TINY, "batch_size": 96}), load_data("digits"),
                      torch.device("cpu"))

    def oom(x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    trainer.forward = oom
    rule = r"batch_size=96 .*try a smaller batch_size, e\.g\. 48"
    with pytest.raises(TrialOutOfMemory, match=rule):
        trainer.run_epoch()


class _OOMImages:
    """Stands in for the training images: indexing a batch larger than 64 images raises torch's
    OutOfMemoryError, as a GPU would; smaller batches get the real images."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self.shape = images.shape

    def __getitem__(self, idx):
        if len(idx) > 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.images[idx]

    def __len__(self) -> int:
        return len(self.images)


class OOMSplits(DataSplits):
    def to(self, device):
        return self

    @classmethod
    def wrap(cls, data: DataSplits) -> "OOMSplits":
        fields = {k: getattr(data, k) for k in data.__dataclass_fields__}
        return cls(**{**fields, "train_x": _OOMImages(data.train_x)})


@pytest.mark.ray
def test_oom_trial_is_errored_and_the_experiment_goes_on(ray_local, tmp_path, monkeypatch):
    from tuner.running import runner

    # Ray's workers cannot import test modules: ship this module's classes by value
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    real = runner.load_run_data
    monkeypatch.setattr(runner, "load_run_data", lambda space: OOMSplits.wrap(real(space)))
    res = run_tune({**TINY, "batch_size": grid([32, 128])}, searcher="grid", scheduler="fifo",
               max_epochs=1, storage=tmp_path, name="oom", max_failures=0, verbose=0)
    df = res.dataframe.set_index("batch_size")
    assert df.loc[32, "status"] == "completed"
    assert df.loc[128, "status"] == "errored"
    assert "batch_size=128" in df.loc[128, "error"] and "smaller batch_size" in \
        df.loc[128, "error"]
    assert res.best_recipe.batch_size == 32


@pytest.mark.ray
def test_run_and_resume_exit_1_when_a_trial_errored(ray_local, tmp_path, monkeypatch, capsys):
    """(e) of the contract: a script can tell. Errors are counted and located in one line;
    trials stopped early by the scheduler are results, not errors (exit 0 then)."""
    from tuner.running import runner

    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    real = runner.load_run_data
    monkeypatch.setattr(runner, "load_run_data", lambda space: OOMSplits.wrap(real(space)))
    space = tmp_path / "space.yaml"
    space.write_text("dataset: digits\nwidth: 8\nbatch_size: {grid: [32, 128]}\n")
    args = ["--space", str(space), "--searcher", "grid", "--scheduler", "fifo", "--max-epochs",
            "1", "--storage", str(tmp_path), "--name", "exp", "--max-failures", "0",
            "--verbose", "0"]
    assert main(["run", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    exp = tmp_path / "exp"
    assert err == [f"cnn-tuner: 1 of 2 trials errored; see the error column of {exp}/results.csv "
                   f"and error.txt in their trial folders ({exp}/trial_*)"]
    assert len(list(exp.glob("trial_*/error.txt"))) == 1
    # resume restarts the errored trial, which errors again: still 1
    assert main(["resume", str(exp), "--verbose", "0"]) == 1
    assert "1 of 2 trials errored" in capsys.readouterr().err
    monkeypatch.setattr(runner, "load_run_data", real)  # the same run, no OOM: exit 0
    assert main(["run", *args[:-6], "--name", "ok", "--verbose", "0"]) == 0
    assert not (pd.read_csv(tmp_path / "ok" / "results.csv")["status"] == "errored").any()


# -- corrupt files -------------------------------------------------------------------------
def test_truncated_checkpoint_is_refused_naming_the_file(tmp_path):
    path = save_checkpoint({"model": {"w": torch.ones(1000)}, "recipe": {}}, tmp_path / "c.pt")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ConfigError, match="c.pt: refused"):
        load_checkpoint(path)


@pytest.mark.ray
def test_corrupt_experiment_state_is_a_clear_error(ray_local, tmp_path, capsys):
    run_tune({**TINY, "lr": 0.1}, searcher="random", scheduler="fifo", num_samples=1, max_epochs=1,
         storage=tmp_path, name="exp", verbose=0)
    state = sorted((tmp_path / "exp").glob("experiment_state-*.json"))[-1]
    state.write_text(state.read_text()[:40])
    assert main(["resume", str(tmp_path / "exp"), "--verbose", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and state.name in err[0] and "corrupt" in err[0]


# -- killed trial workers --------------------------------------------------------------------
@pytest.mark.ray
def test_killed_trial_workers_resume_from_their_checkpoints(ray_local, tmp_path):
    exp = tmp_path / "exp"
    kills: list[int] = []  # the worker pids killed
    stop = threading.Event()
    rng = random.Random(0)

    # The killer reads the rows as the driver writes them, in Ray's session staging folder: the
    # copy under `storage` is synced every few seconds, longer than these trials last, and Ray
    # reuses a worker process for the next trial, so the stale copy would aim at the wrong trial.
    staging = Path(ray_local._private.worker._global_node.get_session_dir_path(), "artifacts")
    began = time.time()

    def live_trials() -> list[list[dict]]:
        files = staging.glob("*/exp/driver_artifacts/trial_*/result.json")
        return [_epochs(f.parent) for f in files if f.stat().st_mtime >= began]

    def killer():
        # a kill can still land in a trial's first epoch (it rightly starts over): go on killing
        # until a resumed worker has reported, or six workers are dead
        while not stop.is_set() and len(kills) < 6:
            time.sleep(rng.uniform(0.3, 1.0))  # a random moment, usually mid-epoch
            trials = live_trials()
            if any(r["resumed_from"] >= 1 for rows in trials for r in rows):
                return
            running = [rows[-1]["pid"] for rows in trials if rows
                       and "stop_reason" not in rows[-1] and rows[-1]["epoch"] < 4
                       and rows[-1]["pid"] not in kills]
            if running:
                pid = rng.choice(running)
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
                except ProcessLookupError:
                    pass

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        res = run_tune({**TINY, "lr": loguniform(0.05, 0.3)}, searcher="random", scheduler="fifo",
                   num_samples=4, max_epochs=5, storage=tmp_path, name="exp", max_failures=6,
                   verbose=0)
    finally:
        stop.set()
        thread.join()
    assert kills, "no worker was killed: the test proved nothing"
    df = res.dataframe
    assert (df["status"] == "completed").all() and (df["epochs_run"] == 5).all()
    # Ray may drop result.json rows a killed worker reported (its copy of the file is restored
    # from storage, which can lag), and reuses one worker process for several trials, so the
    # evidence is each row's own `resumed_from` (the epoch of the checkpoint its process started
    # from), read where a trial's rows change process.
    resumed = from_checkpoint = 0
    for trial in exp.glob("trial_*"):
        rows = _epochs(trial)
        assert rows[-1]["epoch"] == 5, rows
        for i, (before, after) in enumerate(zip(rows, rows[1:], strict=False)):
            assert after["epoch"] > after["resumed_from"], after
            if after["pid"] != before["pid"]:  # the trial went on in a new process because...
                assert before["pid"] in kills, (before, after)  # ...its worker was killed,
                resumed += 1
                # ...from a checkpoint at least as new as the newest Ray had registered (rows name
                # their checkpoint; the 5% checkpoint-time budget can skip some epochs' saves).
                # Ray registers a reported checkpoint in a second call to the worker (`save`),
                # after the row is written and before the next epoch starts, so a kill between
                # the two can lose the killed process's last checkpoint, never an older one.
                registered = max((r["epoch"] for r in rows[:i] if r.get("checkpoint_dir_name")),
                                 default=0)
                assert after["resumed_from"] >= registered, (registered, before, after)
                from_checkpoint += after["resumed_from"] >= 1
    assert resumed >= 1 and from_checkpoint >= 1, (resumed, from_checkpoint, kills)


# -- a worker ended by Ray -------------------------------------------------------------------
QUIET_CHILD = """
import gc, os, signal, sys, weakref
from tuner.running.trial import quiet_termination

def raise_exit(signum, frame):  # what Ray's worker handler does on SIGTERM
    raise SystemExit(1)

signal.signal(signal.SIGTERM, raise_exit)
if sys.argv[1] == "quiet":
    quiet_termination()
    quiet_termination()  # a second trial in the same worker: one hook, not two

class Held:
    pass

def finalizer(_):  # Ray's SIGTERM arriving while a weakref callback runs
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100):  # a loop's jumps run the pending handler, inside the callback
        pass

held = Held()
ref = weakref.ref(held, finalizer)
del held
gc.collect()

class Broken:
    def __del__(self):
        raise ValueError("a real bug in a finalizer")

Broken()
print("went on")
"""


@pytest.mark.parametrize("mode", ["quiet", "default"])
def test_a_worker_terminated_inside_a_finalizer_prints_no_traceback(mode):
    """Ray's SIGTERM to a trial's worker, landing in a weakref callback, raised SystemExit
    there: Python printed "Exception ignored in ..." and a traceback, forwarded to the user's
    console mid-run. quiet_termination drops exactly that; any other exception in a finalizer
    is still printed."""
    out = subprocess.run([sys.executable, "-c", QUIET_CHILD, mode], capture_output=True,
                         text=True, timeout=120, check=False)
    assert "went on" in out.stdout
    assert "a real bug in a finalizer" in out.stderr  # other unraisables still shown
    exit_shown = "SystemExit" in out.stderr
    assert exit_shown == (mode == "default"), out.stderr
