"""Knob importance: how much of the metric's variance across trials each tuned knob explains.

A random forest is fitted to the trial table (tuned knobs -> final metric), and each knob's
importance is its share of the forest's total variance reduction (mean decrease in impurity),
the method of Optuna's ``MeanDecreaseImpurityImportanceEvaluator`` and close in spirit to
fANOVA. Categorical knobs are one-hot encoded and their columns summed back into the knob;
an inactive conditional knob (absent from a trial's config) is a missing value, which
scikit-learn's trees route on their own. A strategy family's importance is the sum over its knobs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor

from trainables.recipe import KNOBS

# Below this many trials the forest fits mostly noise: the report says so.
FEW_TRIALS = 8
N_TREES = 256


@dataclass
class Importance:
    """Per-knob and per-family importance (each sums to 1 when ``ok``), and why not otherwise."""

    knobs: pd.DataFrame  # columns: knob, family, importance, values (distinct values seen)
    families: pd.DataFrame  # columns: family, importance, knobs
    n_trials: int
    note: str

    @property
    def ok(self) -> bool:
        return len(self.knobs) > 0 and self.knobs["importance"].notna().all()


def _encode(df: pd.DataFrame, knobs: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Feature matrix (numbers, NaN = inactive) and, per column, the knob it came from."""
    columns, owners = [], []
    for knob in knobs:
        col = df[knob]
        if KNOBS[knob].type in (int, float):
            columns.append(pd.to_numeric(col, errors="coerce").rename(knob))
            owners.append(knob)
        else:  # str / bool: one column per value; missing stays missing
            dummies = pd.get_dummies(col.astype("string"), prefix=knob, dtype=float)
            dummies.loc[col.isna().to_numpy(), :] = np.nan
            columns.extend(dummies[c] for c in dummies.columns)
            owners.extend([knob] * dummies.shape[1])
    return pd.concat(columns, axis=1), owners


def knob_importance(df: pd.DataFrame, knobs: list[str], metric: str,
                    seed: int = 0) -> Importance:
    """Importance of ``knobs`` for ``metric`` over the trials in ``df`` that have a value."""
    knobs = [k for k in knobs if k in df.columns and k in KNOBS]
    values = pd.to_numeric(df[metric], errors="coerce") if metric in df else None
    rows = df[np.isfinite(values.to_numpy(dtype=float))] if values is not None else df.iloc[:0]
    n = len(rows)
    distinct = {k: int(rows[k].nunique(dropna=True)) for k in knobs}
    table = pd.DataFrame({"knob": knobs, "family": [KNOBS[k].family for k in knobs],
                          "importance": np.nan, "values": [distinct[k] for k in knobs]})
    varying = [k for k in knobs if distinct[k] > 1]
    y = rows[metric].astype(float).to_numpy() if n else np.array([])
    if not knobs:
        note = "the search space tunes no knob"
    elif n < 3:
        note = f"only {n} trial(s) with a {metric}: too few to estimate importance"
    elif not varying:
        note = "no tuned knob took more than one value in these trials"
    elif np.ptp(y) == 0:
        note = f"every trial has the same {metric}: nothing to explain"
    else:
        X, owners = _encode(rows, varying)
        forest = RandomForestRegressor(n_estimators=N_TREES, random_state=seed)
        forest.fit(X.to_numpy(dtype=float), y)
        per_knob = pd.Series(forest.feature_importances_, index=owners).groupby(level=0).sum()
        table["importance"] = [float(per_knob.get(k, 0.0)) for k in knobs]
        note = (f"{n} trials" + (f": fewer than {FEW_TRIALS}, so this ranking is only "
                                 "indicative" if n < FEW_TRIALS else ""))
    table = table.sort_values("importance", ascending=False, na_position="last",
                              kind="stable").reset_index(drop=True)
    families = (table.groupby("family", sort=False)
                .agg(importance=("importance", lambda s: s.sum(min_count=1)),
                     knobs=("knob", ", ".join))
                .reset_index()
                .sort_values("importance", ascending=False, na_position="last", kind="stable")
                .reset_index(drop=True))
    return Importance(knobs=table, families=families, n_trials=n, note=note)
