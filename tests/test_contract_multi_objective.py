"""The tuning-core contract for multi-objective runs (docs/multi-objective.md), driven from the
registries like tests/test_contract.py: every searcher in ``searchers.MULTI_OBJECTIVE`` x every
scheduler in ``schedulers.MULTI_OBJECTIVE`` runs for real with objectives val_acc:max and
params:min on a conditional space where width moves params; every other searcher or scheduler
is refused in one line before anything starts.

For each accepted pair:
(a) every trial's config honours ``when``;
(b) pareto.csv holds exactly the non-dominated trials among those that ended on their own
    (checked by brute force against results.csv), each with a runnable pareto/<trial>.yaml, and
    summary.json lists the same front; best_recipe.yaml is the front's best by val_acc;
(c) the multi-objective ASHA stops trials early (fewer are cut than by one objective: a
    trial on the rung's first front with a boundary position survives; benchmarks/
    multi_objective.py measures what it saves), FIFO runs every trial to its end;
(d) `cnn-tuner results --pareto` prints the front and the report draws it with a tooltip per
    trial; a driver killed mid-run resumes with its study and rungs, nothing lost.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from search_spaces import SearchSpace, choice, grid, loguniform, uniform
from trainables.recipe import Recipe
from tuner.cli import main
from tuner.running import schedulers, searchers

from grouped import run_tune
from test_contract import CLI, _kill_midway, _rows, _searcher_history, assert_honours_when

pytestmark = pytest.mark.ray

OBJECTIVES = ("val_acc:max", "params:min")
NUM_SAMPLES, MAX_EPOCHS, SEED = 10, 6, 5
BASE = {"dataset": "digits", "image_size": 16}
SPACE = {**BASE, "width": choice([4, 8, 16]),
         "optimizer": choice(["nesterov", "adamw"]),
         "lr": loguniform(1e-3, 1.0),
         "momentum": uniform(0.5, 0.95, when={"optimizer": "nesterov"})}
GRID_SPACE = {**BASE, "width": grid([4, 16]), "optimizer": grid(["nesterov", "adamw"]),
              "lr": grid([0.003, 0.3])}  # 8 points
ACCEPTED = sorted(itertools.product(searchers.MULTI_OBJECTIVE, schedulers.MULTI_OBJECTIVE))
REFUSED_SEARCHERS = sorted(set(searchers.SEARCHERS) - searchers.MULTI_OBJECTIVE)
REFUSED_SCHEDULERS = sorted(set(schedulers.SCHEDULERS) - schedulers.MULTI_OBJECTIVE)


def dominated(a: pd.Series, b: pd.Series) -> bool:
    """``a`` is dominated by ``b`` under (val_acc max, params min)."""
    no_worse = b["val_acc"] >= a["val_acc"] and b["params"] <= a["params"]
    return no_worse and (b["val_acc"] > a["val_acc"] or b["params"] < a["params"])


@pytest.fixture(scope="module")
def mo_runs(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("mo-contract")
    cache: dict[tuple[str, str], tuple[pd.DataFrame, Path]] = {}

    def run(searcher: str, scheduler: str) -> tuple[pd.DataFrame, Path]:
        if (searcher, scheduler) not in cache:
            res = run_tune(GRID_SPACE if searcher == "grid" else SPACE, searcher=searcher,
                           scheduler=scheduler, objectives=OBJECTIVES,
                           num_samples=None if searcher == "grid" else NUM_SAMPLES,
                           max_epochs=MAX_EPOCHS, seed=SEED, storage=root,
                           name=f"{searcher}-{scheduler}", max_failures=0, verbose=0)
            cache[searcher, scheduler] = res.dataframe, Path(res.path)
        return cache[searcher, scheduler]

    return run


@pytest.mark.parametrize(("searcher", "scheduler"), ACCEPTED)
def test_multi_objective_contract(mo_runs, searcher, scheduler, capsys):
    df, exp = mo_runs(searcher, scheduler)
    space = SearchSpace.from_dict(GRID_SPACE if searcher == "grid" else SPACE)
    assert not (df["status"] == "errored").any(), df[["trial_id", "error"]]
    # (a)
    for trial in exp.glob("trial_*"):
        assert_honours_when(json.loads((trial / "params.json").read_text()), space, trial.name)
    # (b) the front, by brute force over the trials that ended on their own
    csv = pd.read_csv(exp / "results.csv", dtype={"trial_id": str})
    pool = csv[csv["stop_reason"].isin(["completed", "early_stopped"])]
    expect = {r["trial_id"] for _, r in pool.iterrows()
              if not any(dominated(r, o) for _, o in pool.iterrows())}
    front = pd.read_csv(exp / "pareto.csv", dtype={"trial_id": str})
    assert set(front["trial_id"]) == expect and expect
    assert list(front["val_acc"]) == sorted(front["val_acc"], reverse=True)
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["objectives"] == list(OBJECTIVES)
    assert {t["trial_id"] for t in summary["pareto_front"]} == expect
    assert summary["hypervolume"]["value"] > 0
    for tid in expect:
        recipe = Recipe.from_yaml(exp / "pareto" / f"{tid}.yaml")
        row = csv[csv["trial_id"] == tid].iloc[0]
        assert recipe.width == row["width"] and recipe.lr == pytest.approx(row["lr"])
    assert summary["best_trial"] == front["trial_id"].iloc[0]
    best = Recipe.from_yaml(exp / "best_recipe.yaml")
    assert best == Recipe.from_yaml(exp / "pareto" / f"{summary['best_trial']}.yaml")
    # (c)
    budget, used = len(df) * MAX_EPOCHS, int(df["epochs_run"].sum())
    if scheduler == "asha":
        stopped = df[df["stop_reason"] == "asha_stopped"]
        assert len(stopped) and (stopped["epochs_run"] < MAX_EPOCHS).all(), df
        assert used < budget
    else:
        ended = df[df["stop_reason"] != "non_finite_loss"]
        assert (ended["epochs_run"] == MAX_EPOCHS).all()
    # (d)
    assert main(["results", str(exp), "--pareto"]) == 0
    out = capsys.readouterr().out
    assert all(t in out for t in expect) and "params" in out.splitlines()[0]


def test_report_draws_the_front_with_a_recipe_per_point(mo_runs, tmp_path):
    from tuner.analysis.report import write_report

    df, exp = mo_runs("random", "asha")
    index = Path(write_report(exp, tmp_path / "report"))
    page = index.read_text()
    assert "<h2>Pareto front</h2>" in page and (tmp_path / "report" / "hypervolume.png").is_file()
    front = pd.read_csv(exp / "pareto.csv", dtype={"trial_id": str})
    for tid in front["trial_id"]:
        assert f'<g id="pt-{tid}-0"><title>trial {tid}' in page


@pytest.mark.parametrize("searcher", REFUSED_SEARCHERS)
def test_single_objective_searchers_are_refused(searcher, tmp_path, capsys):
    code = main(["run", "--searcher", searcher, "--scheduler", "fifo", "--objective",
                 "val_acc:max", "--objective", "params:min", "--storage", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"cnn-tuner: error: --searcher: {searcher!r}")
    assert all(s in err[0] for s in searchers.MULTI_OBJECTIVE)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("scheduler", REFUSED_SCHEDULERS)
def test_single_objective_schedulers_are_refused(scheduler, tmp_path, capsys):
    code = main(["run", "--searcher", "random", "--scheduler", scheduler, "--objective",
                 "val_acc:max", "--objective", "latency_ms:min", "--storage", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"cnn-tuner: error: --scheduler: {scheduler!r}")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("objectives", [
    ["val_acc:max"], ["acc:max", "params:min"], ["val_acc:up", "params:min"],
    ["val_acc:max", "val_acc:min"], ["val_acc:max", "params:min", "flops:min", "latency_ms:min"],
])
def test_bad_objectives_are_one_line(objectives, tmp_path, capsys):
    argv = ["run", "--searcher", "random", "--scheduler", "fifo", "--storage", str(tmp_path)]
    for o in objectives:
        argv += ["--objective", o]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("cnn-tuner: error: --objective: ")
    assert not any(tmp_path.iterdir())


def test_killed_driver_resume_keeps_the_multi_objective_search(tmp_path):
    """(d) of the contract: optuna's multi-objective study and the multi-objective ASHA's rungs
    come back from Ray's saved state; trials finished before the kill are kept, not rerun."""
    exp, space = tmp_path / "exp", tmp_path / "space.yaml"
    SearchSpace.from_dict(SPACE).to_yaml(space)
    cmd = [*CLI, "run", "--space", str(space), "--storage", str(tmp_path), "--name", "exp",
           "--searcher", "optuna", "--scheduler", "asha", "--objective", OBJECTIVES[0],
           "--objective", OBJECTIVES[1], "--num-samples", "6", "--max-epochs", "4",
           "--seed", str(SEED), "--verbose", "0"]
    done = _kill_midway(cmd, exp)
    resumed = subprocess.run([*CLI, "resume", str(exp), "--verbose", "0"], capture_output=True,
                             text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    df = pd.read_csv(exp / "results.csv", dtype={"trial_id": str})
    assert len(df) == 6 and df["trial_id"].is_unique and not (df["status"] == "errored").any()
    for name, rows in done.items():
        assert _rows(exp / name) == rows
    assert _searcher_history(exp, "optuna") == 6
    assert (exp / "pareto.csv").is_file()
