"""``cnn-tuner report`` on a run with many trials: the page stays readable and light.

The experiment is synthetic (no Ray, no training): ``write_experiment`` writes the files
``cnn-tuner run`` leaves behind, in their formats (RunSettings' ``cnn_tuner_run.json``,
``results.csv`` as ``trial_rows`` builds it, ``summary.json`` with the best picked by
``pick_best``, ``best_recipe.yaml`` and Ray's ``trial_<id>/result.json`` with a JSON line per
epoch), for an ASHA-like run in which the learning rate decides the metric.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from search_spaces import SearchSpace, choice, loguniform, sample, uniform
from trainables.recipe import KNOBS, Recipe
from tuner.analysis.importance import knob_importance
from tuner.analysis.plots import FADED, MANY_TRIALS, TOP_K
from tuner.analysis.report import (
    TABLE_ROWS,
    UNRANKED,
    figures,
    load_experiment,
    rank_trials,
    write_report,
)
from tuner.running.results import (
    BEST_RECIPE,
    METRIC_COLUMNS,
    RESULTS_CSV,
    SUMMARY,
    pick_best,
)
from tuner.running.settings import RunSettings

SPACE = {"dataset": "digits", "width": choice([8, 16, 32]), "batch_size": 128,
         "optimizer": choice(["nesterov", "adamw"]), "lr": loguniform(1e-5, 0.5),
         "momentum": uniform(0.8, 0.95, when={"optimizer": ["nesterov"]}),
         "weight_decay": loguniform(1e-6, 1e-2), "dropout": uniform(0.0, 0.5),
         "label_smoothing": uniform(0.0, 0.1)}


def write_experiment(path: Path, n_trials: int, *, max_epochs: int = 6, seed: int = 0,
                     metric: str = "val_acc", mode: str = "max") -> pd.DataFrame:
    """A finished experiment of ``n_trials`` in ``path``; returns its results.csv table.

    Final val_acc peaks at lr = 10**-1.5; ASHA stops most trials after 1, 2 or 4 epochs; about
    2% errored before their first epoch (no result.json) and 2% hit a non-finite loss. Some
    result.json files repeat an epoch (a retried trial: the last report counts) or end in a
    line cut short by a crash, as Ray's can."""
    rng = np.random.default_rng(seed)
    space = SearchSpace(SPACE)
    path.mkdir(parents=True, exist_ok=True)
    RunSettings(space=space.to_dict(), searcher="random", scheduler="asha",
                num_samples=n_trials, max_epochs=max_epochs, metric=metric,
                mode=mode).save(str(path))
    rungs = [e for e in (1, 2, 4) if e < max_epochs] + [max_epochs]
    rung_p = np.array([0.5, 0.25, 0.13, 0.12][-len(rungs):])
    start = 1_800_000_000
    rows = []
    for i in range(n_trials):
        tid = f"5ca1e_{i:05d}"
        config = {**space.fixed, **sample(space, rng)}
        skill = 0.1 + 0.85 * math.exp(-((math.log10(config["lr"]) + 1.5) / 1.2) ** 2)
        fate = rng.random()
        status, reason = "early_stopped", "asha_stopped"
        epochs = int(rng.choice(rungs, p=rung_p / rung_p.sum()))
        if epochs == max_epochs:
            status, reason = "completed", "completed"
        if fate < 0.02:
            status, reason, epochs = "errored", "error", 0
        elif fate < 0.04:
            status, reason = "non_finite", "non_finite_loss"
        t0, lines, val = start + i // 2 * 3, [], math.nan
        for e in range(1, epochs + 1):
            val = skill * (1 - math.exp(-e / 1.5)) + rng.normal(0, 0.01)
            if status == "non_finite" and e == epochs:
                val = 0.1
            rec = {"train_loss": 2.3 - 2 * val, "train_acc": val + 0.02, "images_per_s": 900.0,
                   "epoch": e, "val_loss": 2.3 - 2 * val, metric: val, "lr": config["lr"],
                   "precision": "fp32", "epoch_time_s": 0.4, "device": "cpu",
                   "timestamp": t0 + e, "training_iteration": e, "trial_id": tid,
                   "time_this_iter_s": 0.41, "time_total_s": 0.41 * e,
                   "done": e == epochs, "hostname": "vm", "config": config}
            if e == epochs and status != "early_stopped":
                rec["stop_reason"] = reason
            lines.append(json.dumps(rec))
        if epochs and i % 97 == 3:  # a retried first epoch: its first report is superseded
            lines.insert(0, json.dumps({**json.loads(lines[0]), metric: 0.0}))
        if epochs and i % 89 == 5:
            lines.append(lines[-1][:40])  # a line cut short by a crash
        trial_dir = path / f"trial_{tid}"
        trial_dir.mkdir(exist_ok=True)
        if epochs:
            (trial_dir / "result.json").write_text("".join(ln + "\n" for ln in lines))
        row = {"trial_id": tid, "status": status, "stop_reason": reason, "epochs_run": epochs}
        row.update({k: v for k, v in config.items() if k in KNOBS})
        row.update({k: math.nan for k in METRIC_COLUMNS})
        if epochs:
            row.update({metric: val, "val_loss": 2.3 - 2 * val, "train_acc": val + 0.02,
                        "train_loss": 2.3 - 2 * val, "images_per_s": 900.0})
        if status == "completed":
            row["test_acc"] = val - 0.005
        row["time_total_s"] = 0.41 * epochs if epochs else math.nan
        row["error"] = "RuntimeError: out of memory" if status == "errored" else ""
        row["config"] = config
        rows.append(row)
    df = pd.DataFrame(rows)
    best = pick_best(df, metric, mode)
    configs = df.pop("config")
    df.to_csv(path / RESULTS_CSV, index=False)
    recipe = Recipe.from_dict({k: v for k, v in configs[best.name].items() if v is not None})
    recipe.to_yaml(path / BEST_RECIPE)
    counts = df["status"].value_counts()
    summary = {"best_trial": best["trial_id"], "best_val_acc": best["val_acc"],
               "best_test_acc": None if pd.isna(best["test_acc"]) else best["test_acc"],
               "trials": n_trials,
               **{k: int(counts.get(k, 0)) for k in ("completed", "early_stopped",
                                                      "non_finite", "errored")},
               "total_trial_epochs": int(df["epochs_run"].sum()),
               "budget_trial_epochs": n_trials * max_epochs, "wall_time_s": n_trials * 1.5,
               "searcher": "random", "scheduler": "asha", "num_samples": n_trials,
               "max_epochs": max_epochs, "metric": metric, "mode": mode,
               "best_recipe": recipe.to_dict()}
    (path / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return pd.read_csv(path / RESULTS_CSV, dtype={"trial_id": str})


N_TRIALS = 1000
# The page's weight is its images: PNGs (and the SVG's one raster of faint lines) whose size
# depends on their pixels, not on how many trials they draw; the table stops at TABLE_ROWS rows
# and only the top TOP_K lines are vectors. Measured ~0.9 MB at 1,000 and 2,000 trials (before
# the faded drawing: 2.1 MB and 3.3 MB, a line per trial as SVG paths and a 1,000-row table).
MAX_PAGE_BYTES = 1_500_000


def expected_ranking(trials: pd.DataFrame, best: str) -> list[str]:
    """Written independently of the report: best first, then by val_acc (max), ties by
    val_loss (min); errored, non-finite and infeasible trials after every other."""
    ok = trials["val_acc"].notna() & ~trials["status"].isin(UNRANKED)
    by_acc = trials[ok].sort_values(["val_acc", "val_loss"], ascending=[False, True],
                                    kind="stable")
    ids = [*by_acc["trial_id"],
           *trials.loc[~ok, "trial_id"]]
    return [best, *(t for t in ids if t != best)]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, str]:
    """A 1,000-trial experiment and its report page: (folder, results.csv, index.html text)."""
    path = tmp_path_factory.mktemp("scale") / "exp"
    trials = write_experiment(path, N_TRIALS)
    index = Path(write_report(path))
    return path, trials, index.read_text()


@pytest.mark.slow
def test_the_table_lists_the_top_trials_and_says_how_many_are_hidden(big):
    path, trials, page = big
    best = json.loads((path / SUMMARY).read_text())["best_trial"]
    ranked = expected_ranking(trials, best)
    table = page[page.index('<table id="trials"'):page.index("</table>",
                                                            page.index('<table id="trials"'))]
    rows = re.findall(r'<tr data-trial="([^"]+)"', table)
    assert rows == ranked[:TABLE_ROWS]
    assert not set(rows) & set(trials.loc[trials["status"] == "errored", "trial_id"])
    hidden = re.findall(r'<p class="note" id="trials-hidden">([^<]*)</p>', page)
    assert hidden == [f"The top {TABLE_ROWS} of {N_TRIALS} trials; {N_TRIALS - TABLE_ROWS} "
                      f"hidden: every trial is in {path}/results.csv."]


@pytest.mark.slow
def test_the_page_draws_the_top_trials_and_stays_light(big):
    path, trials, page = big
    best = json.loads((path / SUMMARY).read_text())["best_trial"]
    top = expected_ranking(trials, best)[:TOP_K]
    svg = page[page.index("<svg"):page.index("</svg>")]
    assert sorted(re.findall(r'<g id="trial-([^"]+)"', svg)) == sorted(top)  # hover targets
    assert svg.count("<image") == 1  # every other trial: one raster of faint lines
    assert len(page.encode()) < MAX_PAGE_BYTES, len(page.encode())
    assert "hover a coloured row" in page


@pytest.mark.slow
def test_the_plots_draw_the_top_k_in_colour_over_the_faint_rest(big):
    path, trials, _ = big
    exp = load_experiment(path)
    rank = rank_trials(exp)
    figs = figures(exp, knob_importance(exp.trials, exp.tuned, "val_acc"), None, rank)
    best = exp.summary["best_trial"]
    top = expected_ranking(trials, best)[:TOP_K]
    drawn = (trials["epochs_run"] > 0).sum()  # errored before their first epoch: no curve
    ran = trials["val_acc"].notna().sum()
    for stem, n_lines in (("learning_curves", drawn), ("parallel_coordinates", ran)):
        ax = figs[stem].axes[0]
        lines = {ln.get_gid().removeprefix("trial-"): ln for ln in ax.lines
                 if (ln.get_gid() or "").startswith("trial-")}
        assert sorted(lines) == sorted(top), stem
        assert lines[best].get_color() == "black" and lines[best].get_linewidth() == 3
        assert lines[best].get_zorder() > max(ln.get_zorder() for t, ln in lines.items()
                                              if t != best)
        others = {to_hex(ln.get_color()) for t, ln in lines.items() if t != best}
        assert len(others) == TOP_K - 1 and FADED not in others, stem  # each its own colour
        (faint,) = ax.collections
        assert len(faint.get_segments()) == n_lines - TOP_K, stem
        assert faint.get_alpha() < 1 and faint.get_rasterized(), stem
        assert {to_hex(c) for c in faint.get_colors()} == {FADED}
        assert max(faint.get_linewidths()) < min(ln.get_linewidth() for ln in lines.values())
        assert ax.get_legend().get_texts()[0].get_text() == f"{best} (best)"


@pytest.mark.slow
def test_reading_result_json_keeps_the_last_report_of_an_epoch(big):
    path, trials, _ = big
    exp = load_experiment(path)
    for t, epochs in zip(trials["trial_id"], trials["epochs_run"], strict=True):
        curve = exp.curves[t]
        assert list(curve["epoch"]) == list(range(1, epochs + 1)), t
        if epochs:  # a retried epoch reported 0.0 first; a line cut short is skipped
            assert curve["val_acc"].iloc[-1] == pytest.approx(
                trials.loc[trials["trial_id"] == t, "val_acc"].item()), t
            assert (curve["val_acc"] > 0).all() and curve.index.tolist() == list(range(epochs))
    retried = trials["trial_id"].iloc[3]
    assert (path / f"trial_{retried}" / "result.json").read_text().count('"epoch": 1,') == 2


@pytest.mark.parametrize(("n", "faded"), [(MANY_TRIALS, False), (MANY_TRIALS + 1, True)])
def test_up_to_the_threshold_every_trial_keeps_its_own_colour(tmp_path, n, faded):
    write_experiment(tmp_path / "exp", n, seed=1)
    exp = load_experiment(tmp_path / "exp")
    rank = rank_trials(exp)
    figs = figures(exp, knob_importance(exp.trials, exp.tuned, "val_acc"), None, rank)
    curves = figs["learning_curves"].axes[0]
    coloured = [ln for ln in curves.lines if (ln.get_gid() or "").startswith("trial-")]
    drawn = sum(len(c) > 0 for c in exp.curves.values())
    assert len(coloured) == (TOP_K if faded else drawn)
    assert len(curves.collections) == faded
    parallel = figs["parallel_coordinates"]
    assert (len(parallel.axes) == 1) == faded  # few trials: coloured by the metric, colorbar
    assert rank.ids[0] == exp.summary["best_trial"] and len(rank.ids) == n


def test_errored_non_finite_and_infeasible_trials_rank_last(tmp_path):
    """Their metric does not rank them: here an infeasible trial keeps the second-best val_acc."""
    write_experiment(tmp_path / "exp", 40, seed=2)
    exp = load_experiment(tmp_path / "exp")
    best = exp.summary["best_trial"]
    runner_up = exp.trials[exp.trials["trial_id"] != best]["val_acc"].idxmax()
    exp.trials.loc[runner_up, "status"] = "infeasible"
    ids = rank_trials(exp).ids
    status = exp.trials.set_index("trial_id").loc[ids, "status"]
    unranked = status.isin(["errored", "non_finite", "infeasible"]).to_numpy()
    n = int(unranked.sum())
    assert n >= 2 and unranked[-n:].all() and not unranked[:-n].any(), list(status)
    assert ids[0] == best and exp.trials.loc[runner_up, "trial_id"] in ids[-n:]
