"""Results of a tuning run: one row per trial, the best recipe, and the files written at the end.

``results.csv``: a row per trial (knobs, final metrics, cost metrics, ``epochs_run``,
``status``);
``best_recipe.yaml``: the best trial's resolved Recipe (``cnn-tuner train --recipe`` reproduces
it); ``summary.json``: the best trial, its val_acc and test_acc, trial counts, trial-epochs and
wall time.

A trial's ``status`` is completed (ran all its epochs), early_stopped (its own patience, or the
scheduler such as ASHA stopped it: see ``stop_reason``), non_finite (loss became NaN/inf),
infeasible (broke a constraint: see ``broken_constraint``; never the best trial, and its metric
column holds the worst value it told the searcher) or errored (raised; see ``error``).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from trainables.constraints import INFEASIBLE
from trainables.cost import COST_KEYS
from trainables.errors import ConfigError, last_line
from trainables.recipe import KNOBS, Recipe
from tuner.running import storage

if TYPE_CHECKING:
    from tuner.running.settings import RunSettings

METRIC_COLUMNS = ("val_acc", "val_loss", "train_acc", "train_loss", "test_acc",
                  "images_per_s", "world_size")  # world_size: workers of a data-parallel trial
COST_COLUMNS = (*COST_KEYS, "train_time_s")  # measured by every trial (trainables.cost)
RESULTS_CSV, BEST_RECIPE, SUMMARY = "results.csv", "best_recipe.yaml", "summary.json"
STATUSES = ("completed", "early_stopped", "non_finite", "infeasible", "errored")


@dataclass
class TuneResult:
    """What `tuner.tune` returns."""

    dataframe: pd.DataFrame
    best_recipe: Recipe | None
    best_metrics: dict[str, Any]
    summary: dict[str, Any]
    path: str


def _status(metrics: dict[str, Any], error: Any, scheduler: str) -> tuple[str, str]:
    if error is not None:
        return "errored", "error"
    reason = metrics.get("stop_reason")
    if reason == "completed":
        return "completed", reason
    if reason == "early_stopped":
        return "early_stopped", reason
    if reason == "non_finite_loss":
        return "non_finite", reason
    if reason == INFEASIBLE:
        return INFEASIBLE, reason
    return "early_stopped", f"{scheduler}_stopped"


def trial_rows(result_grid: Any, scheduler: str) -> pd.DataFrame:
    """One row per trial from a Ray ResultGrid."""
    rows = []
    for res in result_grid:
        metrics = dict(res.metrics or {})
        status, reason = _status(metrics, res.error, scheduler)
        # the trial folder names the trial (trial_<id>): a result cloned by PBT can carry another
        trial_id = Path(res.path).name.removeprefix("trial_") or metrics.get("trial_id")
        row: dict[str, Any] = {"trial_id": trial_id,
                               "status": status, "stop_reason": reason,
                               "epochs_run": int(metrics.get("epoch", 0) or 0)}
        row.update({k: v for k, v in (res.config or {}).items() if k in KNOBS})
        row.update({k: metrics.get(k, math.nan) for k in METRIC_COLUMNS})
        row.update({k: metrics.get(k, math.nan) for k in COST_COLUMNS})
        row["broken_constraint"] = metrics.get("broken_constraint", "")
        row["time_total_s"] = metrics.get("time_total_s", math.nan)
        row["error"] = last_line(res.error) if res.error is not None else ""
        row["path"] = res.path
        rows.append(row)
    return pd.DataFrame(rows)


def candidates(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The trials that may be the best: those that ended on their own (completed or their own
    early stopping), so `cnn-tuner train` with their recipe reproduces them; else all that ran.
    Never an errored or infeasible trial, nor one without ``metric``."""
    ran = df[~df["status"].isin(["errored", INFEASIBLE])].dropna(subset=[metric]) \
        if len(df) else df
    finished = ran[ran["stop_reason"].isin(["completed", "early_stopped"])]
    return finished if len(finished) else ran


def tie_break(metric: str) -> tuple[str, str] | None:
    """The column, and its mode, that orders trials tied on ``metric``: an accuracy's loss
    (lower first), a loss's accuracy (higher first). On 144 validation images val_acc ties
    often (one image is 0.7 points), and the evaluation loss is the plain cross-entropy
    (no label smoothing), so it compares trials' confidence on the same images."""
    for ours, other, mode in (("_acc", "_loss", "min"), ("_loss", "_acc", "max")):
        if metric.endswith(ours):
            return metric.removesuffix(ours) + other, mode
    return None


def best_first(df: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """``df`` sorted best first by ``metric`` and ``mode``, ties by ``tie_break(metric)``, then
    in table order; rows without ``metric`` last."""
    keys, ascending = [metric], [mode == "min"]
    tb = tie_break(metric)
    if tb is not None and tb[0] in df.columns:
        keys.append(tb[0])
        ascending.append(tb[1] == "min")
    return df.sort_values(keys, ascending=ascending, kind="stable", na_position="last")


def pick_best(df: pd.DataFrame, metric: str, mode: str) -> pd.Series | None:
    """The best of the ``candidates`` by ``metric`` and ``mode``, ties broken as ``best_first``
    does; None when there are none."""
    pool = candidates(df, metric)
    if not len(pool):
        return None
    return best_first(pool, metric, mode).iloc[0]


def collect_results(result_grid: Any, settings: RunSettings, path: str,
                    wall_time_s: float) -> TuneResult:
    """Build the trial table, pick the best, write results.csv / best_recipe.yaml /
    summary.json into the experiment folder."""
    df = trial_rows(result_grid, settings.scheduler)
    configs = {r.path: r.config for r in result_grid}

    def recipe_of(row: pd.Series) -> Recipe:
        return Recipe.from_dict({k: v for k, v in configs[row["path"]].items()
                                 if k in KNOBS and v is not None})

    objectives = settings.objective_list
    multi: dict[str, Any] = {}
    if objectives:  # the best is the front's best by the first objective
        from tuner.running.front import front, write_front

        multi = write_front(df, objectives, path, recipe_of)
        on_front = front(df, objectives)
        best = pick_best(on_front if len(on_front) else df, settings.metric, settings.mode)
    else:
        best = pick_best(df, settings.metric, settings.mode)
    best_recipe, best_metrics = None, {}
    if best is not None:
        best_recipe = recipe_of(best)
        best_metrics = {k: _plain(best[k]) for k in ("trial_id", *METRIC_COLUMNS, "epochs_run",
                                                    "stop_reason")}
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    summary = {
        "best_trial": best_metrics.get("trial_id"),
        "best_val_acc": best_metrics.get("val_acc"),
        "best_test_acc": best_metrics.get("test_acc"),
        "trials": len(df),
        **{k: int(counts.get(k, 0)) for k in STATUSES},
        "total_trial_epochs": int(df["epochs_run"].sum()) if len(df) else 0,
        "budget_trial_epochs": len(df) * settings.max_epochs,
        "wall_time_s": round(wall_time_s, 2),
        "searcher": settings.searcher, "scheduler": settings.scheduler,
        "num_samples": settings.num_samples, "max_epochs": settings.max_epochs,
        "metric": settings.metric, "mode": settings.mode,
        "constraints": list(settings.constraints),
        **multi,
        "best_recipe": best_recipe.to_dict() if best_recipe else None,
    }
    table = df.drop(columns=["path"]).to_csv(index=False)
    storage.write_text(storage.join(path, RESULTS_CSV), table)
    if best_recipe is not None:
        storage.write_text(storage.join(path, BEST_RECIPE), best_recipe.to_yaml())
    storage.write_text(storage.join(path, SUMMARY), json.dumps(summary, indent=2) + "\n")
    return TuneResult(dataframe=df, best_recipe=best_recipe, best_metrics=best_metrics,
                      summary=summary, path=path)


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def load_results(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """results.csv and summary.json of a finished experiment folder (a path or a URI)."""
    csv = storage.read_text(storage.join(str(path), RESULTS_CSV))
    summary = storage.read_text(storage.join(str(path), SUMMARY))
    if csv is None or summary is None:
        raise ConfigError(f"no {RESULTS_CSV}/{SUMMARY} here: not a finished cnn-tuner "
                          "experiment (resume it with `cnn-tuner resume PATH`)", where=str(path))
    try:
        return (pd.read_csv(io.StringIO(csv), dtype={"trial_id": str}), json.loads(summary))
    except (ValueError, pd.errors.ParserError) as e:
        raise ConfigError(f"corrupt results file ({e})", where=str(path)) from None
