"""An interrupted run (Ctrl+C on the CLI) resumes and finishes with every trial exactly once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.ray
CLI = [sys.executable, "-m", "tuner.cli"]


def _finished_trials(exp: Path) -> dict[str, int]:
    """trial dir -> epochs reported, for trials whose last result carries a stop_reason."""
    done = {}
    for result in exp.glob("trial_*/result.json"):
        lines = result.read_text().splitlines()
        if lines and "stop_reason" in json.loads(lines[-1]):
            done[result.parent.name] = len(lines)
    return done


def test_ctrl_c_then_resume_finishes_every_trial_once(tmp_path):
    exp = tmp_path / "exp"
    run = subprocess.Popen(
        [*CLI, "run", "--storage", str(tmp_path), "--name", "exp", "--num-samples", "8",
         "--max-epochs", "6", "--searcher", "tpe", "--scheduler", "fifo", "--set", "width=16",
         "--verbose", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    deadline = time.time() + 240
    while time.time() < deadline and len(_finished_trials(exp)) < 2 and run.poll() is None:
        time.sleep(0.5)
    assert run.poll() is None, run.communicate()
    before = _finished_trials(exp)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-2000:]
    assert f"cnn-tuner resume {exp}" in err
    assert not (exp / "results.csv").exists()

    resumed = subprocess.run([*CLI, "resume", str(exp), "--verbose", "0"], capture_output=True,
                             text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    df = pd.read_csv(exp / "results.csv")
    assert len(df) == 8 and df["trial_id"].is_unique
    assert (df["status"] == "completed").all() and (df["epochs_run"] == 6).all()
    after = _finished_trials(exp)
    for trial, epochs in before.items():  # finished before Ctrl+C: not rerun
        assert after[trial] == epochs == 6
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["trials"] == 8 and summary["best_test_acc"] is not None


def test_ctrl_c_with_every_trial_started_is_still_an_interruption(tmp_path):
    """With no trial left to start, Ray marks the running ones TERMINATED as it stops them:
    the run must still end 130 (resumable), not as a finished run with trials 'stopped early'."""
    exp = tmp_path / "exp"
    run = subprocess.Popen(
        [*CLI, "run", "--storage", str(tmp_path), "--name", "exp", "--num-samples", "2",
         "--max-epochs", "40", "--searcher", "random", "--scheduler", "fifo", "--set",
         "width=16", "--verbose", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    deadline = time.time() + 240
    while time.time() < deadline and run.poll() is None and sum(
            bool(f.read_text().strip()) for f in exp.glob("trial_*/result.json")) < 2:
        time.sleep(0.5)
    assert run.poll() is None, run.communicate()
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-2000:]
    assert f"cnn-tuner resume {exp}" in err
    assert not (exp / "results.csv").exists()
