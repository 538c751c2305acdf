"""Re-pick finished `cnn-tuner run` experiments under other pick rules, to ask whether a rule
with more validation signal than the last epoch's val_acc picks better-testing trials.

    python benchmarks/results/quick_variants/repick.py STORAGE_DIR [PREFIX,...]

For each experiment folder under STORAGE_DIR (its name's first `_` part in PREFIXES, if given)
it takes the trials that ran the whole budget (the ones with a test_acc) and prints, per rule,
the test_acc of the trial the rule picks; then the mean and how many picks test >= 0.99.
Rules: acc+loss (the rule in use: `tuner.running.results.best_first` on val_acc), loss
(last val_loss), last3acc+loss (val_acc averaged over the last 3 epochs, ties by val_loss),
last3loss (val_loss averaged over the last 3 epochs), acc+last3loss.
"""

import sys
from pathlib import Path

import pandas as pd

from tuner.running.results import best_first

OTHER_RULES = {"loss": (["val_loss"], [True]),
         "last3acc+loss": (["l3a", "val_loss"], [False, True]),
         "last3loss": (["l3l"], [True]),
         "acc+last3loss": (["val_acc", "l3l"], [False, True])}
RULES = ["acc+loss", *OTHER_RULES]


def finishers(exp: Path) -> pd.DataFrame:
    df = pd.read_csv(exp / "results.csv")
    pool = df[df.stop_reason.isin(["completed", "early_stopped"]) & df.test_acc.notna()].copy()
    curves = [pd.read_csv(exp / f"trial_{t}" / "progress.csv") for t in pool.trial_id]
    pool["l3a"] = [c.val_acc.tail(3).mean() for c in curves]
    pool["l3l"] = [c.val_loss.tail(3).mean() for c in curves]
    return pool


def main() -> None:
    root = Path(sys.argv[1])
    prefixes = sys.argv[2].split(",") if len(sys.argv) > 2 else None
    rows = []
    for exp in sorted(p for p in root.iterdir() if (p / "results.csv").exists()):
        if prefixes and exp.name.split("_")[0] not in prefixes:
            continue
        pool = finishers(exp)
        in_use = best_first(pool, "val_acc", "max").iloc[0].test_acc
        rows.append([exp.name, in_use] + [pool.sort_values(keys, ascending=asc, kind="stable")
                                          .iloc[0].test_acc for keys, asc in OTHER_RULES.values()])
    out = pd.DataFrame(rows, columns=["run", *RULES])
    print(out.round(4).to_string())
    print("mean", out[RULES].mean().round(4).to_dict())
    print(">= 0.99", (out[RULES] >= 0.99 - 1e-9).sum().to_dict(), "of", len(out))


if __name__ == "__main__":
    main()
