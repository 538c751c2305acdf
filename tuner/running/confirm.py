"""Confirmation over seeds: is the search's best trial the best recipe, or a lucky seed?

A search ranks trials by one training each, so its winner is partly the luck of its seed.
``confirm`` retrains the top K recipes of a finished experiment with S new seeds each (all as
parallel Ray tasks with a trial's resources, ``tuner.running.repeats``) and ranks them by the
mean of the run's metric with a 95% Student-t interval.

Which trials: the ``candidates`` of ``pick_best`` (never errored or infeasible; those that ended
on their own when there are any), the best K by the run's metric and mode. Each recipe is
rebuilt from its knob columns in results.csv (an empty cell is an inactive conditional knob).

Seeds: the first S non-negative integers that none of the K recipes was searched with (a search
without a tuned seed knob trained every trial with seed 0, so 1..S), the same for every recipe,
so recipes are compared seed by seed (paired) and no confirmation run repeats a search run.

Writes into the experiment folder (a path or URI): ``confirm.csv`` (a row per recipe, best by
mean first), ``confirm_runs.csv`` (a row per training), ``best_recipe.yaml`` (now the best by
mean) and a ``confirmed`` object in ``summary.json`` (``best_trial`` and its figures stay the
search's single-run best; ``best_recipe`` follows the file).
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from trainables.errors import ConfigError
from trainables.recipe import KNOBS, Recipe
from tuner.running import storage
from tuner.running.repeats import t_interval, train_all
from tuner.running.results import BEST_RECIPE, SUMMARY, best_first, candidates, load_results
from tuner.running.settings import check_confirm, check_resources

if TYPE_CHECKING:
    from tuner.running.results import TuneResult
    from tuner.running.settings import RunSettings

CONFIRM_CSV, CONFIRM_RUNS_CSV = "confirm.csv", "confirm_runs.csv"


@dataclass
class ConfirmResult:
    """What ``confirm`` found and wrote."""

    table: pd.DataFrame  # a row per recipe, best by mean first (confirm.csv)
    runs: pd.DataFrame  # a row per training (confirm_runs.csv)
    best_recipe: Recipe | None  # the best by mean; None when every training failed
    confirmed: dict[str, Any] | None  # summary.json's "confirmed" (None: nothing trained)
    summary: dict[str, Any]  # the whole summary.json as written
    path: str


def confirm_seeds(searched: Iterable[int], count: int) -> list[int]:
    """The first ``count`` non-negative integers not in ``searched`` (the recipes' own seeds)."""
    used, out, seed = set(searched), [], 0
    while len(out) < count:
        if seed not in used:
            out.append(seed)
        seed += 1
    return out


def trial_recipe(row: pd.Series) -> Recipe:
    """A trial's Recipe from its results.csv row: its knob columns, empty cells (inactive
    conditional knobs) dropped; a bool column with empty cells reads back as text."""
    values: dict[str, Any] = {}
    for name, spec in KNOBS.items():
        v = row.get(name)
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            continue
        if spec.type is bool and isinstance(v, str) and v in ("True", "False"):
            v = v == "True"
        values[name] = v
    with warnings.catch_warnings():  # shown once, when the space was validated
        warnings.simplefilter("ignore")
        return Recipe.from_dict(values, where=f"results.csv, trial {row['trial_id']}")


def top_trials(df: pd.DataFrame, metric: str, mode: str, top: int) -> pd.DataFrame:
    """The best ``top`` candidates by their single run, best first (ties broken as
    ``pick_best`` does)."""
    return best_first(candidates(df, metric), metric, mode).head(top)


def rank_recipes(runs: pd.DataFrame, top: pd.DataFrame, metric: str, mode: str,
                 knobs: list[str]) -> pd.DataFrame:
    """A row per recipe: its single-run metric and rank, the mean over the seeds with its 95%
    interval, the mean test accuracy, and the ``knobs`` that differ between the recipes;
    ranked by the mean (failed recipes last, ties by the single run)."""
    rows = []
    for single_rank, (_, trial) in enumerate(top.iterrows(), start=1):
        mine = runs[runs["trial_id"] == trial["trial_id"]]
        mean, lo, hi = t_interval(mine[metric])
        rows.append({"trial_id": trial["trial_id"], "single_run_rank": single_rank,
                     "metric": metric, "single_run": float(trial[metric]), "mean": mean,
                     "ci_low": lo, "ci_high": hi, "seeds": int(mine[metric].notna().sum()),
                     "failed": int(mine[metric].isna().sum()),
                     "test_acc_mean": float(mine["test_acc"].mean()),
                     **{k: trial[k] for k in knobs}})
    table = pd.DataFrame(rows)
    table = table.sort_values(["mean", "single_run_rank"], ascending=[mode == "min", True],
                              na_position="last", kind="stable").reset_index(drop=True)
    table.insert(1, "rank", range(1, len(table) + 1))
    return table


def _differing(recipes: dict[str, Recipe]) -> list[str]:
    dicts = [r.to_dict() for r in recipes.values()]
    return [k for k in KNOBS if k != "seed" and len({repr(d[k]) for d in dicts}) > 1]


def confirm(path: str | Path, *, top: int, seeds: int, cpus_per_trial: float = 1,
            gpus_per_trial: float = 0, address: str | None = None,
            log: Callable[[str], Any] | None = None) -> ConfirmResult:
    """Retrain the ``top`` best trials of the finished experiment at ``path`` with ``seeds``
    seeds each, rank them by the mean of the run's metric, and write the files listed in the
    module docstring. Everything is checked before Ray starts (ConfigError, one line)."""
    log = log or (lambda line: print(line, file=sys.stderr))
    check_confirm(top, seeds)
    check_resources(cpus_per_trial, gpus_per_trial)
    where = str(path) if storage.is_uri(str(path)) else str(Path(path).expanduser().resolve())
    df, summary = load_results(where)
    metric, mode = summary.get("metric", "val_acc"), summary.get("mode", "max")
    chosen = top_trials(df, metric, mode, top)
    if not len(chosen):
        raise ConfigError("no trial to confirm: none ended with a result (all errored, "
                          "infeasible or without a metric)", where=where)
    if len(chosen) < top:
        log(f"confirm: only {len(chosen)} trial(s) can be confirmed (top asked {top})")
    recipes = {row["trial_id"]: trial_recipe(row) for _, row in chosen.iterrows()}
    for tid, r in recipes.items():
        if gpus_per_trial == 0:
            try:
                r.check_device("cpu")
            except ConfigError as e:
                raise ConfigError(f"trial {tid}: {e} (give gpus_per_trial)") from None
    seed_list = confirm_seeds((r.seed for r in recipes.values()), seeds)
    jobs = [(tid, s, r.replace(seed=s)) for tid, r in recipes.items() for s in seed_list]
    metrics = tuple(dict.fromkeys((metric, "val_acc", "test_acc")))
    runs = train_all(jobs, label="trial_id", metrics=metrics, cpus=cpus_per_trial,
                     gpus=gpus_per_trial, address=address, log=log)
    table = rank_recipes(runs, chosen, metric, mode, _differing(recipes))
    storage.write_text(storage.join(where, CONFIRM_CSV), table.to_csv(index=False))
    storage.write_text(storage.join(where, CONFIRM_RUNS_CSV), runs.to_csv(index=False))
    best = table.iloc[0]
    if pd.isna(best["mean"]):
        log("confirm: every training failed (see confirm_runs.csv); best_recipe.yaml and "
            "summary.json are unchanged")
        return ConfirmResult(table, runs, None, None, summary, where)
    best_recipe = recipes[best["trial_id"]]
    single = str(chosen.iloc[0]["trial_id"])
    confirmed = {
        "top": len(chosen), "seeds": seed_list, "metric": metric, "mode": mode,
        "best_trial_by_mean": str(best["trial_id"]), "single_run_best_trial": single,
        "winner_changed": str(best["trial_id"]) != single,
        **{k: _plain(best[k]) for k in ("mean", "ci_low", "ci_high", "test_acc_mean")},
        "failed_runs": int(runs[metric].isna().sum()),
    }
    summary = {**summary, "best_recipe": best_recipe.to_dict(), "confirmed": confirmed}
    storage.write_text(storage.join(where, BEST_RECIPE), best_recipe.to_yaml())
    storage.write_text(storage.join(where, SUMMARY), json.dumps(summary, indent=2) + "\n")
    return ConfirmResult(table, runs, best_recipe, confirmed, summary, where)


def _plain(v: Any) -> float | None:
    return None if pd.isna(v) else float(v)


def confirm_run(result: TuneResult, settings: RunSettings, address: str | None,
                verbose: int) -> TuneResult:
    """After a search (``tune`` / ``resume``): confirm it when its settings ask, with the run's
    resources; the result then carries the best recipe by mean and the updated summary.
    Progress lines go to stderr unless ``verbose`` is 0."""
    def log(line: str) -> None:
        if verbose:
            print(line, file=sys.stderr, flush=True)

    if settings.confirm_top is None:
        return result
    if result.best_recipe is None:
        log("confirm: no trial produced a result; nothing to confirm")
        return result
    done = confirm(result.path, top=settings.confirm_top, seeds=settings.confirm_seeds,
                   cpus_per_trial=settings.cpus_per_trial,
                   gpus_per_trial=settings.gpus_per_trial, address=address, log=log)
    if done.best_recipe is None:
        return result
    return dataclasses.replace(result, best_recipe=done.best_recipe, summary=done.summary)


def load_confirm(path: str | Path) -> pd.DataFrame | None:
    """confirm.csv of an experiment folder (a path or URI), or None when there is none."""
    text = storage.read_text(storage.join(str(path), CONFIRM_CSV))
    return None if text is None else pd.read_csv(io.StringIO(text), dtype={"trial_id": str})
