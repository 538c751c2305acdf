"""A run in progress, read from its trial folders: a row per trial from its ``params.json`` and
the last complete line of its ``result.json``, its status from Ray's experiment state when
readable, and the summary the report needs before the run has written its own
(``tuner.analysis.watch`` serves the page built from them). A line still being written, or a
trial without a complete epoch yet, is skipped."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd

from tuner.running.settings import RunSettings

RESULT_FILE, PARAMS_FILE, ERROR_FILE = "result.json", "params.json", "error.txt"
LIVE = {"RUNNING": "running", "PENDING": "pending", "PAUSED": "paused"}  # Ray's unfinished states


def epoch_records(text: str, metric: str) -> list[dict]:
    """The epoch records of a ``result.json``; a line cut short (still being written, or by a
    crash) is skipped."""
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "epoch" in rec and metric in rec:
            out.append(rec)
    return out


def ray_statuses(folder: Path) -> dict[str, str]:
    """Trial id -> Ray's status (RUNNING, PAUSED, TERMINATED, ERROR...) from the newest
    ``experiment_state-*.json``; empty when there is none or it does not parse (Ray rewrites it
    as the run goes, and its format is Ray's)."""
    states = sorted(folder.glob("experiment_state-*.json"))
    try:
        data = json.loads(states[-1].read_text())["trial_data"]
        trials = [json.loads(t[0]) for t in data]
        return {str(t["trial_id"]): str(t["status"]) for t in trials}
    except (IndexError, KeyError, TypeError, ValueError, OSError):
        return {}


@dataclass
class LiveTrials:
    """A run in progress as the trial folders show it."""

    rows: pd.DataFrame  # results.csv's columns; unfinished trials: running, paused or pending
    started: int  # trial folders (with params.json), with or without an epoch yet
    wall_time_s: float  # first trial's start to the last epoch reported, by their timestamps


def live_trials(folder: Path, settings: RunSettings) -> LiveTrials:
    """The trials of a run in progress, from each folder's params.json and result.json and
    Ray's experiment state; a trial without a complete epoch is left out of the rows."""
    from tuner.running.results import trial_rows

    statuses = ray_statuses(folder)
    results, started, starts, ends = [], 0, [], []
    for d in sorted(p for p in folder.iterdir() if (p / PARAMS_FILE).is_file()):
        started += 1
        try:
            config = json.loads((d / PARAMS_FILE).read_text())
        except (ValueError, OSError):
            continue  # written as the trial starts: the next refresh reads it
        f = d / RESULT_FILE
        records = epoch_records(f.read_text(), settings.metric) if f.is_file() else []
        if not records or not isinstance(config, dict):
            continue
        first, last = records[0], records[-1]
        if isinstance(first.get("timestamp"), int | float):
            starts.append(first["timestamp"] - float(first.get("time_total_s") or 0))
            ends.append(float(last.get("timestamp") or first["timestamp"]))
        status = statuses.get(d.name.removeprefix("trial_"))
        error = None
        if status == "ERROR" or (status is None and (d / ERROR_FILE).is_file()):
            error = (d / ERROR_FILE).read_text() if (d / ERROR_FILE).is_file() else "errored"
        results.append((SimpleNamespace(metrics=last, error=error, config=config, path=str(d)),
                        status))
    df = trial_rows([r for r, _ in results], settings.scheduler)
    for i, (r, status) in enumerate(results):
        if r.error is None and r.metrics.get("stop_reason") is None and status != "TERMINATED":
            # Ray says it is not finished, or its state is not readable yet: still going
            df.loc[i, ["status", "stop_reason"]] = [LIVE.get(status or "", "running"), ""]
    return LiveTrials(df, started, max(ends) - min(starts) if starts else 0.0)


def live_summary(df: pd.DataFrame, settings: RunSettings) -> dict[str, Any]:
    """summary.json's fields the report reads, for the trials so far: the best trial among
    them (by the final rule, ``results.pick_best``), counts, trial-epochs, wall time so far
    (first epoch's start to the last report)."""
    from tuner.running.results import pick_best

    best = pick_best(df, settings.metric, settings.mode)
    counts = df["status"].value_counts().to_dict()
    return {
        "best_trial": None if best is None else best["trial_id"],
        "best_val_acc": None if best is None else _plain(best.get("val_acc")),
        "best_test_acc": None if best is None else _plain(best.get("test_acc")),
        "trials": len(df),
        **{k: 0 for k in ("completed", "early_stopped", "non_finite", "errored", "infeasible")},
        **{k: int(v) for k, v in counts.items()},  # running, paused... too
        "total_trial_epochs": int(df["epochs_run"].sum()),
        "budget_trial_epochs": len(df) * settings.max_epochs,
        "searcher": settings.searcher, "scheduler": settings.scheduler,
        "num_samples": settings.num_samples, "max_epochs": settings.max_epochs,
        "metric": settings.metric, "mode": settings.mode, "best_recipe": None,
    }


def _plain(v: Any) -> Any:
    return None if v is None or pd.isna(v) else float(v)
