"""Warm start: seed a new run's searcher with the finished trials of an earlier experiment.

``load_warm_start(path, space, metric, mode)`` reads the earlier experiment's ``results.csv`` and
``summary.json`` (``tuner.running.results``; a path or a URI) and returns its usable trials as
flat knob configs of the NEW space with their metric values. The searchers that learn (``tpe``,
``optuna``: ``tuner.running.searchers``) add them as already evaluated: they are not run again
and do not count in ``num_samples``, and they count toward the searcher's random start-up, so
the first suggestions already use them.

What is used, and what is refused (one line each, starting ``warm_start:``):

- trials that ended on their own: ``completed`` or ``early_stopped`` (their own patience or the
  scheduler), with a finite metric. The reward is the trial's last reported metric, what the
  earlier searcher itself was told. Errored, non-finite and infeasible trials are left out; no
  usable trial at all is refused.
- the metric must be the one this run optimises (the rewards ARE that metric); ``mode`` may
  differ, since the values are raw metric values and each searcher applies its own mode.
- the dataset must be the same (a recipe's accuracy on another dataset says nothing here).
- each tuned knob of the new space, where active in a trial, must have that trial's value inside
  the new range or choices (same rules as the distribution draws: integer ends inclusive,
  qrandint on its grid). A knob the earlier trial did not set (no column, or empty because it
  was inactive there) ran at the Recipe's default, since knobs a space leaves out keep their
  defaults: that default is the value used, and checked like any other.
- the new space's inactive knobs are left out of each point; knobs of the earlier run that the
  new space does not tune are ignored (the new run's fixed values apply to its own trials only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from search_spaces import Choice, Grid, LogUniform, QRandInt, RandInt, SearchSpace, Uniform
from search_spaces.distributions import Distribution, _same
from trainables.errors import ConfigError
from trainables.recipe import KNOBS
from tuner.running.results import load_results

__all__ = ["USABLE_STATUSES", "WarmStart", "load_warm_start"]

USABLE_STATUSES = ("completed", "early_stopped")  # ended on their own: their metric is a result


@dataclass(frozen=True)
class WarmStart:
    """The earlier experiment's usable trials: ``points[i]`` (flat configs of the new space's
    active tuned knobs) scored ``rewards[i]`` (the metric, raw: not negated for ``mode``)."""

    path: str
    points: list[dict[str, Any]]
    rewards: list[float]
    trial_ids: list[str]

    def __len__(self) -> int:
        return len(self.points)


def _error(message: str) -> ConfigError:
    return ConfigError(f"warm_start: {message}")


def load_warm_start(path: str | Path, space: SearchSpace, metric: str,
                    mode: str) -> WarmStart:
    """The usable trials of the finished experiment at ``path`` as points of ``space`` (see the
    module docstring for the rules); ``ConfigError`` with one line otherwise. ``mode`` is this
    run's: the rewards are raw metric values whatever the earlier run's mode was."""
    del mode  # raw metric values: the searcher applies the run's mode itself
    where = str(path)
    if not space.tuned:
        raise _error("this space tunes no knob, so there is nothing for a searcher to learn")
    try:
        df, summary = load_results(where)
    except ConfigError as e:
        raise _error(str(e)) from None
    earlier = summary.get("metric")
    if earlier != metric:
        raise _error(f"{where} optimised metric {earlier!r}, this run optimises {metric!r}; "
                     "its trials' rewards would be another quantity (use the same metric)")
    if metric not in df.columns:
        raise _error(f"{where} has no {metric!r} column in its results")
    _check_dataset(df, space, where)
    usable = df[df["status"].isin(USABLE_STATUSES)]
    usable = usable[pd.to_numeric(usable[metric], errors="coerce").map(_finite)]
    if not len(usable):
        counts = ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items()) or "none"
        raise _error(f"{where} has no usable trial (completed or early_stopped with a finite "
                     f"{metric}); its trials: {counts}")
    points, rewards, ids = [], [], []
    for _, row in usable.iterrows():
        trial_id = str(row.get("trial_id", "?"))
        points.append(_point(row, space, trial_id))
        rewards.append(float(row[metric]))
        ids.append(trial_id)
    return WarmStart(path=where, points=points, rewards=rewards, trial_ids=ids)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _check_dataset(df: pd.DataFrame, space: SearchSpace, where: str) -> None:
    default = KNOBS["dataset"].default
    new = space.fixed.get("dataset", default)
    old = df["dataset"].dropna().unique().tolist() if "dataset" in df.columns else []
    old = old or [default]
    if old != [new]:
        raise _error(f"{where} tuned on dataset {', '.join(map(str, old))}, this run on {new}; "
                     "trials on another dataset say nothing about this one")


def _point(row: pd.Series, space: SearchSpace, trial_id: str) -> dict[str, Any]:
    """The trial's flat config over the new space's active tuned knobs (parents first)."""
    config = dict(space.fixed)
    point: dict[str, Any] = {}
    for knob, dist in space.tuned.items():
        if not space.is_active(knob, config):
            continue
        spec = KNOBS[knob]
        raw = row.get(knob) if knob in row.index else None
        try:
            value = spec.default if _missing(raw) else spec.coerce(_cell(raw, spec.type))
        except ConfigError as e:
            raise _error(f"trial {trial_id}: {e}") from None
        outside = _outside(dist, value)
        if outside:
            raise _error(f"knob {knob!r} of trial {trial_id} is {value!r}, {outside}")
        config[knob] = point[knob] = value
    return point


def _missing(raw: Any) -> bool:
    return raw is None or (isinstance(raw, float) and math.isnan(raw))


def _cell(raw: Any, kind: type) -> Any:
    """A results.csv cell as the knob's Python value (pandas gives numpy scalars, and text for
    a column of booleans with empty cells)."""
    if hasattr(raw, "item"):
        raw = raw.item()
    if kind is bool and isinstance(raw, str) and raw in ("True", "False"):
        return raw == "True"
    return raw


def _outside(dist: Distribution, value: Any) -> str | None:
    """Why ``value`` is not a value ``dist`` can draw, or None when it is."""
    if isinstance(dist, (Choice, Grid)):
        if any(_same(value, v) for v in dist.values):
            return None
        return f"not one of the new choices {list(dist.values)}"
    if isinstance(dist, (Uniform, LogUniform)):
        return None if dist.low <= value <= dist.high else \
            f"outside the new range [{dist.low:g}, {dist.high:g}]"
    if isinstance(dist, RandInt):  # QRandInt too
        if not dist.low <= value <= dist.high:
            return f"outside the new range [{dist.low}, {dist.high}]"
        q = getattr(dist, "q", 1)
        if isinstance(dist, QRandInt) and (value - dist.low) % q:
            return f"not on the new grid [{dist.low}, {dist.high}] step {q}"
        return None
    raise AssertionError(f"no range check for {dist!r}")
