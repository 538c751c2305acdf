"""``cnn-tuner ablate``: each strategy of a recipe turned off in turn, K seeds each, through Ray.

The variants and the statistics are checked without Ray; one end-to-end run ablates the best
recipe of the shared tiny experiment on digits (2 seeds, 1 epoch) and the report shows it.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from trainables.recipe import Recipe
from tuner.analysis.ablate import STRATEGIES, summarise, variants
from tuner.analysis.report import write_report
from tuner.cli import main


def test_variants_turn_one_strategy_off_and_skip_what_is_already_off():
    recipe = Recipe.from_dict({"aug_hflip": 0.5, "mixup_alpha": 0.2, "dropout": 0.1,
                               "warmup_epochs": 1.0})
    todo, skipped = variants(recipe, on_gpu=False)
    assert set(todo) == {"augmentation", "lr_schedule", "regularization", "batch_norm"}
    assert skipped == {"transfer": "already off", "precision": "already off"}  # auto = fp32 on CPU
    aug = todo["augmentation"]
    assert (aug.aug_crop, aug.aug_hflip, aug.mixup_alpha) == ("none", 0.0, 0.0)
    assert aug.replace(aug_crop=recipe.aug_crop, aug_hflip=0.5, mixup_alpha=0.2) == recipe
    assert (todo["lr_schedule"].lr_schedule, todo["lr_schedule"].warmup_epochs) == ("constant", 0)
    assert (todo["regularization"].weight_decay, todo["regularization"].dropout) == (0.0, 0.0)
    assert todo["batch_norm"].batch_norm is False
    assert todo["batch_norm"].replace(batch_norm=True) == recipe  # nothing else changed
    on_gpu, _ = variants(recipe, on_gpu=True)
    assert on_gpu["precision"].precision == "fp32"
    plain = Recipe.from_dict({"aug_crop": "none", "lr_schedule": "constant", "weight_decay": 0.0,
                              "batch_norm": False, "precision": "fp32"})
    todo, skipped = variants(plain, on_gpu=True)
    assert todo == {} and set(skipped) == set(STRATEGIES)


def test_summary_is_the_paired_mean_difference_with_a_t_interval():
    recipe = Recipe.from_dict({"width": 8})
    todo, skipped = variants(recipe, on_gpu=False)
    seeds = [0, 1, 2, 3]
    base = [0.90, 0.92, 0.88, 0.91]
    bn = [0.80, 0.85, 0.79, 0.83]
    runs = [{"strategy": name, "seed": s, "test_acc": a}
            for name, accs in (("baseline", base), ("batch_norm", bn))
            for s, a in zip(seeds, accs, strict=True)]
    runs += [{"strategy": name, "seed": s, "test_acc": b + 0.01}  # every seed +0.01
             for name in ("augmentation", "lr_schedule", "regularization")
             for s, b in zip(seeds, base, strict=True)]
    table = summarise(pd.DataFrame(runs), recipe, todo, skipped).set_index("strategy")
    deltas = np.array(bn) - np.array(base)
    lo, hi = stats.t.interval(0.95, 3, loc=deltas.mean(), scale=stats.sem(deltas))
    row = table.loc["batch_norm"]
    assert row["delta_mean"] == pytest.approx(deltas.mean())
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert row["ci_high"] < 0 and row["changes"] == "batch_norm=False" and row["seeds"] == 4
    aug = table.loc["augmentation"]  # identical paired differences: a zero-width interval
    assert aug["ci_low"] == pytest.approx(0.01) and aug["ci_high"] == pytest.approx(0.01)
    assert table.loc["transfer", "note"] == "already off"
    assert math.isnan(table.loc["transfer", "delta_mean"])


def _ablate(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["ablate", *args])
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.ray
def test_ablate_on_digits_prints_its_table_and_the_report_shows_it(lr_experiment, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(lr_experiment, exp, ignore=shutil.ignore_patterns("checkpoint_*"))
    rc, out, err = _ablate(str(exp / "best_recipe.yaml"), "--seeds", "2", "--epochs", "1")
    assert rc == 0, err
    assert len(re.findall(r"^\[\d+/10\] ", err, re.M)) == 10  # 5 recipes x 2 seeds, as they end
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    for name in ("baseline", "augmentation", "lr_schedule", "regularization", "batch_norm"):
        assert re.search(r"\d\.\d{4}", lines[name]), out
    assert "already off" in lines["transfer"] and "already off" in lines["precision"]
    assert re.search(r"batch_norm +[\d.]+ +[+-][\d.]+ +\[[+-][\d.]+, [+-][\d.]+\]", out), out

    table = pd.read_csv(exp / "ablation.csv")  # default --out: the experiment folder
    runs = pd.read_csv(exp / "ablation_runs.csv")
    assert len(runs) == 10 and runs["test_acc"].between(0, 1).all()
    assert sorted(set(runs["seed"])) == [runs["seed"].min(), runs["seed"].min() + 1]
    assert (runs["epochs_run"] == 1).all()
    trained = table.dropna(subset=["delta_mean"])
    assert set(trained["strategy"]) == {"augmentation", "lr_schedule", "regularization",
                                        "batch_norm"}
    assert (trained["ci_low"] <= trained["delta_mean"]).all()
    assert (trained["delta_mean"] <= trained["ci_high"]).all()

    html = Path(write_report(exp)).read_text()
    section = re.search(r'<table[^>]*id="ablation">(.*?)</table>', html, re.S)
    assert section and len(re.findall(r"<tr", section.group(1))) == 1 + 7  # header + rows
    assert "already off" in section.group(1)
    assert (exp / "report" / "ablation.png").stat().st_size > 5000


def test_ablate_refuses_bad_arguments_with_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    Recipe.from_dict({"width": 8}).to_yaml(recipe)
    rc, _, err = _ablate(str(recipe), "--seeds", "1")
    assert rc == 2 and "--seeds: must be >= 2" in err and err.count("\n") == 1
    rc, _, err = _ablate(str(tmp_path / "missing.yaml"), "--seeds", "2")
    assert rc == 2 and "recipe file not found" in err
    rc, _, err = _ablate(str(recipe), "--seeds", "2", "--epochs", "0")
    assert rc == 2 and "'epochs'" in err
