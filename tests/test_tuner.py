"""The tuning platform on real Ray and real training on digits, with tiny budgets (marked `ray`),
and the searcher and scheduler registries, which need no Ray."""

import itertools
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import ray

from search_spaces import choice, grid, loguniform, randint, uniform
from trainables.data import DataSplits
from trainables.errors import ConfigError
from trainables.loop import train
from trainables.recipe import Recipe
from tuner.running.schedulers import SchedulerOptions, build_scheduler
from tuner.running.searchers import build_search

from grouped import run_tune

TINY = {"dataset": "digits", "width": 8, "batch_size": 128}


def _tune(tmp_path, space, **kw):
    kw.setdefault("verbose", 0)
    return run_tune(space, storage=tmp_path, name=kw.pop("name", "exp"), **kw)


def _trial_record(path: str) -> tuple[dict, dict]:
    """What a trial folder says, apart from the results table: the config Ray gave the trial
    (params.json) and its last report (the last line of result.json)."""
    folder = Path(path)
    params = json.loads((folder / "params.json").read_text())
    return params, json.loads((folder / "result.json").read_text().splitlines()[-1])


def _assert_best_is_the_best_finished_trial(res) -> None:
    """best_metrics holds the highest val_acc of the trials that ended on their own (completed,
    or stopped by their own patience: a trial the scheduler cut short is not what its recipe
    retrains to), and best_recipe is the config of such a trial; read from the trial folders."""
    records = [_trial_record(p) for p in res.dataframe["path"]]
    finished = [(params, last) for params, last in records
                if last.get("stop_reason") in ("completed", "early_stopped")]
    assert finished, "no trial ended on its own"
    top = max(last["val_acc"] for _, last in finished)
    assert res.best_metrics["val_acc"] == top
    assert res.best_recipe in [Recipe.from_dict({k: v for k, v in params.items() if v is not None})
                               for params, last in finished if last["val_acc"] == top]


@pytest.mark.ray
def test_grid_search_runs_exactly_the_grid(ray_local, tmp_path):
    space = {**TINY, "lr": grid([0.05, 0.2]), "batch_size": grid([64, 128])}
    res = _tune(tmp_path, space, searcher="grid", scheduler="fifo", max_epochs=1)
    df = res.dataframe
    assert len(df) == 4
    pairs = set(zip(df["lr"], df["batch_size"], strict=True))
    assert pairs == set(itertools.product([0.05, 0.2], [64, 128]))
    assert (df["status"] == "completed").all()
    written = pd.read_csv(tmp_path / "exp" / "results.csv")
    assert len(written) == 4 and {"status", "epochs_run", "val_acc", "lr"} <= set(written)


@pytest.mark.ray
@pytest.mark.parametrize("searcher", ["tpe", "optuna"])
def test_model_based_searchers_honour_conditionals_and_configs_are_flat(ray_local, tmp_path,
                                                                     searcher):
    space = {**TINY, "lr": loguniform(0.01, 0.3),
             "lr_schedule": choice(["step", "cosine"]),
             "step_size": randint(1, 3, when={"lr_schedule": "step"}),
             "gamma": uniform(0.2, 0.8, when={"lr_schedule": "step"})}
    res = _tune(tmp_path, space, searcher=searcher, scheduler="fifo", num_samples=6,
                max_epochs=1)
    df = res.dataframe
    assert len(df) == 6 and set(df["lr_schedule"]) <= {"step", "cosine"}
    for _, row in df.iterrows():
        is_step = row["lr_schedule"] == "step"
        assert is_step == (not math.isnan(row["step_size"])), row.to_dict()
        assert is_step == (not math.isnan(row["gamma"]))
    for path in df["path"]:  # the trial configs themselves are flat Recipe knobs
        params, _ = _trial_record(path)
        assert all(not isinstance(v, dict) for v in params.values()), params
        if params["lr_schedule"] != "step":
            assert "step_size" not in params
        Recipe.from_dict(params)


@pytest.mark.ray
def test_asha_stops_some_trials_early(ray_local, tmp_path):
    space = {**TINY, "lr": loguniform(1e-4, 0.5)}
    res = _tune(tmp_path, space, searcher="random", scheduler="asha", num_samples=8,
                max_epochs=6, scheduler_options=SchedulerOptions(grace_period=2,
                                                                 reduction_factor=3))
    s = res.summary
    assert s["trials"] == 8 and s["early_stopped"] >= 3, res.dataframe
    assert s["total_trial_epochs"] <= 0.75 * 8 * 6
    assert (res.dataframe.query("status == 'early_stopped'")["stop_reason"]
            == "asha_stopped").all()
    _assert_best_is_the_best_finished_trial(res)
    assert s["best_test_acc"] is not None  # the best trial finished: it has a test_acc


@pytest.mark.ray
def test_fractional_gpus_pack_two_trials_per_gpu(ray_local, tmp_path, capfd):
    space = {**TINY, "lr": grid([0.05, 0.1, 0.2, 0.3])}
    res = _tune(tmp_path, space, searcher="grid", scheduler="fifo", max_epochs=2,
                cpus_per_trial=0.5, gpus_per_trial=0.5)
    rows = ray_local.get(_trial_metrics.remote(list(res.dataframe["path"])))
    assert sorted(r["gpu_ids"] for r in rows) == ["0", "0", "1", "1"]
    assert all(r["device"] == "cpu" for r in rows)  # no CUDA here: trained on the CPU
    spans = [(r["timestamp"] - r["time_total_s"], r["timestamp"]) for r in rows]
    overlap = max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)
    assert overlap == 4


@ray.remote(num_cpus=0)
def _trial_metrics(paths):
    import json
    from pathlib import Path
    return [json.loads((Path(p) / "result.json").read_text().splitlines()[-1]) for p in paths]


@pytest.mark.ray
def test_dataset_is_put_in_object_store_once(ray_local, tmp_path, monkeypatch):
    puts = []
    real_put = ray.put

    def counting_put(value, *a, **k):
        if isinstance(value, DataSplits):
            puts.append(value)
        return real_put(value, *a, **k)

    monkeypatch.setattr(ray, "put", counting_put)
    _tune(tmp_path, {**TINY, "lr": loguniform(0.01, 0.3)}, searcher="random",
          scheduler="fifo", num_samples=3, max_epochs=1)
    assert len(puts) == 1


@pytest.mark.ray
def test_best_recipe_retrains_to_same_val_acc(ray_local, tmp_path):
    import torch

    res = _tune(tmp_path, {**TINY, "lr": loguniform(0.02, 0.3)}, searcher="random",
                scheduler="fifo", num_samples=2, max_epochs=2)
    exported = Recipe.from_yaml(tmp_path / "exp" / "best_recipe.yaml")
    assert exported == res.best_recipe
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the trial ran with 1 CPU -> 1 thread
    try:
        again = train(exported, device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert again.final["val_acc"] == pytest.approx(res.best_metrics["val_acc"], abs=1e-9)


@pytest.mark.ray
def test_programmatic_space_like_the_readme(ray_local, tmp_path):
    from tuner import RunConfig
    from tuner import tune as tune_

    space = {
        "dataset": "digits",
        "width": 8,
        "lr": loguniform(1e-2, 0.3),
        "lr_schedule": choice(["step", "onecycle"]),
        "step_size": randint(1, 2, when={"lr_schedule": "step"}),
    }
    result = tune_(space, num_samples=3, max_epochs=2,
                   run_config=RunConfig(storage=tmp_path, name="readme", verbose=0))
    assert len(result.dataframe) == 3
    _assert_best_is_the_best_finished_trial(result)
    assert result.best_recipe.dataset == "digits" and result.path.endswith("readme")


@pytest.mark.ray
def test_existing_experiment_is_not_overwritten(ray_local, tmp_path):
    space = {**TINY, "lr": 0.1}
    _tune(tmp_path, space, searcher="random", scheduler="fifo", num_samples=1, max_epochs=1)
    with pytest.raises(ConfigError, match="already exists.*cnn-tuner resume"):
        _tune(tmp_path, space, searcher="random", scheduler="fifo", num_samples=1, max_epochs=1)


# -- registries: pure logic, no Ray needed -----------------------------------------------------
def test_unknown_searcher_and_scheduler_list_valid_names():
    from search_spaces import SearchSpace

    with pytest.raises(ConfigError, match="valid: grid, random, tpe, optuna"):
        build_search("bayes", SearchSpace({"lr": 0.1}), seed=0, num_samples=1)
    with pytest.raises(ConfigError, match="valid: fifo, asha, hyperband, median, pbt"):
        build_scheduler("sha", 10)
    with pytest.raises(ConfigError, match="grace_period"):
        build_scheduler("asha", 10, SchedulerOptions(grace_period=20))


@pytest.mark.parametrize(("name", "objectives", "first_rung"), [
    ("asha", (), 1), ("median", (), 2), ("asha", ("val_acc:max", "params:min"), 2)])
def test_default_grace_period_per_scheduler(name, objectives, first_rung):
    """ASHA's first rung is at epoch 1 by default (Ray's default; BENCHMARKS.md section 10),
    the median rule and the multi-objective ASHA wait 2 epochs; never past max_epochs; a given
    grace period wins."""
    from tuner.running.pareto import parse_objectives

    def first(sched):
        if hasattr(sched, "milestones"):  # the multi-objective ASHA
            return min(sched.milestones)
        if hasattr(sched, "_brackets"):
            return min(m for m, _ in sched._brackets[0]._rungs)
        return sched._grace_period

    objs = parse_objectives(list(objectives)) if objectives else ()
    assert first(build_scheduler(name, 12, objectives=objs)) == first_rung
    assert first(build_scheduler(name, 1, objectives=objs)) == 1
    assert first(build_scheduler(name, 12, SchedulerOptions(grace_period=4),
                                 objectives=objs)) == 4


def test_optuna_searcher_without_optuna_says_how_to_install(monkeypatch):
    from search_spaces import SearchSpace

    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    with pytest.raises(ConfigError, match=r"searcher 'optuna' needs Optuna .*cnn-tuner\[optuna\]"):
        build_search("optuna", SearchSpace({"lr": loguniform(0.01, 0.1)}), seed=0,
                     num_samples=4)


@pytest.mark.ray
@pytest.mark.parametrize("scheduler", ["hyperband", "median"])
def test_other_schedulers_run_to_the_end(ray_local, tmp_path, scheduler):
    res = _tune(tmp_path, {**TINY, "lr": loguniform(1e-3, 0.3)}, searcher="random",
                scheduler=scheduler, num_samples=4, max_epochs=2)
    assert res.summary["trials"] == 4 and res.summary["errored"] == 0
    _assert_best_is_the_best_finished_trial(res)


@pytest.mark.ray
def test_pbt_exploits_through_checkpoints(ray_local, tmp_path):
    res = _tune(tmp_path, {**TINY, "lr": loguniform(1e-4, 0.5), "lr_schedule": "constant"},
                searcher="random", scheduler="pbt", num_samples=4, max_epochs=4,
                scheduler_options=SchedulerOptions(perturbation_interval=1))
    assert res.summary["trials"] == 4 and res.summary["errored"] == 0
    log = (tmp_path / "exp" / "pbt_global.txt").read_text().strip().splitlines()
    assert log, "PBT never exploited a trial"
    # an exploited trial continued from the donor's checkpoint: its epochs kept counting
    assert (res.dataframe["epochs_run"] == 4).all()
