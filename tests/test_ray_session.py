"""One command, one Ray: ``cnn-tuner run`` prints its summary while the Ray it started is still
up, shuts it down after, and a confirmation (``--confirm-top``) trains on the search's Ray
instead of starting a second one. Checked in a fresh Python, where the command starts its own
Ray (under the test session's Ray it would join that one and start nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Counts ray.init calls and notes whether Ray is up when the summary prints; then runs the CLI.
SCRIPT = r"""
import json, sys
from tuner.running.loopback import prefer_loopback
prefer_loopback(None)
import ray
import tuner.cli.commands as commands
from tuner.cli import main

seen = {"inits": 0, "up_at_summary": None}
real_init, real_summary = ray.init, commands._print_summary

def init(*a, **k):
    seen["inits"] += 1
    return real_init(*a, **k)

def summary(result):
    seen["up_at_summary"] = ray.is_initialized()
    return real_summary(result)

ray.init, commands._print_summary = init, summary
seen["rc"] = main(sys.argv[2:])
seen["up_after"] = ray.is_initialized()
with open(sys.argv[1], "w") as f:
    json.dump(seen, f)
"""


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("confirm", [False, True], ids=["search", "search+confirm"])
def test_run_prints_its_summary_before_shutting_its_one_ray_down(confirm, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"dataset": "digits", "width": 4, "image_size": 8,
                                     "batch_size": 256, "lr": {"loguniform": [1e-3, 0.3]}}))
    args = ["run", "--space", str(space), "--storage", str(tmp_path), "--name", "r",
            "--searcher", "random", "--scheduler", "fifo", "--num-samples", "2",
            "--max-epochs", "1", "--cpus-per-trial", "1", "--verbose", "0"]
    if confirm:
        args += ["--confirm-top", "1", "--confirm-seeds", "2"]
    out = tmp_path / "seen.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(out.read_text())
    assert seen["rc"] == 0 and "best trial" in proc.stdout, proc.stdout
    assert seen["up_at_summary"] is True, "the summary waited for Ray's shutdown"
    assert seen["up_after"] is False, "the command left its Ray running"
    assert seen["inits"] == 1, f"{seen['inits']} Ray starts for one command"
    if confirm:
        assert (tmp_path / "r" / "confirm.csv").exists()
