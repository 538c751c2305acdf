"""Data-parallel trials (workers_per_trial > 1): refusals without Ray, and one real small
TPE + ASHA run whose trials each train over 2 Ray Train workers (DDP, gloo) on digits."""

import json

import pandas as pd
import pytest

from search_spaces import SearchSpace
from trainables.errors import ConfigError
from trainables.recipe import Recipe
from tuner.running.dp_trial import check_fits, dp_trial_slots
from tuner.running.settings import RunSettings

SPACE = {"dataset": "digits", "width": 8, "lr": {"loguniform": [0.01, 0.3]}}


def _validate(**settings):
    space = SearchSpace.from_dict(settings.pop("space", SPACE))
    RunSettings(space=space.to_dict(), **settings).validate(space)


def test_the_controller_polls_its_workers_often_unless_the_user_says_otherwise():
    from ray.train.v2._internal.constants import HEALTH_CHECK_INTERVAL_S_ENV_VAR as POLL

    from tuner.running.dp_trial import HEALTH_CHECK_INTERVAL_S, controller_env

    env = controller_env({"KEPT": "1"})
    assert env["KEPT"] == "1" and float(env[POLL]) == HEALTH_CHECK_INTERVAL_S < 2
    assert env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert controller_env({POLL: "3"})[POLL] == "3"  # the user's exported value is propagated


def test_several_gpus_per_trial_points_at_workers_per_trial():
    with pytest.raises(ConfigError, match="gpus_per_trial: .*set workers_per_trial") as e:
        _validate(gpus_per_trial=2)
    assert "\n" not in str(e.value)
    _validate(gpus_per_trial=1, workers_per_trial=2)  # one GPU per worker is fine


@pytest.mark.parametrize("settings, words", [
    ({"workers_per_trial": 0}, "whole number >= 1"),
    ({"workers_per_trial": 2, "space": {**SPACE, "sync_bn": True}}, "SyncBatchNorm"),
    ({"workers_per_trial": 2, "worker_placement": "diagonal"},
     "worker_placement: must be one of pack, spread, strict_pack, strict_spread, got 'diagonal'"),
])
def test_what_data_parallel_trials_cannot_do_is_refused_before_ray(settings, words):
    with pytest.raises(ConfigError, match=words):
        _validate(**settings)


@pytest.mark.parametrize("scheduler", ["pbt", "hyperband"])
def test_pausing_schedulers_are_accepted_with_several_workers(scheduler):
    """Data-parallel trials keep Tune checkpoints: PBT and HyperBand pause and clone them."""
    _validate(workers_per_trial=2, scheduler=scheduler, searcher="random")


def test_a_group_the_cluster_cannot_hold_is_refused_naming_need_and_have():
    check_fits(2, 1, 0, {"CPU": 2.0})  # the defaults fit a 2-core machine
    with pytest.raises(ConfigError) as e:
        check_fits(3, 1, 0, {"CPU": 2.0})
    assert "need 3 CPUs" in str(e.value) and "has 2" in str(e.value)
    with pytest.raises(ConfigError, match="need 4 GPUs at once, but the cluster has 2"):
        check_fits(4, 0.5, 1, {"CPU": 8.0, "GPU": 2.0})
    assert dp_trial_slots(2, 0.5, 0, {"CPU": 2.0}) == 2
    assert dp_trial_slots(2, 1, 0, {"CPU": 2.0}) == 1


def test_a_strict_placement_no_node_set_can_hold_is_refused():
    """Two 2-CPU nodes: 4 one-CPU workers fit the cluster, but not one node (strict_pack) or
    one node each (strict_spread); pack and spread place them anyway."""
    nodes, total = [{"CPU": 2.0}, {"CPU": 2.0}], {"CPU": 4.0}
    for placement in ("pack", "spread"):
        check_fits(4, 1, 0, total, placement, nodes)
    check_fits(2, 1, 0, total, "strict_pack", nodes)
    check_fits(2, 1, 0, total, "strict_spread", nodes)
    with pytest.raises(ConfigError, match="strict_pack needs one node with 4 x 1 CPU, but no "
                                          "node of the cluster's 2 has that"):
        check_fits(4, 1, 0, total, "strict_pack", nodes)
    with pytest.raises(ConfigError, match="strict_spread needs 3 nodes with room for a worker "
                                          "each, but the cluster has 2"):
        check_fits(3, 1, 0, total, "strict_spread", nodes)
    gpu_nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0}]  # only one node has a GPU
    with pytest.raises(ConfigError, match="strict_spread needs 2 nodes .* has 1"):
        check_fits(2, 1, 1, {"CPU": 16.0, "GPU": 2.0}, "strict_spread", gpu_nodes)


@pytest.mark.ray
def test_strict_spread_over_one_node_is_refused_before_any_trial(ray_local, tmp_path, capsys):
    """The test Ray is one node: 2 workers on 2 nodes can never start (Ray Train would wait)."""
    from tuner.cli import main

    code = main(["run", "--workers-per-trial", "2", "--cpus-per-trial", "0.5",
                 "--worker-placement", "strict_spread", "--storage", str(tmp_path), "--name",
                 "x", "--num-samples", "1", "--max-epochs", "1", "--verbose", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "strict_spread needs 2 nodes with room for a worker each, but the cluster has 1" in \
        err[0]
    assert not list(tmp_path.glob("x/trial_*"))


@pytest.mark.ray
def test_data_parallel_trials_inside_tpe_asha(ray_local, tmp_path):
    from tuner import Resources, RunConfig, TuneConfig, tune

    res = tune(SPACE, num_samples=2, max_epochs=2,
               tune_config=TuneConfig(searcher="tpe", scheduler="asha"),
               resources=Resources(workers_per_trial=2),  # default 1 CPU per worker
               run_config=RunConfig(storage=tmp_path, name="dp", verbose=0))
    assert res.summary["completed"] + res.summary.get("early_stopped", 0) == 2, res.summary
    rows = [json.loads(line) for f in (tmp_path / "dp").glob("trial_*/result.json")
            for line in f.read_text().splitlines()]
    assert rows and all(r["world_size"] == 2 for r in rows)
    table = pd.read_csv(tmp_path / "dp" / "results.csv")
    assert len(table) == 2 and set(table["world_size"]) == {2}
    best = Recipe.from_yaml(tmp_path / "dp" / "best_recipe.yaml")
    assert best.lr == pytest.approx(res.best_recipe.lr) and best.width == 8
    assert res.best_metrics["val_acc"] == table["val_acc"].max()


@pytest.mark.ray
def test_a_killed_worker_resumes_the_group_from_the_last_checkpoint(ray_local, tmp_path):
    import os
    import signal
    import threading
    import time
    from pathlib import Path

    from tuner import Resources, RunConfig, TuneConfig, tune

    staging = Path(ray_local._private.worker._global_node.get_session_dir_path(), "artifacts")
    kills: list[int] = []
    stop = threading.Event()

    def killer():  # kill rank 0 (worker_pid in the rows) once an epoch >= 2 is reported
        while not stop.is_set() and not kills:
            time.sleep(0.3)
            for f in staging.glob("*/dpkill/driver_artifacts/trial_*/result.json"):
                rows = [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()]
                if rows and rows[-1]["epoch"] >= 2 and "stop_reason" not in rows[-1]:
                    os.kill(rows[-1]["worker_pid"], signal.SIGKILL)
                    kills.append(rows[-1]["worker_pid"])
                    return

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        res = tune({"dataset": "digits", "width": 32, "lr": 0.1}, num_samples=1, max_epochs=8,
                   tune_config=TuneConfig(searcher="random", scheduler="fifo"),
                   resources=Resources(workers_per_trial=2),
                   run_config=RunConfig(storage=tmp_path, name="dpkill", verbose=0,
                                        max_failures=3))
    finally:
        stop.set()
        thread.join()
    assert kills, "no worker was killed: the test proved nothing"
    assert res.summary["completed"] == 1 and res.summary["errored"] == 0, res.summary
    rows = [json.loads(ln) for f in (tmp_path / "dpkill").glob("trial_*/result.json")
            for ln in f.read_text().splitlines() if ln.strip()]
    after = [r for r in rows if r["worker_pid"] != kills[0]]
    assert after and after[0]["resumed_from"] >= 1, after[:1]  # from a checkpoint, not scratch
    assert after[0]["epoch"] == after[0]["resumed_from"] + 1
    assert rows[-1]["epoch"] == 8 and rows[-1]["world_size"] == 2


def test_train_workers_refuses_what_it_cannot_split_before_ray(tmp_path, capsys):
    from tuner.cli import main

    out = tmp_path / "out"
    code = main(["train", "--workers", "2", "--set", "batch_size=63", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "divisible by the world size 2" in err[0], err
    assert main(["train", "--workers", "0", "--out", str(out)]) == 2
    assert "--workers: must be a whole number >= 1" in capsys.readouterr().err
    assert main(["train", "--workers", "2", "--worker-placement", "SPREAD", "--out",
                 str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--worker-placement: must be one of pack, spread" in err[0], err
    assert not out.exists()


def test_run_refuses_an_unknown_worker_placement_before_ray(tmp_path, capsys):
    from tuner.cli import main

    code = main(["run", "--workers-per-trial", "2", "--worker-placement", "round_robin",
                 "--storage", str(tmp_path), "--name", "x", "--num-samples", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "--worker-placement: must be one of" in err[0] and "'round_robin'" in err[0]
    assert not (tmp_path / "x").exists()


@pytest.mark.ray
def test_train_workers_runs_one_recipe_data_parallel(ray_local, tmp_path, capsys):
    """`cnn-tuner train --workers 2`: the trial's Ray Train group (joining the Ray that runs),
    the same four files as a 1-worker `train`."""
    from trainables.checkpoint import load_checkpoint
    from tuner.cli import main

    out = tmp_path / "dp"
    code = main(["train", "--workers", "2", "--device", "cpu", "--out", str(out), "--set",
                 "dataset=digits", "--set", "width=8", "--set", "epochs=2", "--set", "lr=0.1"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "epoch   1/2" in printed and "epoch   2/2" in printed and "completed" in printed
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]
    final = json.loads((out / "result.json").read_text())
    assert final["world_size"] == 2 and final["stop_reason"] == "completed"
    assert final["epochs_run"] == 2 and "worker_pid" not in final
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 2 and state["recipe"]["width"] == 8
    assert Recipe.from_yaml(out / "recipe.yaml").lr == 0.1
    assert ray_local.is_initialized()  # the session's Ray was joined, not shut down


def _terminated_trials(exp) -> set[str]:
    """Trial folders TERMINATED in the newest experiment state Ray saved (what resume reads)."""
    states = sorted(exp.glob("experiment_state-*.json"))
    try:
        trials = [json.loads(t) for t, _ in json.loads(states[-1].read_text())["trial_data"]]
    except (IndexError, ValueError, KeyError):  # none yet, or caught mid-write
        return set()
    return {f"trial_{t['trial_id']}" for t in trials if t.get("status") == "TERMINATED"}


@pytest.mark.slow
@pytest.mark.ray
def test_a_killed_data_parallel_run_resumes_with_every_epoch_once(tmp_path):
    """The driver (and the Ray it started) SIGKILLed once a trial finished, then `cnn-tuner
    resume`: the unfinished trial's new group starts from its Tune checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cli = [sys.executable, "-m", "tuner.cli"]
    exp = tmp_path / "exp"
    run = subprocess.Popen(
        [*cli, "run", "--storage", str(tmp_path), "--name", "exp", "--searcher", "random",
         "--scheduler", "fifo", "--num-samples", "3", "--max-epochs", "3", "--set", "width=8",
         "--set", "image_size=16", "--workers-per-trial", "2", "--verbose", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not _terminated_trials(exp) and run.poll() is None:
            time.sleep(0.5)
        assert run.poll() is None, "the run ended before the kill: it proved nothing"
        done = _terminated_trials(exp)
        assert done, "no trial finished before the deadline"
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    before = {name: (exp / name / "result.json").read_text() for name in done}
    resumed = subprocess.run([*cli, "resume", str(exp), "--verbose", "0"], capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    table = pd.read_csv(exp / "results.csv")
    assert len(table) == 3 and not (table["status"] == "errored").any(), table
    for name, text in before.items():  # finished before the kill: kept, not rerun
        assert (exp / name / "result.json").read_text() == text
    for f in exp.glob("trial_*/result.json"):
        rows = [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()]
        assert [r["epoch"] for r in rows] == [1, 2, 3], f.parent.name
        assert all(r["world_size"] == 2 for r in rows)


RAY_TRAIN_CHATTER = ("TrainController", "RayTrainWorker", "PlacementGroupCleaner",
                     "worker group", "Reporting training result", "Checkpoint successfully",
                     "Requesting resources", "Setting up process group", "Deprecation")


@pytest.mark.ray
def test_a_data_parallel_run_at_verbose_0_prints_no_ray_train_chatter(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "tuner.cli", "run", "--storage", str(tmp_path), "--name", "q",
         "--searcher", "random", "--scheduler", "fifo", "--num-samples", "1", "--max-epochs",
         "1", "--set", "width=8", "--set", "image_size=16", "--workers-per-trial", "2",
         "--verbose", "0"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 trials: 1 completed" in proc.stdout
    chatter = [ln for ln in (proc.stdout + proc.stderr).splitlines()
               if any(word in ln for word in RAY_TRAIN_CHATTER)]
    assert not chatter, chatter
