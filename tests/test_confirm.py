"""Confirmation over seeds: the top trials of a finished search retrained with new seeds, ranked
by their mean with a 95% Student-t interval; the best by mean becomes the best recipe.

The seed rule, the recipe read back from results.csv and the ranking are checked without Ray;
one end-to-end run confirms the shared tiny experiment (``lr_experiment``, 3 trials x 2 seeds)
through ``cnn-tuner confirm`` and its report, and one tiny ``cnn-tuner run --confirm-top``
confirms after its own search.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import ray
import yaml
from scipy import stats

from trainables.recipe import Recipe
from tuner.analysis.report import write_report
from tuner.cli import main
from tuner.running.confirm import confirm_seeds, rank_recipes, trial_recipe
from tuner.running.results import load_results


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_seeds_are_new_for_every_recipe_and_shared_by_all():
    assert confirm_seeds([0, 0, 0], 3) == [1, 2, 3]  # a search without a tuned seed
    assert confirm_seeds([527, 2, 0, 4], 4) == [1, 3, 5, 6]
    assert confirm_seeds([], 2) == [0, 1]


def test_a_trial_recipe_is_read_back_from_its_knob_columns(tmp_path):
    csv = tmp_path / "results.csv"
    csv.write_text("trial_id,status,lr,lr_schedule,step_size,batch_norm,width,val_acc\n"
                   "a,completed,0.05,step,3.0,False,8,0.9\n"
                   "b,completed,0.01,cosine,,,8,0.8\n")
    df = pd.read_csv(csv, dtype={"trial_id": str})
    a, b = (trial_recipe(row) for _, row in df.iterrows())
    assert (a.lr, a.lr_schedule, a.step_size, a.batch_norm, a.width) == (0.05, "step", 3, False, 8)
    defaults = Recipe()
    assert (b.lr_schedule, b.step_size, b.batch_norm) == ("cosine", defaults.step_size,
                                                          defaults.batch_norm)


def test_recipes_rank_by_their_mean_with_a_t_interval():
    top = pd.DataFrame({"trial_id": ["a", "b", "c"], "val_acc": [0.95, 0.94, 0.93],
                        "lr": [0.1, 0.01, 0.001]})
    accs = {"a": [0.90, 0.86, 0.88], "b": [0.93, 0.92, 0.94], "c": [0.91, float("nan"), 0.89]}
    runs = pd.DataFrame([{"trial_id": t, "seed": s, "val_acc": v, "test_acc": v - 0.01}
                         for t, vs in accs.items() for s, v in zip((1, 2, 3), vs, strict=True)])
    table = rank_recipes(runs, top, "val_acc", "max", ["lr"])
    assert list(table["trial_id"]) == ["b", "c", "a"] and list(table["rank"]) == [1, 2, 3]
    assert list(table["single_run_rank"]) == [2, 3, 1]
    b = table.iloc[0]
    lo, hi = stats.t.interval(0.95, 2, loc=0.93, scale=stats.sem(accs["b"]))
    assert b["mean"] == pytest.approx(0.93) and b["test_acc_mean"] == pytest.approx(0.92)
    assert (b["ci_low"], b["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert (b["single_run"], b["lr"], b["seeds"], b["failed"]) == (0.94, 0.01, 3, 0)
    c = table.iloc[1]
    assert (c["seeds"], c["failed"]) == (2, 1)  # a failed training is left out of the mean
    by_loss = rank_recipes(runs, top, "val_acc", "min", [])  # mode min: the lowest mean first
    assert list(by_loss["trial_id"]) == ["a", "c", "b"]


@pytest.mark.ray
def test_confirm_retrains_the_top_trials_and_rewrites_the_best(lr_experiment, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(lr_experiment, exp, ignore=shutil.ignore_patterns("checkpoint_*"))
    trials, before = load_results(exp)
    rc, out, err = _cli("confirm", str(exp), "--top", "3", "--seeds", "2")
    assert rc == 0, err
    assert len(re.findall(r"^\[\d+/6\] ", err, re.M)) == 6  # 3 recipes x 2 seeds, as they end

    table = pd.read_csv(exp / "confirm.csv", dtype={"trial_id": str})
    runs = pd.read_csv(exp / "confirm_runs.csv", dtype={"trial_id": str})
    finished = trials[trials["stop_reason"].isin(["completed", "early_stopped"])]
    top3 = finished.sort_values(["val_acc", "val_loss"], ascending=[False, True],
                                kind="stable").head(3)  # ties: the lower val_loss
    assert set(table["trial_id"]) == set(top3["trial_id"]) and list(table["rank"]) == [1, 2, 3]
    assert table["mean"].is_monotonic_decreasing
    assert (table["ci_low"] <= table["mean"]).all() and (table["mean"] <= table["ci_high"]).all()
    assert "lr" in table.columns and "seed" not in table.columns  # the knobs that differ
    single = dict(zip(top3["trial_id"], top3["val_acc"], strict=True))
    assert all(table["single_run"] == table["trial_id"].map(single))
    for tid, mine in runs.groupby("trial_id"):  # the mean is over that recipe's own runs
        assert table.set_index("trial_id").loc[tid, "mean"] == pytest.approx(
            mine["val_acc"].mean())

    assert len(runs) == 6 and (runs["error"].isna() | (runs["error"] == "")).all()
    seeds = {tid: sorted(g["seed"]) for tid, g in runs.groupby("trial_id")}
    assert len({tuple(s) for s in seeds.values()}) == 1  # paired: the same seeds for all
    searched = {t: int(s) for t, s in zip(trials["trial_id"], trials["seed"], strict=True)}
    assert all(searched[t] not in s for t, s in seeds.items())  # never the search's own seed
    assert (runs["epochs_run"] >= 1).all() and runs["test_acc"].between(0, 1).all()

    summary = json.loads((exp / "summary.json").read_text())
    c = summary["confirmed"]
    best = table.iloc[0]
    assert c["best_trial_by_mean"] == best["trial_id"]
    assert c["single_run_best_trial"] == before["best_trial"] == top3["trial_id"].iloc[0]
    assert c["winner_changed"] == (c["best_trial_by_mean"] != c["single_run_best_trial"])
    assert c["mean"] == pytest.approx(best["mean"]) and c["seeds"] == seeds[best["trial_id"]]
    assert c["ci_low"] <= c["mean"] <= c["ci_high"]
    assert summary["best_trial"] == before["best_trial"]  # the search's own figures stay
    winner = trial_recipe(trials.set_index("trial_id", drop=False).loc[best["trial_id"]])
    assert Recipe.from_yaml(exp / "best_recipe.yaml") == winner
    assert summary["best_recipe"] == winner.to_dict()
    assert f"best by mean {best['trial_id']}" in out and "95% CI" in out

    html = Path(write_report(exp)).read_text()
    section = re.search(r'<table[^>]*id="confirm">(.*?)</table>', html, re.S)
    assert section and len(re.findall(r"<tr", section.group(1))) == 1 + 3
    assert 'id="confirm-verdict"' in html
    assert (exp / "report" / "confirm.png").stat().st_size > 5000


@pytest.mark.parametrize(("args", "expected"), [
    (["--top", "0"], "--top: must be a whole number >= 1"),
    (["--seeds", "1"], "--seeds: must be a whole number >= 2 (a confidence interval"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial: must be > 0"),
    (["--gpus-per-trial", "1.5"], "--gpus-per-trial: above 1"),
])
def test_confirm_refuses_bad_arguments_in_one_line(args, expected, lr_experiment_copy):
    was_up = ray.is_initialized()
    rc, _, err = _cli("confirm", str(lr_experiment_copy), *args)
    assert rc == 2 and err.count("\n") == 1 and expected in err, err
    assert ray.is_initialized() == was_up and not (lr_experiment_copy / "confirm.csv").exists()


@pytest.fixture
def lr_experiment_copy(tmp_path):
    """A folder that looks finished to confirm's checks (results.csv + summary.json), no Ray."""
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "results.csv").write_text("trial_id,status,stop_reason,lr,val_acc\n"
                                     "a,completed,completed,0.1,0.9\n")
    (exp / "summary.json").write_text('{"metric": "val_acc", "mode": "max"}\n')
    return exp


def test_confirm_refuses_a_folder_that_is_not_a_finished_experiment(tmp_path):
    rc, _, err = _cli("confirm", str(tmp_path), "--top", "2", "--seeds", "2")
    assert rc == 2 and err.count("\n") == 1 and "not a finished cnn-tuner experiment" in err


@pytest.mark.parametrize(("args", "expected"), [
    (["--confirm-top", "2"], "--confirm-top: needs --confirm-seeds too"),
    (["--confirm-seeds", "2"], "--confirm-seeds: needs --confirm-top too"),
    (["--confirm-top", "0", "--confirm-seeds", "2"], "--confirm-top: must be a whole number"),
    (["--confirm-top", "2", "--confirm-seeds", "1"], "--confirm-seeds: must be a whole number"),
])
def test_run_refuses_bad_confirm_flags_before_anything_starts(args, expected, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("dataset: digits\nwidth: 4\n")
    was_up = ray.is_initialized()
    rc, _, err = _cli("run", "--space", str(space), "--storage", str(tmp_path / "runs"), *args)
    assert rc == 2 and err.count("\n") == 1 and expected in err, err
    assert ray.is_initialized() == was_up and not (tmp_path / "runs").exists()


@pytest.mark.ray
def test_run_with_confirm_top_confirms_after_its_search(ray_local, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"dataset": "digits", "width": 4, "image_size": 8,
                                     "batch_size": 256, "lr": {"loguniform": [1e-3, 0.3]}}))
    rc, out, err = _cli("run", "--space", str(space), "--storage", str(tmp_path), "--name", "c",
                        "--searcher", "random", "--scheduler", "fifo", "--num-samples", "3",
                        "--max-epochs", "1", "--verbose", "0", "--confirm-top", "2",
                        "--confirm-seeds", "2")
    assert rc == 0, err
    exp = tmp_path / "c"
    table = pd.read_csv(exp / "confirm.csv", dtype={"trial_id": str})
    assert len(table) == 2 and (table["seeds"] == 2).all()
    assert sorted(pd.read_csv(exp / "confirm_runs.csv")["seed"].unique()) == [1, 2]
    summary = json.loads((exp / "summary.json").read_text())
    c = summary["confirmed"]
    assert c["best_trial_by_mean"] == table["trial_id"].iloc[0]
    assert re.search(rf"confirmed over 2 seeds: best by mean {c['best_trial_by_mean']}", out)
    trials, _ = load_results(exp)
    winner = trial_recipe(trials.set_index("trial_id", drop=False).loc[c["best_trial_by_mean"]])
    assert Recipe.from_yaml(exp / "best_recipe.yaml") == winner
    settings = json.loads((exp / "cnn_tuner_run.json").read_text())
    assert (settings["confirm_top"], settings["confirm_seeds"]) == (2, 2)  # resume confirms too
