"""``cnn-tuner ablate RECIPE --seeds K``: what each strategy of a recipe is worth.

Each strategy family is turned off in turn (augmentation off, a constant LR schedule, no weight
decay / dropout / label smoothing, no BatchNorm, no pretrained weights, fp32); the recipe and
every variant train K times with seeds ``seed .. seed+K-1``, all as parallel Ray tasks. A
variant's effect is the mean paired difference in test accuracy (variant minus recipe, same
seed) with a 95% Student-t confidence interval over the K seeds. Variants identical to the
recipe (the strategy is already off) are listed, not trained.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from trainables.errors import ConfigError
from trainables.recipe import Recipe
from tuner.running.repeats import t_interval, train_all
from tuner.running.settings import check_resources
from tuner.running.storage import check_folder_target

ABLATION_CSV, RUNS_CSV, RECIPE_FILE = "ablation.csv", "ablation_runs.csv", "ablation_recipe.yaml"
# What "off" means for each strategy family (knobs not listed keep the recipe's value).
STRATEGIES: dict[str, dict[str, Any]] = {
    "augmentation": {"aug_crop": "none", "aug_hflip": 0.0, "aug_vflip": 0.0,
                     "aug_rotation": 0.0, "aug_color_jitter": 0.0, "aug_random_erasing": 0.0,
                     "mixup_alpha": 0.0, "cutmix_alpha": 0.0},
    "lr_schedule": {"lr_schedule": "constant", "warmup_epochs": 0.0},
    "regularization": {"weight_decay": 0.0, "dropout": 0.0, "label_smoothing": 0.0},
    "batch_norm": {"batch_norm": False},
    "transfer": {"pretrained": "none", "freeze": "none", "backbone_lr_mult": 1.0},
    "precision": {"precision": "fp32"},
}


@dataclass
class AblationResult:
    table: pd.DataFrame  # a row per strategy: changes, means, delta_mean, ci_low, ci_high, note
    runs: pd.DataFrame  # a row per training: strategy, seed, val_acc, test_acc, stop_reason
    out: Path


def variants(recipe: Recipe, on_gpu: bool) -> tuple[dict[str, Recipe], dict[str, str]]:
    """The variants to train (strategy -> recipe) and the strategies already off (-> why)."""
    todo, skipped = {}, {}
    for name, off in STRATEGIES.items():
        changed = {k: v for k, v in off.items() if getattr(recipe, k) != v}
        if name == "precision" and not on_gpu and recipe.precision == "auto":
            changed = {}  # auto is fp32 on the CPU: the variant would be the recipe
        if name == "transfer" and recipe.pretrained == "none":
            changed = {}  # backbone_lr_mult alone is not transfer learning
        if not changed:
            skipped[name] = "already off"
            continue
        todo[name] = recipe.replace(**changed)
    return todo, skipped


def _changes(recipe: Recipe, variant: Recipe) -> str:
    a, b = recipe.to_dict(), variant.to_dict()
    return ", ".join(f"{k}={b[k]}" for k in a if a[k] != b[k])


def summarise(runs: pd.DataFrame, recipe: Recipe, todo: dict[str, Recipe],
              skipped: dict[str, str]) -> pd.DataFrame:
    """Per strategy: mean test accuracy with and without it, and the paired change with its CI."""
    base = runs[runs["strategy"] == "baseline"].set_index("seed")["test_acc"]
    rows = [{"strategy": "baseline", "changes": "(the recipe)", "seeds": int(base.notna().sum()),
             "test_acc": base.mean(), "delta_mean": math.nan, "ci_low": math.nan,
             "ci_high": math.nan, "note": ""}]
    for name in STRATEGIES:
        if name in skipped:
            rows.append({"strategy": name, "changes": "", "seeds": 0, "test_acc": math.nan,
                         "delta_mean": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                         "note": skipped[name]})
            continue
        var = runs[runs["strategy"] == name].set_index("seed")["test_acc"]
        deltas = (var - base).dropna().to_numpy()
        mean, lo, hi = t_interval(deltas)
        failed = int(var.isna().sum())
        rows.append({"strategy": name, "changes": _changes(recipe, todo[name]),
                     "seeds": len(deltas), "test_acc": var.mean(), "delta_mean": mean,
                     "ci_low": float(lo), "ci_high": float(hi),
                     "note": f"{failed} run(s) failed" if failed else ""})
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    """The table as printed: signed deltas with their 95% CI, 'already off' rows as such."""
    def pct(v: float, sign: bool = False) -> str:
        return "" if pd.isna(v) else f"{v:+.4f}" if sign else f"{v:.4f}"

    shown = pd.DataFrame({
        "strategy": table["strategy"], "test_acc": table["test_acc"].map(pct),
        "change": table["delta_mean"].map(lambda v: pct(v, True)),
        "95% CI": [f"[{pct(a, True)}, {pct(b, True)}]" if pd.notna(a) else ""
                   for a, b in zip(table["ci_low"], table["ci_high"], strict=True)],
        "seeds": table["seeds"], "turned off": table["changes"], "note": table["note"]})
    return shown.to_string(index=False)


def ablate(recipe: Recipe, *, seeds: int = 3, epochs: int | None = None,
           out: str | Path = "runs/ablate", cpus_per_trial: float = 1,
           gpus_per_trial: float = 0, address: str | None = None,
           log: Any = None) -> AblationResult:
    """Train ``recipe`` and each strategy-off variant ``seeds`` times through Ray; write
    ``ablation.csv`` (the table), ``ablation_runs.csv`` and ``ablation_recipe.yaml`` to ``out``."""
    log = log or (lambda line: print(line, file=sys.stderr))
    if seeds < 2:
        raise ConfigError(f"seeds: must be >= 2 (a confidence interval needs at least two "
                          f"runs per variant), got {seeds}")
    check_resources(cpus_per_trial, gpus_per_trial)
    if epochs is not None:
        try:
            recipe = recipe.replace(epochs=epochs)
        except ConfigError as e:
            raise e.at("epochs") from None
    if recipe.pretrained != "none" and Path(recipe.pretrained).is_file():
        # tasks may run in another working directory (or on another node)
        recipe = recipe.replace(pretrained=str(Path(recipe.pretrained).resolve()))
    if gpus_per_trial == 0:
        recipe.check_device("cpu")
    out = Path(out)
    check_folder_target(out, "out")
    todo, skipped = variants(recipe, on_gpu=gpus_per_trial > 0)
    seed_list = [(recipe.seed + i) % 2**31 for i in range(seeds)]
    jobs = [(name, s, r.replace(seed=s)) for name, r in {"baseline": recipe, **todo}.items()
            for s in seed_list]
    runs = train_all(jobs, label="strategy", metrics=("test_acc", "val_acc"),
                     cpus=cpus_per_trial, gpus=gpus_per_trial, address=address, log=log)
    table = summarise(runs, recipe, todo, skipped)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / ABLATION_CSV, index=False)
    runs.to_csv(out / RUNS_CSV, index=False)
    recipe.to_yaml(out / RECIPE_FILE)
    return AblationResult(table=table, runs=runs, out=out)


def default_out(recipe_path: str | Path) -> Path:
    """Beside the recipe when it is an experiment's best_recipe.yaml (so `cnn-tuner report`
    shows the ablation), else ``runs/ablate-<recipe name>``."""
    from tuner.running.settings import SETTINGS_FILE

    p = Path(recipe_path)
    if (p.parent / SETTINGS_FILE).is_file():
        return p.parent
    return Path("runs") / f"ablate-{p.stem}"

