"""``cnn-tuner report PATH``: one self-contained HTML page about a finished experiment.

Reads what ``cnn-tuner run`` wrote (``cnn_tuner_run.json``, ``results.csv``, ``summary.json``,
``best_recipe.yaml``, each trial's ``result.json`` with a line per epoch, and ``ablation.csv``
when ``cnn-tuner ablate`` wrote one there, ``confirm.csv`` when ``cnn-tuner confirm`` did)
and writes ``report/index.html`` with every plot embedded (opens offline: no CDN, no external
file) plus the same plots as PNGs beside it.
An experiment on a URI (``s3://...``) is read through pyarrow (its checkpoints are not fetched)
and the report is written back beside it, or into ``--out``.
"""

from __future__ import annotations

import base64
import html
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from search_spaces import SearchSpace
from search_spaces.distributions import LogUniform
from trainables.errors import ConfigError
from tuner.analysis import front_plots, plots
from tuner.analysis.confirm import confirm_html, load_confirm
from tuner.analysis.importance import Importance, knob_importance
from tuner.analysis.live_trials import epoch_records
from tuner.running import storage
from tuner.running.results import BEST_RECIPE, RESULTS_CSV, best_first, load_results
from tuner.running.settings import RunSettings
from tuner.running.storage import check_folder_target

REPORT_DIR, ABLATION_CSV = "report", "ablation.csv"
TABLE_ROWS = 50  # the trial table's length; every trial is in results.csv
UNRANKED = ("errored", "non_finite", "infeasible")  # listed after trials with a usable metric


@dataclass
class Experiment:
    """Everything the report shows, read from an experiment folder."""

    path: Path
    settings: RunSettings
    space: SearchSpace  # the space searched, built once from the settings
    trials: pd.DataFrame  # results.csv
    summary: dict
    curves: dict[str, pd.DataFrame]  # trial_id -> a row per epoch
    tuned: list[str]
    log_knobs: set[str]
    source: str = ""  # where the experiment lives (a URI when `path` is a local mirror of it)

    @property
    def where(self) -> str:
        return self.source or str(self.path)

    @property
    def name(self) -> str:
        return self.where.rstrip("/").rsplit("/", 1)[-1]


def _trial_dirs(path: Path, trial_ids: list[str]) -> dict[str, Path | None]:
    """Each trial's folder: ``trial_<id>``, else the first folder whose name holds the id (the
    experiment folder is listed once, not once per trial)."""
    dirs: dict[str, Path | None] = {}
    listing: list[Path] | None = None
    for t in trial_ids:
        exact = path / f"trial_{t}"
        if exact.is_dir():
            dirs[t] = exact
            continue
        if listing is None:
            listing = sorted(p for p in path.iterdir() if p.is_dir())
        dirs[t] = next((p for p in listing if t in p.name), None)
    return dirs


def _epochs(trial_dir: Path | None, metric: str, cols: list[str]) -> list[tuple]:
    """A trial's epochs from Ray's ``result.json`` as rows of ``cols``, by epoch; a retried
    epoch keeps its last report."""
    f = trial_dir / "result.json" if trial_dir else None
    if f is None or not f.is_file():
        return []
    # a retried epoch: its last report counts
    by_epoch = {rec["epoch"]: tuple(rec.get(c) for c in cols)
                for rec in epoch_records(f.read_text(), metric)}
    return sorted(by_epoch.values(), key=lambda r: r[0])


def read_curves(trial_dirs: dict[str, Path | None], metric: str) -> dict[str, pd.DataFrame]:
    """Each trial's epochs (``epoch``, ``metric``, ``timestamp``, ``time_total_s``; none when it
    has no ``result.json``). One table is built for all trials and sliced: a table per trial
    costs ~0.3 ms, which thousands of trials turn into seconds."""
    cols = ["epoch", metric, "timestamp", "time_total_s"]
    rows = {t: _epochs(d, metric, cols) for t, d in trial_dirs.items()}
    table = pd.DataFrame([r for rs in rows.values() for r in rs], columns=cols)
    curves, start = {}, 0
    for t, rs in rows.items():
        curves[t] = (table.iloc[start:start + len(rs)].reset_index(drop=True) if rs
                     else pd.DataFrame(columns=cols))
        start += len(rs)
    return curves


def load_experiment(path: str | Path, source: str = "") -> Experiment:
    """An experiment folder written by `cnn-tuner run`, or ConfigError saying what is missing.
    ``source``: the URI ``path`` was mirrored from, if any (shown in the report)."""
    p = Path(path).expanduser().absolute()
    if not p.is_dir():
        raise ConfigError("no such experiment folder", where=str(p))
    settings = RunSettings.load(p)
    trials, summary = load_results(p)  # trial ids stay text ("01234567" keeps its zero)
    space = SearchSpace.from_dict(settings.space)
    tuned = [k for k in space.tuned if k in trials.columns]
    log_knobs = {k for k, d in space.tuned.items() if isinstance(d, LogUniform)}
    curves = read_curves(_trial_dirs(p, list(trials["trial_id"])), settings.metric)
    return Experiment(p, settings, space, trials, summary, curves, tuned, log_knobs, source)


@dataclass
class Ranking:
    """The trials in the order the report lists them, and how the plots draw each."""

    ids: list[str]  # the best first, then by the metric; errored, non-finite, infeasible last
    best: str | None
    top: list[str] | None  # drawn in colour over the faded rest (None: few trials, all coloured)
    colors: dict[str, str]


def rank_trials(exp: Experiment) -> Ranking:
    """The run's best trial (summary.json) first, then by the run's metric and mode; trials
    without a metric or ``UNRANKED`` (an infeasible trial's metric is the worst value it told
    the searcher) last, in results.csv order."""
    df, s = exp.trials, exp.settings
    best = exp.summary.get("best_trial")
    best = str(best) if best is not None else None
    ok = df[s.metric].notna() & ~df["status"].isin(UNRANKED)
    by_metric = best_first(df[ok], s.metric, s.mode)
    ids = [*by_metric["trial_id"], *df.loc[~ok, "trial_id"]]
    if best in ids:
        ids.remove(best)
        ids.insert(0, best)
    top = plots.top_trials(ids)
    return Ranking(ids, best, top, plots.trial_colors(ids, top))


def epoch_events(curves: dict[str, pd.DataFrame], metric: str) -> pd.DataFrame:
    """Every trial-epoch in the order it finished (the x axis of the efficiency curve)."""
    ran = {t: c for t, c in curves.items() if len(c)}
    if not ran:
        return pd.DataFrame(columns=["trial_id", "epoch", metric, "timestamp"])
    events = pd.concat(ran.values(), ignore_index=True)  # ids added after: not a copy per trial
    events["trial_id"] = np.repeat(list(ran), [len(c) for c in ran.values()])
    return events.sort_values(["timestamp", "time_total_s"], kind="stable").reset_index(drop=True)


def cost_rows(exp: Experiment) -> list[tuple[str, str]]:
    """Trials by outcome, trial-epochs against the budget, wall time, CPU- and GPU-seconds
    (counted from results.csv, so they match the trial table)."""
    s, df, max_epochs = exp.summary, exp.trials, exp.settings.max_epochs
    status = df["status"].value_counts().to_dict()
    stopped = int(status.get("early_stopped", 0))
    own = int((df["stop_reason"] == "early_stopped").sum())
    used, budget = int(df["epochs_run"].sum()), len(df) * max_epochs
    saved = f"{budget - used} ({(budget - used) / budget:.0%})" if budget else "n/a"
    last_time = {t: float(c["time_total_s"].iloc[-1]) for t, c in exp.curves.items() if len(c)}
    times = df["time_total_s"] if "time_total_s" in df else pd.Series(float("nan"), df.index)
    trial_s = sum(float(v) if pd.notna(v) else last_time.get(t, 0.0)
                  for t, v in zip(df["trial_id"], times, strict=True))
    cpus, gpus = exp.settings.cpus_per_trial, exp.settings.gpus_per_trial
    return [
        ("trials", f"{len(df)}"),
        ("completed", f"{status.get('completed', 0)}"),
        ("stopped early", f"{stopped} ({own} by their own patience, {stopped - own} by the "
                          f"{exp.settings.scheduler} scheduler)"),
        ("non-finite loss", f"{status.get('non_finite', 0)}"),
        ("errored", f"{status.get('errored', 0)}"),
        ("trial-epochs used", f"{used} of {budget} (num_samples x max_epochs = "
                              f"{len(df)} x {max_epochs})"),
        ("trial-epochs saved by early stopping", saved),
        ("wall time", f"{s.get('wall_time_s', float('nan')):.0f} s"),
        ("trial time (sum over trials)", f"{trial_s:.0f} s"),
        ("CPU-seconds reserved", f"{trial_s * cpus:.0f} ({cpus:g} CPU per trial)"),
        ("GPU-seconds reserved", f"{trial_s * gpus:.0f} ({gpus:g} GPU per trial)"),
    ]


# -- HTML ------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left} th{background:#f4f4f4}
img,svg{max-width:100%;height:auto} pre{background:#f6f8fa;padding:.8em;white-space:pre-wrap}
.scroll{overflow-x:auto}
.note{color:#555;font-style:italic} .swatch{display:inline-block;width:1.6em;height:.7em}
tr.best{font-weight:bold} tr.hl{background:#ffec99} g.hl path{stroke-width:4px!important}
"""
_JS = """
document.querySelectorAll('#trials tr[data-trial]').forEach(function (row) {
  var g = document.getElementById('trial-' + row.dataset.trial);
  if (!g) return;
  function hl(on) { g.classList.toggle('hl', on); row.classList.toggle('hl', on); }
  row.addEventListener('mouseenter', function () { hl(true); });
  row.addEventListener('mouseleave', function () { hl(false); });
});
"""


def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,' \
           f'{base64.b64encode(png).decode()}">'


def _trial_table(exp: Experiment, rank: Ranking) -> str:
    """The first ``TABLE_ROWS`` trials of the ranking; a line says how many more there are."""
    metric, best = exp.settings.metric, rank.best
    cols = ["status", "stop_reason", "epochs_run", metric, "test_acc", "params", "flops",
            "latency_ms", *exp.tuned]
    cols = [c for c in dict.fromkeys(cols) if c in exp.trials.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["", "trial", *cols])
    shown = exp.trials.set_index("trial_id", drop=False).loc[rank.ids[:TABLE_ROWS]]
    rows = []
    for _, r in shown.iterrows():
        t = r["trial_id"]
        cls = ' class="best"' if t == best else ""
        cells = "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in cols)
        swatch = "#000" if t == best else rank.colors[t]
        rows.append(f'<tr data-trial="{html.escape(t)}"{cls}><td><span class="swatch" '
                    f'style="background:{swatch}"></span></td><td>{html.escape(t)}'
                    f'{" (best)" if t == best else ""}</td>{cells}</tr>')
    hidden = len(rank.ids) - len(shown)
    where = storage.join(exp.where, RESULTS_CSV)
    note = (f'<p class="note" id="trials-hidden">The top {len(shown)} of {len(rank.ids)} '
            f"trials; {hidden} hidden: every trial is in {html.escape(where)}.</p>"
            if hidden else "")
    return (f'<div class="scroll"><table id="trials"><tr>{head}</tr>{"".join(rows)}</table>'
            f"</div>{note}")


def _importance_html(exp: Experiment, imp: Importance, figs: dict[str, bytes]) -> str:
    uneven = exp.trials["epochs_run"].nunique() > 1
    parts = [f'<p class="note">{html.escape(imp.note)}. Importance is each knob\'s share of the '
             "variance of the final metric explained by a random forest over the trial table "
             "(mean decrease in impurity, as Optuna's MeanDecreaseImpurityImportanceEvaluator); "
             "a family's is the sum over its knobs."
             + (" Trials stopped early count with the value they had when stopped."
                if uneven else "") + "</p>"]
    knobs = imp.knobs.rename(columns={"values": "distinct values"})
    parts.append(knobs.to_html(table_id="importance", index=False, float_format="{:.3f}".format,
                               na_rep="n/a", border=0))
    parts.append(imp.families.to_html(table_id="family-importance", index=False, border=0,
                                      float_format="{:.3f}".format, na_rep="n/a"))
    if "importance" in figs:
        parts.append(_img(figs["importance"], "knob importance"))
    return "\n".join(parts)


def _ablation_html(exp: Experiment, table: pd.DataFrame, figs: dict[str, bytes]) -> str:
    recipe = exp.path / "ablation_recipe.yaml"
    epochs = ""
    if recipe.is_file():
        epochs = next((ln.split(":", 1)[1].strip() for ln in recipe.read_text().splitlines()
                       if ln.startswith("epochs:")), "")
    note = (f'<p class="note">Each strategy of the recipe ({recipe.name}'
            f'{f", {epochs} epochs" if epochs else ""}) turned off in turn and trained with the '
            "same seeds as the recipe; change = mean paired difference in test accuracy "
            "(variant minus recipe, same seed) with its 95% Student-t confidence interval.</p>")
    def signed(v: float) -> str:
        return "" if pd.isna(v) else f"{v:+.4f}"

    text = table.to_html(table_id="ablation", index=False, na_rep="", border=0,
                         float_format="{:.4f}".format,
                         formatters={c: signed for c in ("delta_mean", "ci_low", "ci_high")})
    return note + text + ("\n" + _img(figs["ablation"], "ablation") if "ablation" in figs
                          else "")


def _best_html(exp: Experiment, space_file: Path) -> str:
    f = exp.path / BEST_RECIPE
    if not f.is_file():
        return '<p class="note">no trial produced a result, so there is no best recipe.</p>'
    s = exp.settings
    remote = storage.is_uri(exp.where)
    run = (f"cnn-tuner run --space {space_file.name if remote else space_file} "
           f"--searcher {s.searcher} "
           f"--scheduler {s.scheduler} --num-samples {s.num_samples} --seed {s.seed} "
           f"--cpus-per-trial {s.cpus_per_trial:g} --gpus-per-trial {s.gpus_per_trial:g}")
    retrain = f"cnn-tuner train --recipe {f} --out runs/best"
    where_space = " (space.yaml is in this report's folder)" if remote else ""
    if remote:  # the recipe file is on the remote storage: export it first
        retrain = (f"cnn-tuner results {exp.where} --export-best {BEST_RECIPE}\n"
                   f"cnn-tuner train --recipe {BEST_RECIPE} --out runs/best")
    return (f'<pre id="best-recipe">{html.escape(f.read_text())}</pre>'
            "<p>Retrain it (same seed and thread count on the CPU give the same metrics):</p>"
            f'<pre id="retrain">{html.escape(retrain)}</pre>'
            f"<p>Rerun the whole search{where_space}:</p>"
            f'<pre id="rerun">{html.escape(run)}</pre>')


def figures(exp: Experiment, imp: Importance, ablation: pd.DataFrame | None,
            rank: Ranking) -> dict[str, Figure]:
    """Every figure of the report, by file stem (the learning curves are also inlined as SVG)."""
    s, metric = exp.settings, exp.settings.metric
    status = dict(zip(exp.trials["trial_id"], exp.trials["status"], strict=True))
    figs = {"learning_curves": plots.learning_curves(exp.curves, status, rank.best,
                                                     rank.colors, metric, rank.top)}
    events = epoch_events(exp.curves, metric)
    figs["efficiency"] = plots.efficiency(events, metric, s.mode, len(exp.trials) * s.max_epochs)
    ran = exp.trials.dropna(subset=[metric])
    if exp.tuned and len(ran):
        figs["parallel_coordinates"] = plots.parallel_coordinates(
            ran, exp.tuned, exp.log_knobs, metric, rank.top, rank.best, rank.colors)
    if imp.ok:
        figs["importance"] = plots.importance_bars(imp.knobs, imp.families)
    if ablation is not None and ablation["delta_mean"].notna().any():
        figs["ablation"] = plots.ablation_bars(ablation)
    confirmed = load_confirm(exp.path)
    if confirmed is not None and confirmed["mean"].notna().any():
        figs["confirm"] = plots.confirm_bars(confirmed)
    objectives = s.objective_list
    reference = (exp.summary.get("hypervolume") or {}).get("reference")
    if objectives:
        figs["pareto_front"] = front_plots.front_figure(exp.trials, objectives)
    if objectives and reference:
        figs["hypervolume"] = front_plots.hypervolume_figure(
            front_plots.hypervolume_points(exp.trials, events, objectives), objectives,
            reference, len(exp.trials) * s.max_epochs)
    return figs


def render_html(exp: Experiment, imp: Importance, ablation: pd.DataFrame | None,
                svg: str, pngs: dict[str, bytes], rank: Ranking, space_file: Path,
                front_svg: str = "") -> str:
    s, st, best = exp.summary, exp.settings, rank.best
    cost = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in cost_rows(exp))
    def acc(v: object) -> str:
        return "n/a" if v is None else f"{float(v):.4f}"

    best_line = ("no trial produced a result" if best is None else
                 f"best trial {best}: val_acc {acc(s.get('best_val_acc'))}, "
                 f"test_acc {acc(s.get('best_test_acc'))}")
    sections = [
        f"<h1>cnn-tuner report: {html.escape(exp.name)}</h1>",
        f"<p>{html.escape(exp.where)} &middot; {st.searcher} search, {st.scheduler} "
        f"scheduler, metric {st.metric} ({st.mode}) &middot; generated "
        f"{datetime.now():%Y-%m-%d %H:%M}</p><p><b>{html.escape(best_line)}</b></p>",
        f'<h2>Cost</h2><table id="cost">{cost}</table>',
        "<h2>Learning curves</h2>", svg,
        f'<p class="note">Trials by {html.escape(st.metric)} ({st.mode}), the best first; '
        f"hover a {'coloured ' if rank.top else ''}row to highlight its curve.</p>",
        _trial_table(exp, rank),
        "<h2>Search efficiency</h2>", _img(pngs["efficiency"], "search efficiency"),
    ]
    if "pareto_front" in pngs:
        sections += ["<h2>Pareto front</h2>", front_svg]
        if "hypervolume" in pngs:
            sections += [_img(pngs["hypervolume"], "hypervolume against trial-epochs")]
    if "parallel_coordinates" in pngs:
        sections += ["<h2>Knobs against the metric</h2>",
                     _img(pngs["parallel_coordinates"], "parallel coordinates")]
    sections += ["<h2>Knob importance</h2>", _importance_html(exp, imp, pngs)]
    if ablation is not None:
        sections += ["<h2>Ablation</h2>", _ablation_html(exp, ablation, pngs)]
    confirmed = load_confirm(exp.path)
    if confirmed is not None:
        sections += ["<h2>Confirmation over seeds</h2>", confirm_html(confirmed, s, pngs, _img)]
    sections += ["<h2>Best recipe</h2>", _best_html(exp, space_file)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>cnn-tuner '
            f"report: {html.escape(exp.name)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(sections) + f"\n<script>{_JS}</script>\n</body></html>\n")


def write_report(path: str | Path, out: str | Path | None = None) -> str:
    """Write ``index.html`` and the PNGs into ``out`` (default ``PATH/report``); return where
    the HTML file is (a path, or a URI when the experiment is on one and ``out`` is not given)."""
    if not storage.is_uri(str(path)):
        exp = load_experiment(path)
        return str(_write_report(exp, Path(out) if out else exp.path / REPORT_DIR))
    with tempfile.TemporaryDirectory(prefix="cnn-tuner-report-") as tmp:
        local = Path(tmp) / "experiment"
        storage.mirror_experiment(str(path), local, skip_top=(REPORT_DIR,))
        exp = load_experiment(local, source=str(path))
        if out:
            return str(_write_report(exp, Path(out)))
        _write_report(exp, local / REPORT_DIR)
        remote = storage.join(str(path), REPORT_DIR)
        storage.upload_dir(local / REPORT_DIR, remote)
        return storage.join(remote, "index.html")


def _write_report(exp: Experiment, out_dir: Path) -> Path:
    check_folder_target(out_dir, "out")
    metric = exp.settings.metric
    imp = knob_importance(exp.trials, exp.tuned, metric)
    ablation_file = exp.path / ABLATION_CSV
    ablation = pd.read_csv(ablation_file) if ablation_file.is_file() else None
    rank = rank_trials(exp)
    figs = figures(exp, imp, ablation, rank)
    svg = plots.svg_text(figs["learning_curves"])
    front_svg = front_plots.with_tooltips(
        plots.svg_text(figs["pareto_front"]), exp.trials, exp.tuned,
        exp.settings.objective_list) if "pareto_front" in figs else ""
    pngs = {stem: plots.png_bytes(fig) for stem, fig in figs.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    for stem, png in pngs.items():
        (out_dir / f"{stem}.png").write_bytes(png)
    space_file = out_dir / "space.yaml"  # for the rerun command
    exp.space.to_yaml(space_file)
    index = out_dir / "index.html"
    index.write_text(render_html(exp, imp, ablation, svg, pngs, rank, space_file, front_svg))
    return index
