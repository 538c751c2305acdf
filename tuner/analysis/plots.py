"""The report's figures, drawn with matplotlib's object API (no pyplot state, no GUI backend).

Each function takes plain tables and returns a ``Figure``; ``svg_text`` / ``png_bytes`` turn a
figure into what the HTML embeds and what is written beside it. In the learning-curve SVG every
trial's line is a group with id ``trial-<trial_id>`` so a reader (or a test) can find it.

Past ``MANY_TRIALS`` trials a line per trial in its own colour is one solid blob, so the report
passes ``top`` (``top_trials``: the ``TOP_K`` best, best first): those are drawn on top in
distinct colours with their ids in the legend, the best thick and black; every other trial is a
thin faint grey line, all of them one rasterized collection (one image in the SVG, not thousands
of paths).
"""

from __future__ import annotations

import io
import math
from collections.abc import Collection

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize, to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

STOPPED = ("early_stopped", "non_finite", "errored", "infeasible")
MANY_TRIALS = 30  # above this, a colour per trial is a blob: fade all but the top TOP_K
TOP_K = 10  # the best and 9 more: as many as tab10 has distinct colours besides its grey
FADED = "#b4b4b4"  # the colour of the trials outside the top
_RC = {"svg.hashsalt": "cnn-tuner", "svg.fonttype": "path", "font.size": 9,
       "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
       "axes.spines.right": False}


def top_trials(ranked: list[str]) -> list[str] | None:
    """The trials the plots emphasise: the first ``TOP_K`` of ``ranked`` (best first) when there
    are more than ``MANY_TRIALS``; None (every trial in its own colour) when there are fewer."""
    return list(ranked[:TOP_K]) if len(ranked) > MANY_TRIALS else None


def trial_colors(trial_ids: list[str], top: Collection[str] | None = None) -> dict[str, str]:
    """One colour per trial, shared by the plots and the HTML legend: tab20, cycling; with
    ``top``, tab10's distinct colours (its grey left out) for those and ``FADED`` for the rest."""
    if top is None:
        cmap = matplotlib.colormaps["tab20"]
        return {t: to_hex(cmap(i % 20)) for i, t in enumerate(trial_ids)}
    palette = [to_hex(c) for i, c in enumerate(matplotlib.colormaps["tab10"].colors) if i != 7]
    colors = dict.fromkeys(trial_ids, FADED)
    colors.update({t: palette[i % len(palette)] for i, t in enumerate(top)})
    return colors


def _faint(segments: list[np.ndarray]) -> LineCollection:
    """The trials outside the top as one collection: thin, grey, the fainter the more of them
    (about as much ink for 2,000 as for 300, so their density still shows), and rasterized (one
    image in the SVG however many lines)."""
    alpha = min(0.4, max(0.1, 120 / max(len(segments), 1)))
    return LineCollection(segments, color=FADED, lw=0.5, alpha=alpha, zorder=1,
                          rasterized=True)


def _top_legend(ax: Axes, top: list[str], best: str | None, colors: dict[str, str],
                others: int, extra: list[Line2D]) -> None:
    """The legend of a plot with emphasis: the top trials by id (best first), the faded rest."""
    handles = [Line2D([], [], color="black" if t == best else colors[t], lw=3 if t == best else
                      1.6, label=f"{t} (best)" if t == best else t) for t in top]
    handles.append(Line2D([], [], color=FADED, lw=1, label=f"{others} other trials"))
    ax.legend(handles=handles + extra, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7,
              title=f"top {len(top)}", title_fontsize=8, frameon=False)


def _figure(w: float, h: float) -> Figure:
    with matplotlib.rc_context(_RC):
        return Figure(figsize=(w, h), layout="constrained")


def svg_text(fig: Figure) -> str:
    """The figure as an ``<svg>`` element to inline in HTML (no XML prolog)."""
    buf = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def learning_curves(curves: dict[str, pd.DataFrame], status: dict[str, str], best: str | None,
                    colors: dict[str, str], metric: str,
                    top: Collection[str] | None = None) -> Figure:
    """``metric`` per epoch of every trial; the best drawn thick, trials that were stopped
    (early, non-finite, errored) end in a cross. With ``top`` (many trials) only those and the
    best are drawn so, on top; every other trial is a faint grey line without markers."""
    fig = _figure(9, 4.6)
    with matplotlib.rc_context(_RC):
        ax = fig.add_subplot()
        shown = [t for t, c in curves.items() if len(c)]  # errored before its first epoch: none
        if top is not None:
            top = [t for t in top if t in shown]
            emphasised = {*top, best}
            faint = [np.column_stack([curves[t]["epoch"].to_numpy(float),
                                      curves[t][metric].to_numpy(float)])
                     for t in shown if t not in emphasised]
            ax.add_collection(_faint(faint))
            # in reverse rank, the best last: each is drawn over those ranked below it
            shown = [t for t in reversed(top) if t != best] + ([best] if best in shown else [])
        for tid in shown:
            curve = curves[tid]
            is_best = tid == best
            (line,) = ax.plot(curve["epoch"], curve[metric], color="black" if is_best else
                              colors[tid], lw=3 if is_best else 1.2, alpha=1 if is_best else 0.75,
                              ls="--" if status.get(tid) in ("non_finite", "errored") else "-",
                              marker="o", ms=2.5, zorder=3 if is_best else 2)
            line.set_gid(f"trial-{tid}")
            if status.get(tid) in STOPPED:
                mark = ax.plot(curve["epoch"].iloc[-1:], curve[metric].iloc[-1:], marker="X",
                               ms=8, color=line.get_color(), mec="white", mew=0.6, ls="none",
                               zorder=line.get_zorder())
                mark[0].set_gid(f"stop-{tid}")
        ax.autoscale_view()
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.xaxis.get_major_locator().set_params(integer=True)
        marks = [Line2D([], [], color="grey", marker="X", ls="none", ms=8, label="stopped early"),
                 Line2D([], [], color="grey", ls="--", label="non-finite / errored")]
        if top is None:
            ax.set_title(f"Learning curves: {metric} of every trial")
            ax.legend(handles=[
                Line2D([], [], color="black", lw=3, label="best trial"),
                Line2D([], [], color="grey", lw=1.2, label="other trial"), *marks,
            ], loc="lower right", fontsize=8)
        else:
            ax.set_title(f"Learning curves: {metric} of every trial, the top {len(top)} in "
                         "colour")
            _top_legend(ax, shown[::-1], best, colors, len(faint), marks)
    return fig


def efficiency(events: pd.DataFrame, metric: str, mode: str, budget: int) -> Figure:
    """Best-so-far ``metric`` against cumulative trial-epochs, in the order epochs finished."""
    fig = _figure(9, 3.4)
    with matplotlib.rc_context(_RC):
        ax = fig.add_subplot()
        if len(events):
            x = np.arange(1, len(events) + 1)
            values = events[metric].astype(float)
            best = values.cummax() if mode == "max" else values.cummin()
            ax.scatter(x, values, s=8, color="tab:blue", alpha=0.35, label=f"epoch's {metric}")
            ax.step(x, best, where="post", color="tab:red", lw=2, label=f"best {metric} so far")
            ax.axvline(len(events), color="tab:green", ls=":", lw=1.5,
                       label=f"trial-epochs used: {len(events)}")
        if budget:
            ax.axvline(budget, color="grey", ls="--", lw=1.5,
                       label=f"budget (num_samples x max_epochs): {budget}")
        ax.set_xlabel("cumulative trial-epochs")
        ax.set_ylabel(metric)
        ax.set_title("Search efficiency: best-so-far against trial-epochs spent")
        ax.legend(loc="lower right", fontsize=8)
    return fig


def _axis(values: pd.Series, log: bool) -> tuple[np.ndarray, list[float], list[str]]:
    """Values mapped to [0, 1] (missing -> -0.12), the tick positions and their labels."""
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        cats = sorted(values.dropna().astype(str).unique())
        pos = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
        y = np.array([pos[str(v)] if pd.notna(v) else math.nan for v in values], dtype=float)
        ticks, labels = list(pos.values()), list(pos)
    else:
        v = np.asarray(values, dtype=float)
        v = np.log10(v) if log else v
        finite = v[~np.isnan(v)]
        lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 0.0)
        span = hi - lo or 1.0
        y = (v - lo) / span if hi > lo else np.where(np.isnan(v), math.nan, 0.5)
        raw = [lo, lo + span / 2, hi] if hi > lo else [lo] * bool(len(finite))
        ticks = [(r - lo) / span if hi > lo else 0.5 for r in raw]
        labels = [f"{10 ** r if log else r:.3g}" for r in raw]
    missing = np.isnan(y)
    if missing.any():
        y[missing] = -0.12
        ticks, labels = [*ticks, -0.12], [*labels, "(inactive)"]
    return y, ticks, labels


def parallel_coordinates(df: pd.DataFrame, knobs: list[str], log_knobs: set[str],
                         metric: str, top: Collection[str] | None = None,
                         best: str | None = None,
                         colors: dict[str, str] | None = None) -> Figure:
    """One line per trial across an axis per tuned knob and the metric, coloured by the metric.
    With ``top`` (trial ids; ``df`` then needs ``trial_id``) those are drawn on top in
    ``colors``, the ``best`` thick and black, and every other trial faint grey."""
    axes = [*knobs, metric]
    fig = _figure(min(max(8.0, 1.1 * len(axes)), 12.0), 4.8)
    with matplotlib.rc_context(_RC):
        ax = fig.add_subplot()
        ax.grid(False)
        mapped = [_axis(df[k], k in log_knobs) for k in axes]
        ys = np.column_stack([m[0] for m in mapped])
        xs = np.arange(len(axes))
        if top is None:
            score = df[metric].astype(float).to_numpy()
            norm = Normalize(np.nanmin(score), np.nanmax(score)) if len(score) else Normalize()
            lines = LineCollection([np.column_stack([xs, row]) for row in ys], cmap="viridis",
                                   norm=norm, lw=1.6, alpha=0.85)
            lines.set_array(score)
            ax.add_collection(lines)
            fig.colorbar(lines, ax=ax, label=metric, fraction=0.03)
        else:
            _emphasise_top(ax, xs, ys, list(df["trial_id"]), top, best, colors or {})
        for i, (_, ticks, labels) in enumerate(mapped):
            ax.axvline(i, color="black", lw=0.8)
            for t, lab in zip(ticks, labels, strict=True):
                ax.text(i + 0.04, t, lab, fontsize=7, va="center")
        ax.set_xticks(xs, [f"{k} (log)" if k in log_knobs else k for k in axes], fontsize=8,
                      rotation=30 if len(axes) > 6 else 0, ha="right" if len(axes) > 6 else
                      "center")
        ax.set_yticks([])
        ax.set_xlim(-0.2, len(axes) - 0.5)
        ax.set_ylim(-0.2, 1.08)
        ax.spines[["left", "bottom"]].set_visible(False)
        ax.set_title(f"Parallel coordinates: tuned knobs against the final {metric}")
    return fig


def _emphasise_top(ax: Axes, xs: np.ndarray, ys: np.ndarray, trial_ids: list[str],
                   top: Collection[str], best: str | None, colors: dict[str, str]) -> None:
    """Every trial outside ``top`` faint grey; those in it on top, in reverse rank order so
    the better are drawn over the worse, and the best last (thick, black)."""
    row = {t: i for i, t in enumerate(trial_ids)}
    ranked = [t for t in top if t in row]
    if best in row and best not in ranked:
        ranked.insert(0, best)
    emphasised = set(ranked)
    faint = [np.column_stack([xs, ys[i]]) for t, i in row.items() if t not in emphasised]
    ax.add_collection(_faint(faint))
    order = [t for t in reversed(ranked) if t != best] + ([best] if best in emphasised else [])
    for t in order:
        is_best = t == best
        (line,) = ax.plot(xs, ys[row[t]], color="black" if is_best else colors.get(t, "C0"),
                          lw=3 if is_best else 1.6, alpha=1 if is_best else 0.9,
                          zorder=3 if is_best else 2)
        line.set_gid(f"trial-{t}")
    _top_legend(ax, order[::-1], best, colors, len(faint), [])


def importance_bars(knobs: pd.DataFrame, families: pd.DataFrame) -> Figure:
    """Horizontal bars: importance per knob (left) and per strategy family (right)."""
    fig = _figure(9, max(2.4, 0.32 * len(knobs) + 1.2))
    with matplotlib.rc_context(_RC):
        for i, (table, key, title) in enumerate(((knobs, "knob", "per knob"),
                                                 (families, "family", "per strategy family"))):
            ax = fig.add_subplot(1, 2, i + 1)
            t = table.dropna(subset=["importance"]).iloc[::-1]
            ax.barh(t[key], t["importance"], color="tab:blue" if i == 0 else "tab:orange")
            ax.set_xlim(0, 1)
            ax.set_xlabel("share of explained variance")
            ax.set_title(f"Importance {title}")
    return fig


def ablation_bars(table: pd.DataFrame) -> Figure:
    """Mean change in test accuracy per strategy turned off, with its 95% confidence interval."""
    t = table.dropna(subset=["delta_mean"]).iloc[::-1]
    fig = _figure(8, max(2.2, 0.45 * len(t) + 1.2))
    with matplotlib.rc_context(_RC):
        ax = fig.add_subplot()
        err = np.vstack([t["delta_mean"] - t["ci_low"], t["ci_high"] - t["delta_mean"]])
        colors = ["tab:red" if d < 0 else "tab:green" for d in t["delta_mean"]]
        ax.barh(t["strategy"], t["delta_mean"], xerr=err, color=colors, capsize=4, alpha=0.8)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel("change in test accuracy when the strategy is turned off (95% CI)")
        ax.set_title("Ablation: what each strategy of the recipe is worth")
    return fig


def confirm_bars(table: pd.DataFrame) -> Figure:
    """Each confirmed recipe's mean metric over the seeds with its 95% confidence interval (best
    by mean on top), and its single-run value as a dot."""
    t = table.dropna(subset=["mean"]).iloc[::-1]
    metric = t["metric"].iloc[0] if len(t) else "metric"
    fig = _figure(8, max(2.2, 0.45 * len(t) + 1.2))
    with matplotlib.rc_context(_RC):
        ax = fig.add_subplot()
        err = np.vstack([t["mean"] - t["ci_low"].fillna(t["mean"]),
                         t["ci_high"].fillna(t["mean"]) - t["mean"]])
        labels = [f"#{r} {tid}" for r, tid in zip(t["rank"], t["trial_id"], strict=True)]
        ax.errorbar(t["mean"], labels, xerr=err, fmt="o", color="tab:blue", capsize=4,
                    label="mean over seeds (95% CI)")
        ax.scatter(t["single_run"], labels, marker="x", color="tab:orange", zorder=3,
                   label="the search's single run")
        ax.set_xlabel(f"{metric}")
        ax.set_title("Confirmation over seeds: the best trials retrained")
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.08), ncol=2, fontsize=7, frameon=False)
    return fig
