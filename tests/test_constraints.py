"""Constraints on a trial's cost: parsing and its one-line errors (Python and CLI), evaluation,
and real tiny runs in which a too-big recipe ends infeasible without training."""

import json
import math

import pandas as pd
import pytest

from trainables.constraints import METRICS, Constraint, broken, parse_constraint, parse_constraints
from trainables.errors import ConfigError
from tuner.cli import main

from grouped import run_tune

TINY = {"dataset": "digits", "width": 8}
# simple_cnn on digits: 19,074 parameters at width 8, 1,184,714 at width 64
WIDTHS = {"dataset": "digits", "width": {"choice": [8, 64]}, "lr": 0.1}
LIMIT = "params<=100k"


@pytest.mark.parametrize(("text", "metric", "op", "bound"), [
    ("params<=200000", "params", "<=", 200000.0),
    (" params_trainable < 2e5 ", "params_trainable", "<", 200000.0),
    ("flops>=1.5M", "flops", ">=", 1.5e6),
    ("latency_ms>0.5", "latency_ms", ">", 0.5),
    ("train_time_s<=2k", "train_time_s", "<=", 2000.0),
    ("flops<0.6G", "flops", "<", 6e8),
    ("params<=200K", "params", "<=", 2e5),
])
def test_parsing(text, metric, op, bound):
    c = parse_constraint(text)
    assert (c.metric, c.op, c.bound, c.text) == (metric, op, bound, text.strip())
    assert c.static == (metric in ("params", "params_trainable", "flops"))


@pytest.mark.parametrize(("text", "message"), [
    ("parms<=2e5", "constraints: unknown metric 'parms' in 'parms<=2e5' "
                   f"({', '.join(METRICS)})"),
    ("params=200000", "constraints: operator '=' in 'params=200000'; use <=, <, >=, >"),
    ("params==2", "constraints: operator '==' in 'params==2'; use <=, <, >=, >"),
    ("params 200000", "constraints: no operator in 'params 200000'; use <=, <, >=, >"),
    ("params<=abc", "constraints: 'abc' in 'params<=abc' is not a number"),
    ("params<=", "constraints: '' in 'params<=' is not a number"),
    ("params<=2 k", "constraints: '2 k' in 'params<=2 k' is not a number"),
    ("params<=nan", "constraints: 'nan' in 'params<=nan' is not a number"),
    ("<=5", "constraints: '<=5' is not METRIC OP NUMBER"),
])
def test_bad_text_gets_one_line_naming_the_field_and_the_rule(text, message):
    with pytest.raises(ConfigError) as err:
        parse_constraints([text])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_one_string_is_one_constraint():
    assert parse_constraints("params<=5") == (Constraint("params", "<=", 5.0, "params<=5"),)
    assert parse_constraints(None) == parse_constraints([]) == ()


def test_evaluation_and_violation():
    le, lt, ge = (parse_constraint(t) for t in ("params<=100", "latency_ms<2", "flops>=10"))
    assert le.holds(100) and not le.holds(101)
    assert lt.holds(1.9) and not lt.holds(2)
    assert ge.holds(10) and not ge.holds(9)
    # Optuna's convention: > 0 when broken, <= 0 when it holds
    assert le.violation(150) == 50 and le.violation(100) == 0 and le.violation(40) == -60
    assert lt.violation(2) > 0 and ge.violation(4) == 6
    assert broken([le, lt, ge], {"params": 150, "flops": 20}) == ["params 150 breaks params<=100"]
    assert broken([lt], {"params": 1}) == []  # latency not measured yet: not judged


def test_the_library_names_the_field_and_the_cli_the_flag(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"^constraints: unknown metric 'parms' in "
                                          r"'parms<=2e5' \(params, params_trainable,"):
        run_tune(TINY, storage=tmp_path / "py", verbose=0, constraints=("params<=1M",
                                                                        "parms<=2e5"))
    assert not (tmp_path / "py").exists()
    space = tmp_path / "space.yaml"
    space.write_text("dataset: digits\nwidth: 8\n")
    for argv, flag in ((["--constraint", "parms<=2e5"], "--constraint: unknown metric 'parms'"),
                       (["--constraint", "params<=1M", "--constraint", "flops=5"],
                        "--constraint: operator '=' in 'flops=5'")):
        assert main(["run", "--space", str(space), "--storage", str(tmp_path / "cli"),
                     *argv]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"cnn-tuner: error: {flag}"), lines
        assert not (tmp_path / "cli").exists()


def test_the_run_settings_keep_the_constraints_through_a_save(tmp_path):
    from tuner.running.settings import RunSettings

    settings = RunSettings(space=TINY, constraints=["params<=1M"])
    assert settings.constraints == ("params<=1M",)
    settings.save(str(tmp_path))
    assert RunSettings.load(str(tmp_path)).constraints == ("params<=1M",)
    assert RunSettings(space=TINY, constraints="flops<1G").constraints == ("flops<1G",)


def test_no_scheduler_records_an_infeasible_result():
    """The result that ends a trial infeasible enters no rung: ASHA's cut-off is the same."""
    from types import SimpleNamespace

    from tuner.running.schedulers import build_scheduler

    asha = build_scheduler("asha", 4)
    asha.set_search_properties("val_acc", "max")
    trials = [SimpleNamespace(trial_id=str(i)) for i in range(3)]
    for t in trials:
        asha.on_trial_add(None, t)
    bracket = asha._brackets[0]
    asha.on_trial_result(None, trials[0], {"training_iteration": 2, "val_acc": 0.9})
    before = [dict(recorded) for _, recorded in bracket._rungs]
    action = asha.on_trial_result(None, trials[1], {"training_iteration": 2, "val_acc": 0.0,
                                                    "stop_reason": "infeasible"})
    asha.on_trial_complete(None, trials[1], {"training_iteration": 2, "val_acc": 0.0,
                                             "stop_reason": "infeasible"})
    assert action == "CONTINUE" and [dict(rec) for _, rec in bracket._rungs] == before
    assert "1" not in asha._trial_info


def _read(res):
    df = pd.read_csv(f"{res.path}/results.csv", dtype={"trial_id": str})
    return df, json.loads(open(f"{res.path}/summary.json").read())


@pytest.mark.ray
def test_too_big_recipes_end_infeasible_without_training(ray_local, tmp_path):
    from tuner import RunConfig, TuneConfig, tune

    res = tune(WIDTHS, num_samples=4, max_epochs=2,
               tune_config=TuneConfig(searcher="random", scheduler="asha", constraints=(LIMIT,)),
               run_config=RunConfig(storage=tmp_path, name="c", verbose=0))
    df, summary = _read(res)
    wide, narrow = df[df["width"] == 64], df[df["width"] == 8]
    assert len(wide) and len(narrow), df[["width", "status"]]  # seed 0 samples both
    assert set(wide["status"]) == set(wide["stop_reason"]) == {"infeasible"}
    assert (wide["epochs_run"] == 0).all() and (wide["params"] == 1184714).all()
    assert (wide["val_acc"] == 0.0).all()  # the worst value, told to the searcher
    assert wide["test_acc"].isna().all() and (wide["train_time_s"] == 0).all()
    assert all(b == "params 1184714 breaks params<=100k"
               for b in wide["broken_constraint"])
    assert set(narrow["status"]) == {"completed"} and (narrow["epochs_run"] == 2).all()
    assert (narrow["params"] == 19074).all() and (narrow["latency_ms"] > 0).all()
    for col in ("params_trainable", "flops", "latency_device", "train_time_s"):
        assert df[col].notna().all(), col
    assert summary["infeasible"] == len(wide) and summary["completed"] == len(narrow)
    assert summary["constraints"] == [LIMIT]
    assert summary["best_trial"] in set(narrow["trial_id"]) and res.best_recipe.width == 8
    assert summary["total_trial_epochs"] == 2 * len(narrow)
    # each infeasible trial reported exactly once, at epoch 0, without a checkpoint
    for path in res.dataframe.loc[res.dataframe["width"] == 64, "path"]:
        rows = pd.read_csv(f"{path}/progress.csv")
        assert list(rows["epoch"]) == [0] and list(rows["training_iteration"]) == [1]


@pytest.mark.ray
@pytest.mark.parametrize("searcher", ["tpe", "optuna"])
def test_model_based_searchers_are_told_the_worst_value(searcher, ray_local, tmp_path):
    from tuner import RunConfig, TuneConfig, tune

    res = tune(WIDTHS, num_samples=4, max_epochs=1,
               tune_config=TuneConfig(searcher=searcher, scheduler="fifo", seed=1,
                                      constraints=(LIMIT,)),
               run_config=RunConfig(storage=tmp_path, name=searcher, verbose=0))
    df, summary = _read(res)
    wide = df[df["width"] == 64]
    assert len(wide) and summary["infeasible"] == len(wide)
    # the last result of each infeasible trial (what the searcher's on_trial_complete gets)
    for path in res.dataframe.loc[res.dataframe["width"] == 64, "path"]:
        last = json.loads(open(f"{path}/result.json").read().strip().splitlines()[-1])
        assert last["stop_reason"] == "infeasible" and last["val_acc"] == 0.0
    assert res.best_recipe is not None and res.best_recipe.width == 8
    if searcher == "optuna":  # Optuna also got the constraint values off the trial
        from tuner.running.constrained_optuna import ConstrainedOptunaSearch

        optuna_search = ConstrainedOptunaSearch()
        optuna_search.restore_from_dir(res.path)
        told = {t.params["width"]: t.constraints for t in optuna_search._ot_study.trials}
        assert told[64] == {LIMIT: 1184714 - 100000} and told[8] == {LIMIT: 19074 - 100000}
        assert not math.isnan(optuna_search._ot_study.best_value)


@pytest.mark.parametrize("infeasible", [0, 3])
def test_the_cli_summary_line_counts_infeasible_trials_when_there_are_any(infeasible, capsys):
    from types import SimpleNamespace

    from tuner.cli.commands import _print_summary

    summary = {"trials": 3, "completed": 3 - infeasible, "early_stopped": 0, "non_finite": 0,
               "infeasible": infeasible, "errored": 0, "total_trial_epochs": 6,
               "budget_trial_epochs": 6, "wall_time_s": 5.0}
    _print_summary(SimpleNamespace(summary=summary, best_recipe=None, path="p"))
    out = capsys.readouterr().out
    assert ("3 infeasible (broke a --constraint)" in out) == bool(infeasible)
    assert ("no feasible trial produced a result" in out) == bool(infeasible)
