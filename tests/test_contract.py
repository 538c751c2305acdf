"""The tuning-core contract: every searcher x scheduler pair the registries accept, on one small
conditional space, through real Ray Tune (after optuna's shared sampler suite).

Registering a searcher in ``tuner.running.searchers.SEARCHERS`` or a scheduler in
``tuner.running.schedulers.SCHEDULERS`` enrols it here with no other edit; a pair listed in
``REFUSED_PAIRS`` is tested as a one-line refusal instead. For each accepted pair:

(a) every trial's config honours ``when``: inactive knobs absent, active ones in range, never a
    placeholder, in Ray's params and in results.csv;
(b) the same seed proposes the same configs: the whole sequence for random and grid (whatever
    the scheduler), the seeded start-up points for tpe and optuna (later ones depend on the order
    results arrive; ``test_model_based_searchers_repeat_one_at_a_time`` runs them one at a time);
(c) early-stopping schedulers stop trials that did not diverge on under 70% of the budget, PBT
    exploits, FIFO runs every trial to its end;
(f) every epoch a trial trained is in its result.json once, across pauses, restarts and PBT
    exploits (Ray's logger overwrote the rows written since its last sync to storage at each
    restart: tuner.running.result_logs);
(g) a scheduler that paused a trial (it went on from its own checkpoint; no trial errored) is in
    ``PAUSING``, so it checkpoints every epoch (median pauses only while trials wait to start:
    it was missing, and a paused trial repeated an epoch whose checkpoint had been skipped).

The driver-kill checks (d) run for every searcher (with asha) and every scheduler (with random);
the exit status (e) is tested in test_exit_status.py.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pandas as pd
import pytest

from search_spaces import SearchSpace, choice, grid, loguniform, randint, uniform
from search_spaces.distributions import Choice, _same
from trainables.errors import ConfigError
from tuner.cli import main
from tuner.running.schedulers import PAUSING, REFUSED_PAIRS, SCHEDULERS
from tuner.running.searchers import SEARCHERS, startup_points

from grouped import run_tune

pytestmark = pytest.mark.ray

CLI = [sys.executable, "-m", "tuner.cli"]
NUM_SAMPLES, MAX_EPOCHS, SEED = 10, 9, 3
EARLY_STOPPING = ("asha", "hyperband", "median")
BASE = {"dataset": "digits", "image_size": 16, "width": 8}
# lr up to 5 per 128 images diverges (non-finite loss) for some recipes; lr_schedule is active
# only for nesterov and step_size only for its step schedule: a `when` two levels deep
SPACE = {**BASE,
         "optimizer": choice(["nesterov", "adamw"]),
         "lr": loguniform(1e-3, 5.0),
         "momentum": uniform(0.5, 0.95, when={"optimizer": "nesterov"}),
         "lr_schedule": choice(["constant", "step"], when={"optimizer": "nesterov"}),
         "step_size": randint(1, 4, when={"lr_schedule": "step"}),
         "weight_decay": loguniform(1e-5, 1e-2)}
# grid knobs cannot be conditional (every point runs): the grid searcher gets the unconditional
# part of the same space, NUM_SAMPLES points
GRID_SPACE = {**BASE, "optimizer": grid(["nesterov", "adamw"]),
              "lr": grid([0.001, 0.01, 0.1, 1.0, 5.0])}

ACCEPTED = [p for p in itertools.product(SEARCHERS, SCHEDULERS) if p not in REFUSED_PAIRS]


def space_for(searcher: str) -> dict:
    return GRID_SPACE if searcher == "grid" else SPACE


def _rows(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def trial_order(exp: Path) -> list[str]:
    """Trial folders in the order the searcher proposed them: Ray's experiment tag starts with
    the trial's running number (kept through PBT's '@perturbed' suffix). Ray's state file."""
    state = sorted(exp.glob("experiment_state-*.json"))[-1]
    trials = [json.loads(t) for t, _ in json.loads(state.read_text())["trial_data"]]
    trials.sort(key=lambda t: int(t["experiment_tag"].split("_", 1)[0]))
    return [f"trial_{t['trial_id']}" for t in trials]


def proposals(exp: Path, space: SearchSpace) -> list[dict]:
    """Each trial's first config (its first result row: PBT rewrites params.json when it
    clones), tuned knobs only, in proposal order. Inactive knobs: None or absent."""
    out = []
    for name in trial_order(exp):
        config = _rows(exp / name)[0]["config"]
        out.append({k: config[k] for k in space.tuned if config.get(k) is not None})
    return out


def restarts(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(last row before, first row after) of each time the trial started again: after a pause,
    a retry or a PBT exploit. Ray counts ``iterations_since_restore`` from 1 at every start."""
    return [(prev, row) for prev, row in itertools.pairwise(rows)
            if row["iterations_since_restore"] == 1]


def went_on(prev: dict, row: dict, trial_id: str) -> bool:
    """A restart that went on from the trial's own checkpoint with its own knobs: a pause or
    a retry. A PBT exploit changes the knobs (the cloned trial's, perturbed), and can restore
    the trial's own earlier checkpoint: another trial that had cloned it passes it back."""
    return row["resumed_from_trial"] == trial_id and row["config"] == prev["config"]


def own_checkpoint_restarts(rows: list[dict], trial_id: str) -> int:
    """How often a trial went on from its own checkpoint: after a pause (or a retry)."""
    return sum(went_on(prev, row, trial_id) for prev, row in restarts(rows))


def assert_every_epoch_kept(rows: list[dict], trial_id: str) -> None:
    """(f) Rows run on from epoch 1; a restart continues at its checkpoint's epoch + 1, which is
    the last row's epoch when the trial went on from its own checkpoint (a pause or a retry: no
    epoch lost or trained twice); a PBT exploit continues from the cloned checkpoint's epoch."""
    assert rows and rows[0]["epoch"] == 1 and rows[0]["resumed_from"] == 0, (
        "(f) first row", trial_id, rows[:1])
    for prev, row in itertools.pairwise(rows):
        where = ("(f) trial, previous epoch, epoch, resumed_from, resumed_from_trial, "
                 "iterations_since_restore", trial_id, prev["epoch"], row["epoch"],
                 row["resumed_from"], row["resumed_from_trial"], row["iterations_since_restore"])
        if row["iterations_since_restore"] != 1:  # the same start: the next epoch
            assert row["epoch"] == prev["epoch"] + 1, where
            assert (row["resumed_from"], row["resumed_from_trial"]) == (
                prev["resumed_from"], prev["resumed_from_trial"]), where
            continue
        assert row["epoch"] == row["resumed_from"] + 1, where
        if went_on(prev, row, trial_id):
            assert row["resumed_from"] == prev["epoch"], where


def _in_range(dist, value) -> bool:
    if isinstance(value, (list, tuple, dict)):  # e.g. Ray's ('__fn_ph', ...) placeholder
        return False
    if isinstance(dist, Choice) or hasattr(dist, "values"):
        return any(_same(value, v) for v in dist.values)
    return dist.low <= value <= dist.high


def assert_honours_when(config: dict, space: SearchSpace, where: str) -> None:
    for knob, dist in space.tuned.items():
        value = config.get(knob)
        if isinstance(value, float) and math.isnan(value):
            value = None
        if space.is_active(knob, {k: v for k, v in config.items() if v is not None}):
            assert value is not None and _in_range(dist, value), ("(a)", where, knob, value)
        else:
            assert value is None, ("(a)", where, knob, "inactive but set", value)


@pytest.fixture(scope="module")
def contract_runs(ray_local, tmp_path_factory):
    """One real run per accepted pair, made on first use and shared by (a)-(c)."""
    root = tmp_path_factory.mktemp("contract")
    cache: dict[tuple[str, str], tuple[pd.DataFrame, Path]] = {}

    def run(searcher: str, scheduler: str) -> tuple[pd.DataFrame, Path]:
        if (searcher, scheduler) not in cache:
            samples = None if searcher == "grid" else NUM_SAMPLES  # grid: every point once
            res = run_tune(space_for(searcher), searcher=searcher, scheduler=scheduler,
                       num_samples=samples, max_epochs=MAX_EPOCHS, seed=SEED, storage=root,
                       name=f"{searcher}-{scheduler}", max_failures=0, verbose=0)
            cache[searcher, scheduler] = res.dataframe, Path(res.path)
        return cache[searcher, scheduler]

    return run


@pytest.mark.parametrize(("searcher", "scheduler"), ACCEPTED)
def test_contract(contract_runs, searcher, scheduler):
    df, exp = contract_runs(searcher, scheduler)
    space = SearchSpace.from_dict(space_for(searcher))
    budget = NUM_SAMPLES * MAX_EPOCHS
    assert len(df) == NUM_SAMPLES and df["trial_id"].is_unique
    assert not (df["status"] == "errored").any(), df[["trial_id", "error"]]

    # (a) conditionals, in Ray's params of every trial and in results.csv
    for trial in exp.glob("trial_*"):
        assert_honours_when(json.loads((trial / "params.json").read_text()), space, trial.name)
    csv = pd.read_csv(exp / "results.csv")
    for _, row in csv.iterrows():
        assert_honours_when(row.to_dict(), space, f"results.csv {row['trial_id']}")

    # (f) no row lost at a pause, restart or exploit
    for trial in exp.glob("trial_*"):
        assert_every_epoch_kept(_rows(trial), trial.name[len("trial_"):])

    # (g) a scheduler that pauses trials checkpoints every epoch
    paused = sum(own_checkpoint_restarts(_rows(t), t.name[len("trial_"):])
                 for t in exp.glob("trial_*"))
    assert not paused or scheduler in PAUSING, (
        f"(g) {scheduler} paused trials {paused} times but is not in PAUSING")

    # (b) seeding: the proposals of the (searcher, fifo) run, whatever the scheduler
    mine = proposals(exp, space)
    reference = proposals(contract_runs(searcher, "fifo")[1], space)
    seeded = len(mine) if searcher in ("grid", "random") else startup_points(NUM_SAMPLES)
    assert mine[:seeded] == reference[:seeded], "(b) not the (searcher, fifo) run's proposals"

    # (c) what the scheduler promises
    used = int(df["epochs_run"].sum())
    if scheduler in EARLY_STOPPING:
        stopped = df[df["stop_reason"] == f"{scheduler}_stopped"]  # not diverged: stopped by it
        assert len(stopped) >= 1, ("(c) stopped none", df[["trial_id", "stop_reason",
                                                           "epochs_run"]])
        assert used <= 0.7 * budget, ("(c) epochs used, budget", used, budget,
                                      df[["trial_id", "stop_reason", "epochs_run"]])
    elif scheduler == "fifo":
        ended = df[df["stop_reason"] != "non_finite_loss"]
        assert (ended["stop_reason"] == "completed").all()
        assert (ended["epochs_run"] == MAX_EPOCHS).all()
    elif scheduler == "pbt":
        exploits = [(t.name, r["resumed_from_trial"]) for t in exp.glob("trial_*")
                    for r in _rows(t) if r.get("resumed_from_trial") not in ("", None,
                                                                            f"{t.name[6:]}")]
        assert exploits, "PBT never continued a trial from another trial's checkpoint"
        mutated = [t for t in exp.glob("trial_*")
                   if len({json.dumps(r["config"], sort_keys=True) for r in _rows(t)}) > 1]
        assert mutated, "PBT never changed a running trial's knobs"


@pytest.mark.parametrize(("searcher", "scheduler"), sorted(REFUSED_PAIRS))
def test_refused_pairs_are_one_line(searcher, scheduler, tmp_path, capsys):
    code = main(["run", "--searcher", searcher, "--scheduler", scheduler, "--storage",
                 str(tmp_path), "--set", "width=8", "--verbose", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"cnn-tuner: error: --scheduler: {scheduler!r}") and searcher in err[0]
    assert not any(tmp_path.iterdir())  # nothing started, nothing written


@pytest.mark.parametrize("searcher", ["tpe", "optuna"])
def test_model_based_searchers_repeat_one_at_a_time(ray_local, tmp_path, searcher):
    """(b) with max_concurrent=1: results arrive in one order, so the whole sequence repeats
    (CPU training is seeded, so the results the model learns from repeat too)."""
    space = SearchSpace.from_dict(SPACE)
    runs = []
    for name in ("one", "two"):
        res = run_tune(SPACE, searcher=searcher, scheduler="fifo", num_samples=6, max_epochs=1,
                   seed=SEED, max_concurrent=1, storage=tmp_path, name=name, verbose=0)
        runs.append(proposals(Path(res.path), space))
    assert len(runs[0]) == 6 and runs[0] == runs[1]
    assert len({json.dumps(p, sort_keys=True) for p in runs[0]}) == 6  # not one point six times


# -- (d) a driver killed mid-run, then resumed ---------------------------------------------------
KILL_SAMPLES, KILL_EPOCHS = 6, 4
KILLS = sorted({(s, "asha") for s in SEARCHERS} | {("random", s) for s in SCHEDULERS}
               - set(REFUSED_PAIRS))


def _terminated(exp: Path) -> set[str]:
    """Trial folders whose trial is TERMINATED in the newest experiment state Ray saved (what a
    resume reads; rows alone can run ahead of it). Ray's file format, read as JSON."""
    states = sorted(exp.glob("experiment_state-*.json"))
    try:
        trials = [json.loads(t) for t, _ in json.loads(states[-1].read_text())["trial_data"]]
    except (IndexError, ValueError, KeyError):  # none yet, or caught mid-write
        return set()
    return {f"trial_{t['trial_id']}" for t in trials if t.get("status") == "TERMINATED"}


def _searcher_history(exp: Path, searcher: str) -> int | None:
    """Trials the model-based searcher's saved state has seen (Ray's searcher-state pickle)."""
    if searcher not in ("tpe", "optuna"):
        return None
    with open(sorted(exp.glob("searcher-state-*.pkl"))[-1], "rb") as f:
        state = cloudpickle.load(f)
    if not isinstance(state, dict):
        state = vars(state.searcher)
    return len(state["_hpopt_trials"].trials if searcher == "tpe" else
               state["_ot_study"].get_trials(deepcopy=False))


def _space_file(tmp_path: Path, searcher: str) -> Path:
    path = tmp_path / "space.yaml"
    SearchSpace.from_dict(space_for(searcher)).to_yaml(path)
    return path


def _kill_midway(cmd: list[str], exp: Path) -> dict[str, list]:
    """Start ``cmd``, SIGKILL it and its Ray once two trials are saved as finished; return
    those trials' rows."""
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    deadline = time.time() + 240
    done: dict[str, list] = {}
    try:
        while time.time() < deadline and len(done) < 2 and run.poll() is None:
            time.sleep(0.5)
            done = {name: _rows(exp / name) for name in _terminated(exp)}
        assert run.poll() is None, "the run ended before the kill: it proved nothing"
        assert len(done) >= 2, "no two trials finished before the deadline"
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the driver and the Ray it started
        run.wait()
    return done


@pytest.mark.parametrize(("searcher", "scheduler"), KILLS)
def test_killed_driver_resume_loses_nothing(tmp_path, searcher, scheduler):
    exp = tmp_path / "exp"
    base = [*CLI, "run", "--space", str(_space_file(tmp_path, searcher)), "--storage",
            str(tmp_path), "--name", "exp", "--searcher", searcher, "--scheduler", scheduler,
            "--max-epochs", str(KILL_EPOCHS), "--seed", str(SEED), "--verbose", "0"]
    samples = [] if searcher == "grid" else ["--num-samples", str(KILL_SAMPLES)]
    done = _kill_midway([*base, *samples], exp)
    # `cnn-tuner resume PATH` for most; `cnn-tuner run --resume` (same command again) for one
    again = [*base, *samples, "--resume"] if (searcher, scheduler) == ("random", "asha") else \
        [*CLI, "resume", str(exp), "--verbose", "0"]
    resumed = subprocess.run(again, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    df = pd.read_csv(exp / "results.csv")
    expected = len(GRID_SPACE["lr"].values) * 2 if searcher == "grid" else KILL_SAMPLES
    assert len(df) == expected and df["trial_id"].is_unique
    assert not (df["status"] == "errored").any(), df[["trial_id", "error"]]
    space = SearchSpace.from_dict(space_for(searcher))
    for _, row in df.iterrows():  # no placeholder or inactive knob came back from the restore
        assert_honours_when(row.to_dict(), space, f"results.csv {row['trial_id']}")
    for name, rows in done.items():  # finished before the kill: kept, not rerun
        assert _rows(exp / name) == rows
    history = _searcher_history(exp, searcher)
    assert history in (None, expected)  # one history: no fresh search after the resume


# -- data-parallel trials (workers_per_trial=2): the scheduler contract (a) and (c) --------------
DP_SAMPLES, DP_EPOCHS = 4, 3
# PBT perturbs every epoch but the last. On 2 CPUs one 2-worker trial trains at a time and two
# trials take turns, so a trial is exploited only when it reports below the other's last score;
# with 3 epochs (2 perturbations each) two trials whose scores leapfrog upwards see none, a few
# runs in a hundred by a rough estimate. A 4th epoch adds two more chances per pair. (Of this
# test's two CI failures, the one whose message the log kept was check (f) misreading two
# restarts from the same checkpoint as one: fixed in assert_every_epoch_kept.)
DP_PBT_EPOCHS = 4


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_contract_with_two_workers_per_trial(ray_local, tmp_path, scheduler):
    """Every trial trains over 2 Ray Train workers (one at a time on 2 CPUs), whatever the
    scheduler: each row is both ranks' epoch and none is lost; ASHA stops some early and frees
    their workers for the next, PBT clones one trial's checkpoint into another (the checkpoint
    rank 0 wrote becomes the Tune trial's) and mutates its knobs, HyperBand pauses and resumes
    trials from their checkpoints, FIFO runs every trial to its end."""
    from tuner.running.schedulers import SchedulerOptions

    options = {"asha": SchedulerOptions(grace_period=1, reduction_factor=2),
               "pbt": SchedulerOptions(perturbation_interval=1)}.get(scheduler,
                                                                     SchedulerOptions())
    epochs = DP_PBT_EPOCHS if scheduler == "pbt" else DP_EPOCHS
    res = run_tune(SPACE, searcher="random", scheduler=scheduler, num_samples=DP_SAMPLES,
                   max_epochs=epochs, seed=SEED, workers_per_trial=2,
                   scheduler_options=options, storage=tmp_path, name=scheduler,
                   max_failures=0, verbose=0)
    df, exp = res.dataframe, Path(res.path)
    assert len(df) == DP_SAMPLES and df["trial_id"].is_unique
    assert not (df["status"] == "errored").any(), df[["trial_id", "error"]]
    space = SearchSpace.from_dict(SPACE)
    rows = {t.name: _rows(t) for t in exp.glob("trial_*")}
    for name, trial_rows in rows.items():  # (a), (f), and every epoch trained by 2 ranks
        assert_honours_when(json.loads((exp / name / "params.json").read_text()), space, name)
        assert_every_epoch_kept(trial_rows, name[len("trial_"):])
        assert all(r["world_size"] == 2 for r in trial_rows), name
        assert all(len(r["worker_pids"].split(",")) == 2 for r in trial_rows), name
    paused = sum(own_checkpoint_restarts(r, n[len("trial_"):]) for n, r in rows.items())
    assert not paused or scheduler in PAUSING, f"(g) {scheduler} paused trials, not in PAUSING"
    ended = df[df["stop_reason"] != "non_finite_loss"]
    if scheduler == "asha":
        stopped = df[df["stop_reason"] == "asha_stopped"]
        assert len(stopped) >= 1, df[["trial_id", "stop_reason", "epochs_run"]]
        assert int(df["epochs_run"].sum()) < DP_SAMPLES * DP_EPOCHS
    elif scheduler == "pbt":
        exploits = [(n, r["resumed_from_trial"]) for n, trial_rows in rows.items()
                    for r in trial_rows if r.get("resumed_from_trial") not in ("", None, n[6:])]
        assert exploits, "PBT never continued a trial from another trial's checkpoint"
        assert any(len({json.dumps(r["config"], sort_keys=True) for r in trial_rows}) > 1
                   for trial_rows in rows.values()), "PBT never changed a running trial's knobs"
    elif scheduler == "fifo":
        assert (ended["stop_reason"] == "completed").all()
        assert (ended["epochs_run"] == DP_EPOCHS).all()
    else:  # hyperband, median: each trial ended on its own or by the scheduler, never hung
        assert set(ended["stop_reason"]) <= {"completed", f"{scheduler}_stopped"}, ended


def test_contract_covers_every_registered_pair():
    """The suite's parameters come from the registries: nothing is left out or run twice."""
    assert sorted(ACCEPTED + sorted(REFUSED_PAIRS)) == sorted(
        itertools.product(SEARCHERS, SCHEDULERS))
    assert {s for s, _ in KILLS} == set(SEARCHERS)
    assert {s for _, s in KILLS} == set(SCHEDULERS)
    with pytest.raises(ConfigError, match="unknown scheduler"):
        run_tune(SPACE, scheduler="nope", verbose=0)
