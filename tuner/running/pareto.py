"""Several objectives at once: parse them, sort trials into Pareto fronts, measure a front.

An objective is a metric with a direction, written ``METRIC:MODE`` (``val_acc:max``,
``latency_ms:min``); a run has 2 or 3 of them. Conventions of every function here:

- ``values`` is an (n, k) array: one row per trial, one column per objective, in the order of
  ``objectives`` and in the metrics' own units and directions (accuracy as reported, not negated).
- Internally everything is turned "smaller is better" (``to_minimise`` negates max-objectives).
  Row a *dominates* row b when a is no worse in every objective and better in at least one.
- A row with a NaN in any objective cannot be compared: it is left out of every front, of
  ``rank_order`` and of ``pareto_mask`` (False) and adds nothing to a hypervolume. Infinities
  are ordinary (very bad or very good) values.
- The hypervolume is the volume dominated by the points and bounded by a reference point,
  in the objectives' own units (``default_reference`` gives the documented default).

Pure numpy: no Ray, no torch. Exact and O(n^2) in memory and time for the sort, which is fine
for the few thousand trials of a tuning run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trainables.errors import ConfigError, did_you_mean

__all__ = ["MODES", "OBJECTIVE_METRICS", "Objective", "crowding_distance", "default_reference",
           "hypervolume", "hypervolume_curve", "non_dominated_sort", "parse_objectives",
           "pareto_mask", "rank_order", "to_minimise"]

OBJECTIVE_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss", "images_per_s", "params",
                     "params_trainable", "flops", "latency_ms", "train_time_s")
MODES = ("max", "min")
COUNTS = (2, 3)  # how many objectives a run may have


def _problem(metric: str, mode: str, text: str) -> str | None:
    """What is wrong with one objective (the one-line message), or None."""
    if metric not in OBJECTIVE_METRICS:
        return (f"objectives: unknown metric {metric!r} in {text!r}; valid: "
                f"{', '.join(OBJECTIVE_METRICS)}{did_you_mean(metric, OBJECTIVE_METRICS)}")
    if mode not in MODES:
        return f"objectives: mode must be max or min in {text!r}"
    return None


@dataclass(frozen=True)
class Objective:
    """One objective: Objective('val_acc', 'max'), written ``val_acc:max``."""

    metric: str
    mode: str  # "max" | "min"

    def __post_init__(self) -> None:
        problem = _problem(self.metric, self.mode, self.text)
        if problem:
            raise ConfigError(problem)

    @property
    def text(self) -> str:
        return f"{self.metric}:{self.mode}"


def parse_objectives(texts: Sequence[str]) -> tuple[Objective, ...]:
    """2 or 3 ``METRIC:MODE`` texts, each metric once; a one-line ConfigError otherwise."""
    if isinstance(texts, str):
        texts = (texts,)
    out: list[Objective] = []
    for text in texts:
        if not isinstance(text, str) or text.count(":") != 1:
            raise ConfigError(f"objectives: {text!r} is not METRIC:MODE (e.g. 'val_acc:max', "
                              "'latency_ms:min')")
        metric, mode = (part.strip() for part in text.split(":"))
        problem = _problem(metric, mode, text)
        if problem:
            raise ConfigError(problem)
        out.append(Objective(metric, mode))
    if len(out) not in COUNTS:
        raise ConfigError(f"objectives: give 2 or 3 objectives, got {len(out)}")
    seen: set[str] = set()
    for o in out:
        if o.metric in seen:
            raise ConfigError(f"objectives: {o.metric!r} given twice")
        seen.add(o.metric)
    return tuple(out)


def _matrix(values: np.ndarray, objectives: Sequence[Objective]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    k = len(objectives)
    if array.size == 0:
        return array.reshape(0, k)
    if array.ndim != 2 or array.shape[1] != k:
        raise ValueError(f"values: expected an (n, {k}) array for {k} objectives, got shape "
                         f"{array.shape}")
    return array


def to_minimise(values: np.ndarray, objectives: Sequence[Objective]) -> np.ndarray:
    """A copy of ``values`` with max-objectives negated: smaller is better in every column."""
    signs = np.array([-1.0 if o.mode == "max" else 1.0 for o in objectives])
    return _matrix(values, objectives) * signs


def non_dominated_sort(values: np.ndarray, objectives: Sequence[Objective]) -> list[np.ndarray]:
    """The Pareto fronts as arrays of row indices (ascending), front 0 (non-dominated) first.
    NaN rows are in no front."""
    m = to_minimise(values, objectives)
    rows = np.flatnonzero(~np.isnan(m).any(axis=1))
    sub = m[rows]
    # dominates[i, j]: row i dominates row j
    dominates = ((sub[:, None, :] <= sub[None, :, :]).all(axis=2)
                 & (sub[:, None, :] < sub[None, :, :]).any(axis=2))
    beaten_by = dominates.sum(axis=0)
    left = np.ones(len(rows), dtype=bool)
    fronts = []
    while left.any():
        current = left & (beaten_by == 0)
        fronts.append(rows[current])
        left &= ~current
        beaten_by -= dominates[current].sum(axis=0)
    return fronts


def crowding_distance(values: np.ndarray, objectives: Sequence[Objective]) -> np.ndarray:
    """NSGA-II crowding distance of each row of ONE front: per objective, the gap between its
    two neighbours over the objective's range, summed; the extreme rows of each objective get
    inf, and so does every row of a front of 1 or 2. An objective whose range in the front is 0
    (or not finite) separates nothing and adds nothing."""
    m = to_minimise(values, objectives)
    n = len(m)
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for column in m.T:
        order = np.argsort(column, kind="stable")
        ranked = column[order]
        span = ranked[-1] - ranked[0]
        if not (np.isfinite(span) and span > 0):
            continue
        distance[order[0]] = distance[order[-1]] = np.inf
        distance[order[1:-1]] += (ranked[2:] - ranked[:-2]) / span
    return distance


def rank_order(values: np.ndarray, objectives: Sequence[Objective]) -> np.ndarray:
    """Every non-NaN row index, best first: by front, then crowding distance (larger first),
    then row index (smaller first)."""
    m = _matrix(values, objectives)
    out = []
    for front in non_dominated_sort(m, objectives):
        crowd = crowding_distance(m[front], objectives)
        out.append(front[np.lexsort((front, -crowd))])
    return np.concatenate(out) if out else np.zeros(0, dtype=int)


def pareto_mask(values: np.ndarray, objectives: Sequence[Objective]) -> np.ndarray:
    """True for the rows on the Pareto front (front 0); False for dominated and NaN rows."""
    m = _matrix(values, objectives)
    mask = np.zeros(len(m), dtype=bool)
    fronts = non_dominated_sort(m, objectives)
    if fronts:
        mask[fronts[0]] = True
    return mask


def _hv2(points: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by minimisation points (all strictly inside ``ref``): sweep along x."""
    if not len(points):
        return 0.0
    points = points[np.lexsort((points[:, 1], points[:, 0]))]
    best_y = np.minimum.accumulate(points[:, 1])
    widths = np.diff(np.append(points[:, 0], ref[0]))
    return float(np.sum(widths * (ref[1] - best_y)))


def _hv(points: np.ndarray, ref: np.ndarray) -> float:
    if not len(points):
        return 0.0
    if points.shape[1] == 1:
        return float(ref[0] - points[:, 0].min())
    if points.shape[1] == 2:
        return _hv2(points, ref)
    # 3-D: slabs between consecutive z values, each the 2-D area of the points below it
    points = points[np.argsort(points[:, 2], kind="stable")]
    heights = np.diff(np.append(points[:, 2], ref[2]))
    return float(sum(h * _hv2(points[:i + 1, :2], ref[:2])
                     for i, h in enumerate(heights) if h > 0))


def _inside(values: np.ndarray, objectives: Sequence[Objective],
            reference: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The minimisation points strictly better than the reference in every objective, and the
    reference in minimisation form."""
    if len(reference) != len(objectives):
        raise ValueError(f"reference: one value per objective ({len(objectives)}), got "
                         f"{list(reference)}")
    ref = to_minimise(np.asarray([reference], dtype=float), objectives)[0]
    m = to_minimise(values, objectives)
    keep = ~np.isnan(m).any(axis=1) & (m < ref).all(axis=1)
    return m[keep], ref


def hypervolume(values: np.ndarray, objectives: Sequence[Objective],
                reference: Sequence[float]) -> float:
    """Exact volume dominated by the rows and bounded by ``reference`` (in the objectives' own
    units and directions, e.g. (0.0, 1e6) for (val_acc:max, params:min)); a row not strictly
    better than the reference in every objective adds nothing. For 1-3 objectives."""
    if len(objectives) > 3:
        raise ValueError(f"hypervolume: 1 to 3 objectives, got {len(objectives)}")
    points, ref = _inside(values, objectives, reference)
    return _hv(points, ref)


def default_reference(values: np.ndarray, objectives: Sequence[Objective]) -> tuple[float, ...]:
    """A reference point every observed row is better than (or equal to, for accuracy), per
    objective: an accuracy (``*_acc``) that is maximised: 0.0; minimised: 1.0; any other
    metric: its worst observed value widened by 10% of its observed range, or by 10% of its
    |value| when the range is 0, or by 1.0 when that is 0 too. NaN values are ignored; a metric
    with no finite value is a ValueError."""
    m = to_minimise(values, objectives)
    out = []
    for o, column in zip(objectives, m.T, strict=True):
        if o.metric.endswith("_acc"):
            out.append(0.0 if o.mode == "max" else 1.0)
            continue
        seen = column[np.isfinite(column)]
        if not len(seen):
            raise ValueError(f"default_reference: no finite value of {o.metric}")
        worst, span = float(seen.max()), float(seen.max() - seen.min())
        widen = 0.1 * span or 0.1 * abs(worst) or 1.0
        ref = worst + widen  # in minimisation form
        out.append(-ref if o.mode == "max" else ref)
    return tuple(out)


def hypervolume_curve(points: Sequence[tuple[float, Sequence[float]]],
                      objectives: Sequence[Objective],
                      reference: Sequence[float]) -> list[tuple[float, float]]:
    """(x, hypervolume of every vector up to and including this one) for each (x, vector) of
    ``points``, in the order given (x: e.g. the cumulative trial-epochs when a trial finished).
    Non-decreasing by construction; only the running front is kept, so it stays cheap."""
    k = len(objectives)
    front = np.zeros((0, k))
    volume, out = 0.0, []
    for x, vector in points:
        new, ref = _inside(np.asarray([vector], dtype=float).reshape(1, k), objectives,
                           reference)
        if len(new) and not ((front <= new[0]).all(axis=1)).any():  # adds volume
            keep = ~((new[0] <= front).all(axis=1))  # drop rows the new one dominates/equals
            front = np.vstack([front[keep], new])
            volume = _hv(front, ref)
        out.append((float(x), volume))
    return out
