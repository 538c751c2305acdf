"""The Pareto front of a finished multi-objective run (``RunSettings.objectives``).

Written beside results.csv:

- ``pareto.csv``: the non-dominated trials among those that ended on their own (completed, or
  stopped by their own early stopping: a trial the scheduler cut short is not a finished recipe),
  best first by the first objective, with their objectives, knobs and trial ids;
- ``pareto/<trial_id>.yaml``: each front trial's resolved Recipe (``cnn-tuner train --recipe``
  runs it);
- summary.json's ``pareto_front`` (trial ids with their objective values) and ``hypervolume``
  of the front with its reference point (``pareto.default_reference``: 0 for an accuracy to
  maximise, else the worst value among the eligible trials widened by 10% of their range).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from trainables.recipe import Recipe
from tuner.running import storage
from tuner.running.pareto import Objective, default_reference, hypervolume, pareto_mask

PARETO_CSV, PARETO_DIR = "pareto.csv", "pareto"
ENDED_ON_THEIR_OWN = ("completed", "early_stopped")


def eligible(df: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """Trials that may be on the front: ended on their own, every objective a finite number."""
    if not len(df):
        return df
    metrics = [o.metric for o in objectives]
    ok = df["stop_reason"].isin(ENDED_ON_THEIR_OWN)
    for m in metrics:
        if m not in df.columns:
            return df.iloc[0:0]
        ok &= pd.to_numeric(df[m], errors="coerce").map(
            lambda v: v is not None and math.isfinite(v))
    return df[ok]


def values(df: pd.DataFrame, objectives: Sequence[Objective]) -> np.ndarray:
    return df[[o.metric for o in objectives]].to_numpy(dtype=float).reshape(len(df),
                                                                            len(objectives))


def front(df: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """The non-dominated eligible trials, best first by the first objective."""
    pool = eligible(df, objectives)
    if not len(pool):
        return pool
    on_front = pool[pareto_mask(values(pool, objectives), objectives)]
    first = objectives[0]
    return on_front.sort_values([first.metric, "trial_id"],
                                ascending=[first.mode == "min", True])


def write_front(df: pd.DataFrame, objectives: Sequence[Objective], path: str,
                recipe_of: Callable[[pd.Series], Recipe]) -> dict[str, Any]:
    """Write pareto.csv and pareto/<trial>.yaml into the experiment folder; return summary.json's
    ``pareto_front`` and ``hypervolume``."""
    rows = front(df, objectives)
    metrics = [o.metric for o in objectives]
    lead = ["trial_id", *metrics, "test_acc", "status", "epochs_run"]
    table = rows[[c for c in dict.fromkeys(lead) if c in rows.columns]
                 + [c for c in rows.columns if c not in lead and c != "path"]]
    storage.write_text(storage.join(path, PARETO_CSV), table.to_csv(index=False))
    for _, row in rows.iterrows():
        storage.write_text(storage.join(storage.join(path, PARETO_DIR), f"{row['trial_id']}.yaml"),
                           recipe_of(row).to_yaml())
    pool = eligible(df, objectives)
    reference = default_reference(values(pool, objectives), objectives) if len(pool) else None
    volume = hypervolume(values(rows, objectives), objectives, reference) if len(rows) else 0.0
    return {
        "objectives": [o.text for o in objectives],
        "pareto_front": [{"trial_id": str(r["trial_id"]), **{m: _plain(r[m]) for m in metrics}}
                         for _, r in rows.iterrows()],
        "hypervolume": {"value": float(volume),
                        "reference": None if reference is None else [float(v) for v in reference]},
    }


def read_front(path: str, summary: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    """pareto.csv of a finished multi-objective experiment and its objective metrics; a
    single-objective experiment is an error naming the folder."""
    import io

    from trainables.errors import ConfigError

    text = storage.read_text(storage.join(str(path), PARETO_CSV))
    if not summary.get("objectives") or text is None:
        raise ConfigError(f"no {PARETO_CSV}: not a multi-objective experiment (run with two or "
                          "more --objective)", where=str(path))
    try:
        rows = pd.read_csv(io.StringIO(text), dtype={"trial_id": str}) if text.strip() \
            else pd.DataFrame(columns=["trial_id"])
    except (ValueError, pd.errors.ParserError) as e:
        raise ConfigError(f"corrupt {PARETO_CSV} ({e})", where=str(path)) from None
    return rows, [t.rsplit(":", 1)[0] for t in summary["objectives"]]


def _plain(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v
    return None if isinstance(v, float) and math.isnan(v) else v
