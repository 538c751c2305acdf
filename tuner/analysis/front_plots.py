"""The report's multi-objective figures: the Pareto front and hypervolume-so-far.

- ``front_figure``: the first objective against each other one (one panel per pair), every
  eligible trial grey, the front in colour joined by its staircase; each point is an SVG group
  named after its trial, and ``with_tooltips`` gives each a ``<title>`` (the browser shows it on
  hover) holding the trial's objectives and recipe.
- ``hypervolume_figure``: the front's hypervolume against cumulative trial-epochs, growing as
  trials that ended on their own finish (``tuner.running.front``'s eligibility and reference).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tuner.analysis.plots import _RC, _figure
from tuner.running.front import eligible, values
from tuner.running.pareto import Objective, hypervolume_curve, pareto_mask

SINGLE_POINTS = 400  # up to this many trials each point is its own SVG group (hover works)


def front_figure(trials: pd.DataFrame, objectives: Sequence[Objective]) -> Figure:
    """Objective 1 against objectives 2 (and 3): all eligible trials grey, the front coloured."""
    pool = eligible(trials, objectives).reset_index(drop=True)
    on_front = pareto_mask(values(pool, objectives), objectives) if len(pool) else np.array([])
    first, others = objectives[0], list(objectives[1:])
    fig = _figure(4.6 * len(others) + 0.6, 4.0)
    with matplotlib.rc_context(_RC):
        for i, other in enumerate(others):
            ax = fig.add_subplot(1, len(others), i + 1)
            if len(pool):
                single = len(pool) <= SINGLE_POINTS
                rest = pool[~on_front]
                if single:
                    for _, r in rest.iterrows():
                        ax.scatter([r[other.metric]], [r[first.metric]], s=18, color="0.65",
                                   gid=f"pt-{r['trial_id']}-{i}")
                else:
                    ax.scatter(rest[other.metric], rest[first.metric], s=8, color="0.7",
                               rasterized=True)
                front = pool[on_front].sort_values(other.metric)
                ax.step(front[other.metric], front[first.metric], where="post",
                        color="tab:red", lw=1, alpha=0.6)
                for _, r in front.iterrows():
                    ax.scatter([r[other.metric]], [r[first.metric]], s=36, color="tab:red",
                               edgecolor="black", linewidth=0.6, zorder=3,
                               gid=f"pt-{r['trial_id']}-{i}")
            if other.metric in ("params", "params_trainable", "flops"):
                ax.set_xscale("log")
            ax.set_xlabel(f"{other.metric} ({other.mode})")
            ax.set_ylabel(f"{first.metric} ({first.mode})")
        fig.suptitle(f"Pareto front: {int(on_front.sum()) if len(pool) else 0} of {len(pool)} "
                     "finished trials (red); hover a point for its recipe")
    return fig


def with_tooltips(svg: str, trials: pd.DataFrame, knobs: Sequence[str],
                  objectives: Sequence[Objective]) -> str:
    """``svg`` (``front_figure`` as SVG text) with a ``<title>`` in each trial's point group."""
    for _, r in trials.iterrows():
        parts = [f"trial {r['trial_id']}"]
        parts += [f"{o.metric} = {r[o.metric]:.6g}" for o in objectives
                  if pd.notna(r.get(o.metric))]
        parts += [f"{k}: {r[k]}" for k in knobs if k in r and pd.notna(r[k])]
        title = f"<title>{html.escape(chr(10).join(parts))}</title>"
        for i in range(len(objectives) - 1):
            tag = f'<g id="pt-{r["trial_id"]}-{i}">'
            svg = svg.replace(tag, tag + title, 1)
    return svg


def hypervolume_points(trials: pd.DataFrame, events: pd.DataFrame,
                       objectives: Sequence[Objective]) -> list[tuple[float, list[float]]]:
    """(cumulative trial-epochs when the trial's last epoch finished, its objectives) for each
    eligible trial, in that order. ``events``: every trial-epoch in the order it finished."""
    pool = eligible(trials, objectives)
    if not len(pool) or not len(events):
        return []
    last = {t: i + 1 for i, t in enumerate(events["trial_id"])}  # its last event wins
    out = [(float(last[t]), list(v)) for t, v in zip(pool["trial_id"],
                                                      values(pool, objectives), strict=True)
           if t in last]
    return sorted(out, key=lambda p: p[0])


def hypervolume_figure(points: list[tuple[float, list[float]]],
                       objectives: Sequence[Objective], reference: Sequence[float],
                       budget: int) -> Figure:
    """Hypervolume of the front so far against trial-epochs."""
    fig = _figure(9, 3.2)
    with matplotlib.rc_context(_RC):
        ax = fig.add_subplot()
        curve = hypervolume_curve(points, objectives, reference) if points else []
        if curve:
            x, hv = zip(*curve, strict=True)
            ax.step([0, *x], [0.0, *hv], where="post", color="tab:red", lw=2,
                    label="hypervolume of the front so far")
        if budget:
            ax.axvline(budget, color="grey", ls="--", lw=1.5,
                       label=f"budget (num_samples x max_epochs): {budget}")
        ref = ", ".join(f"{o.metric} {v:.4g}" for o, v in zip(objectives, reference, strict=True))
        ax.set_xlabel("cumulative trial-epochs")
        ax.set_ylabel("hypervolume")
        ax.set_title(f"Hypervolume against trial-epochs spent (reference point: {ref})")
        ax.legend(loc="lower right", fontsize=8)
    return fig
