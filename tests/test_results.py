"""Which trial is the best, and the order `results`, `confirm` and the report list trials in:
the run's metric first, ties broken by the paired metric (an accuracy's loss, a loss's accuracy).

Validation sets are small (digits: 144 images, one image is 0.7 points of val_acc), so several
trials of a run often tie on val_acc; before the tie-break the pick among them was whichever came
first in the table, which on a Zen 3 picked a trial testing 0.9749 over two testing 0.9889.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tuner.running.results import best_first, pick_best, tie_break


def _trials(rows: list[tuple[str, float, float, str]]) -> pd.DataFrame:
    return pd.DataFrame([{"trial_id": t, "val_acc": acc, "val_loss": loss, "status": status,
                          "stop_reason": "completed" if status == "completed" else "asha_stopped"}
                         for t, acc, loss, status in rows])


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0], [1, 2, 0]])
def test_a_val_acc_tie_goes_to_the_lower_val_loss_in_any_table_order(order):
    rows = [("a", 0.9931, 0.041, "completed"), ("b", 0.9931, 0.018, "completed"),
            ("c", 0.9861, 0.010, "completed")]
    df = _trials([rows[i] for i in order])
    assert pick_best(df, "val_acc", "max")["trial_id"] == "b"
    assert list(best_first(df, "val_acc", "max")["trial_id"]) == ["b", "a", "c"]


def test_the_metric_still_comes_first_and_a_loss_metric_breaks_ties_by_accuracy():
    df = _trials([("a", 0.95, 0.30, "completed"), ("b", 0.97, 0.30, "completed"),
                  ("c", 0.99, 0.31, "completed")])
    assert pick_best(df, "val_acc", "max")["trial_id"] == "c"  # a lower loss never outranks
    assert pick_best(df, "val_loss", "min")["trial_id"] == "b"  # a, b tie on loss: b's acc
    assert list(best_first(df, "val_loss", "min")["trial_id"]) == ["b", "a", "c"]


def test_the_tie_break_never_promotes_a_trial_that_did_not_end_on_its_own():
    df = _trials([("a", 0.99, 0.05, "completed"), ("b", 0.99, 0.01, "early_stopped")])
    assert pick_best(df, "val_acc", "max")["trial_id"] == "a"  # b: stopped by ASHA


def test_rows_without_the_tie_break_column_value_come_last_among_their_ties():
    df = _trials([("a", 0.99, math.nan, "completed"), ("b", 0.99, 0.2, "completed"),
                  ("c", math.nan, 0.1, "completed")])
    assert list(best_first(df, "val_acc", "max")["trial_id"]) == ["b", "a", "c"]
    no_loss = df.drop(columns="val_loss")  # e.g. an older results.csv: the table order
    assert list(best_first(no_loss, "val_acc", "max")["trial_id"]) == ["a", "b", "c"]


@pytest.mark.parametrize(("metric", "expected"), [
    ("val_acc", ("val_loss", "min")), ("val_loss", ("val_acc", "max")),
    ("train_acc", ("train_loss", "min")), ("test_loss", ("test_acc", "max")),
    ("images_per_s", None)])
def test_each_metric_has_its_pair(metric, expected):
    assert tie_break(metric) == expected
