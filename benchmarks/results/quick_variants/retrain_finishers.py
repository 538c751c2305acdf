"""Retrain every finisher of finished `cnn-tuner run` experiments with one knob changed, to ask
what that knob costs the trials a search already chose (a paired comparison: same recipe, same
seed, one knob different).

    python benchmarks/results/quick_variants/retrain_finishers.py STORAGE_DIR PREFIX,... \
        KNOB=VALUE [--workers 2] > OUT.jsonl

For each experiment folder under STORAGE_DIR whose name's first `_` part is in PREFIXES, it takes
the trials that ran all their epochs (stop_reason completed), retrains each recipe in-process
(`trainables.loop.Trainer`, CPU, one thread per worker) with KNOB set to VALUE (a YAML scalar),
and prints one JSON line per trial: its knobs, the val_acc, val_loss and test_acc it had in the
search (`stored_*`) and the retrained ones (`new_*`). A trial already at VALUE is not retrained
(training is deterministic on CPU: the stored numbers are what a retraining gives). The last line
summarises: trials testing >= 0.99 before and after, mean test_acc, and per experiment the
finisher the pick rule in use (`tuner.running.results.best_first`) would choose among them.

    python benchmarks/results/quick_variants/retrain_finishers.py --summary OUT.jsonl

prints that summary line again from the trial lines of an earlier output.
"""

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import torch
import yaml

from trainables.data import load_recipe_data
from trainables.loop import Trainer, resolve_device
from trainables.recipe import Recipe
from tuner.running.results import best_first


def finishers(root: Path, prefixes: list[str]) -> list[tuple[str, dict, dict]]:
    out = []
    for exp in sorted(p for p in root.iterdir() if p.is_dir()):
        if exp.name.split("_")[0] not in prefixes:
            continue
        for trial in sorted(exp.glob("trial_*")):
            rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()
                    if line.strip()]
            if rows and rows[-1].get("stop_reason") == "completed":
                params = json.loads((trial / "params.json").read_text())
                out.append((f"{exp.name}/{trial.name}", params, rows[-1]))
    return out


def retrain(job: tuple[str, dict, dict, str, object]) -> dict:
    name, params, last, knob, value = job
    row = {"trial": name, **params, "stored_val_acc": last["val_acc"],
           "stored_val_loss": last["val_loss"], "stored_test_acc": last["test_acc"]}
    if params.get(knob) == value:
        return {**row, "new_val_acc": last["val_acc"], "new_val_loss": last["val_loss"],
                "new_test_acc": last["test_acc"]}
    torch.set_num_threads(1)
    recipe = Recipe.from_dict({**params, knob: value})
    trainer = Trainer(recipe, load_recipe_data(recipe), resolve_device("cpu"))
    trainer.check_start()
    while not trainer.ended:
        metrics = trainer.run_epoch()
    return {**row, "new_val_acc": metrics["val_acc"], "new_val_loss": metrics["val_loss"],
            "new_test_acc": metrics["test_acc"]}


def summary(rows: list[dict]) -> dict:
    df = pd.DataFrame(rows)
    df["experiment"] = df.trial.str.split("/").str[0]
    out = {"trials": len(df)}
    for side in ("stored", "new"):
        view = df.rename(columns={f"{side}_val_acc": "val_acc", f"{side}_val_loss": "val_loss"})
        picks = [best_first(g, "val_acc", "max").iloc[0] for _, g in view.groupby("experiment")]
        out[side] = {"test_ge_0.99": int((df[f"{side}_test_acc"] >= 0.99).sum()),
                     "mean_test_acc": round(float(df[f"{side}_test_acc"].mean()), 4),
                     "picks_ge_0.99": int(sum(p[f"{side}_test_acc"] >= 0.99 for p in picks)),
                     "picks": len(picks)}
    return out


def main() -> None:
    if sys.argv[1:2] == ["--summary"]:
        lines = [json.loads(line) for line in Path(sys.argv[2]).read_text().splitlines()]
        print(json.dumps({"summary": summary([r for r in lines if "trial" in r])}))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("storage", type=Path)
    parser.add_argument("prefixes", help="comma-separated experiment name prefixes")
    parser.add_argument("assignment", metavar="KNOB=VALUE")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    knob, _, text = args.assignment.partition("=")
    value = yaml.safe_load(text)
    jobs = [(*f, knob, value) for f in finishers(args.storage, args.prefixes.split(","))]
    rows = []
    with ProcessPoolExecutor(args.workers) as pool:
        for row in pool.map(retrain, jobs):
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps({"summary": summary(rows), "changed": {knob: value}}))


if __name__ == "__main__":
    main()
