"""Reading a confirmation over seeds (``cnn-tuner confirm``): the printed table, the verdict
line, and the report's section. The retraining itself is ``tuner.running.confirm`` (a run does
it after its search), re-exported here."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from tuner.running.confirm import CONFIRM_CSV, ConfirmResult, confirm, load_confirm

__all__ = ["CONFIRM_CSV", "ConfirmResult", "confirm", "confirm_html", "format_table",
           "load_confirm", "verdict"]

_FIXED = ("trial_id", "rank", "single_run_rank", "metric", "single_run", "mean", "ci_low",
          "ci_high", "seeds", "failed", "test_acc_mean")


def _num(v: Any) -> str:
    return "" if pd.isna(v) else f"{v:.4f}"


def format_table(table: pd.DataFrame) -> str:
    """confirm.csv as printed: rank by mean, the single run's rank and value, the mean with its
    95% CI, and the knobs that differ between the recipes."""
    metric = table["metric"].iloc[0] if len(table) else "metric"
    knobs = [c for c in table.columns if c not in _FIXED]
    shown = pd.DataFrame({
        "rank": table["rank"], "trial": table["trial_id"],
        "single run": [f"{_num(v)} (#{r})" for v, r in
                       zip(table["single_run"], table["single_run_rank"], strict=True)],
        f"mean {metric}": table["mean"].map(_num),
        "95% CI": [f"[{_num(a)}, {_num(b)}]" if pd.notna(a) else ""
                   for a, b in zip(table["ci_low"], table["ci_high"], strict=True)],
        "seeds": table["seeds"], "test_acc": table["test_acc_mean"].map(_num),
        **{k: table[k] for k in knobs}})
    return shown.to_string(index=False)


def verdict(confirmed: dict[str, Any]) -> str:
    """One line: the best by mean, its interval, and whether the search's winner changed."""
    best, single = confirmed["best_trial_by_mean"], confirmed["single_run_best_trial"]
    ci = (f" (95% CI {_num(confirmed['ci_low'])}-{_num(confirmed['ci_high'])})"
          if confirmed.get("ci_low") is not None else "")
    change = (f"the winner changed (single run: {single})" if confirmed["winner_changed"]
              else "the single-run winner holds")
    return (f"confirmed over {len(confirmed['seeds'])} seeds: best by mean {best}, "
            f"{confirmed['metric']} {_num(confirmed['mean'])}{ci}; {change}")


def confirm_html(table: pd.DataFrame, summary: dict[str, Any], pngs: dict[str, bytes],
                 img: Any) -> str:
    """The report's section: what was done, the verdict, the table and the CI bars (``img``
    embeds a PNG)."""
    confirmed = summary.get("confirmed")
    seeds = ", ".join(map(str, confirmed["seeds"])) if confirmed else ""
    note = ('<p class="note">The best trials of the search retrained with the same new seeds '
            f"each ({html.escape(seeds)}), ranked by the mean of the run's metric with its 95% "
            "Student-t confidence interval; best_recipe.yaml is the best by mean.</p>")
    line = (f'<p id="confirm-verdict"><b>{html.escape(verdict(confirmed))}</b></p>'
            if confirmed else "")
    text = table.to_html(table_id="confirm", index=False, na_rep="", border=0,
                         float_format="{:.4f}".format)
    return note + line + text + ("\n" + img(pngs["confirm"], "confirmation over seeds")
                                 if "confirm" in pngs else "")
