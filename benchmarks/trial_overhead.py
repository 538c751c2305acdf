"""Benchmark 1, trial overhead: one recipe, data and seed trained three ways, on the CPU.

(a) ``_bare.bare_train``: a hand-written PyTorch loop that imports nothing from the project;
(b) ``trainables.loop.train`` called directly, without Ray;
(c) the same recipe as a trial inside Ray Tune, through ``tuner.tune`` (one trial, fifo).

The figure compared is the steady-state epoch throughput: training images per second of epoch
wall time (training + validation + reporting + checkpointing), from epoch 2 on (epoch 1 carries
one-time costs: start-up, first-touch allocations). For (c) the epoch time is Ray's
``time_this_iter_s``. One-time costs are reported beside it: (c)'s first epoch, its whole
``tuner.tune`` wall time (actor start, data put, result files) and end-to-end images/s.
Variants run interleaved, ``--repeats`` times; medians are reported. All three must reach the
same val_acc (``same_metrics``), which shows they did the same work.

    python benchmarks/trial_overhead.py [--epochs 3] [--width 32] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from _bare import BareCNN, BareData, bare_train
from _common import Timer, emit, median, ray_local, stdout_to_stderr, trial_results

TARGET = 0.95


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--width", type=int, default=32, help="simple_cnn width (default recipe: 32)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of (a) and (b), CPUs of the trial (c)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 epochs, tiny model")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.width, args.image_size, args.repeats = 2, 16, 16, 1
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (epoch 1 is excluded from the steady state)")
    return args


def main() -> None:
    args = parse_args()
    from trainables.data import load_data
    from trainables.loop import train
    from trainables.recipe import Recipe
    from tuner import Resources, RunConfig, TuneConfig, tune

    torch.set_num_threads(args.threads)
    knobs = {"dataset": "digits", "image_size": args.image_size, "width": args.width,
             "epochs": args.epochs, "seed": 0}
    recipe = Recipe.from_dict(knobs)  # every other knob at its default
    data = load_data("digits", image_size=args.image_size)
    n = len(data.train_y)
    bare_data = BareData(data.train_x, data.train_y, data.val_x, data.val_y, data.test_x,
                         data.test_y, data.mean, data.std)
    epoch_s: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    train_ips: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    total_s: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    val_accs: dict[str, list[float]] = {}
    c_first_epoch_s, c_untracked_s = [], []

    with stdout_to_stderr(), ray_local(2) as ray_init_s, tempfile.TemporaryDirectory() as tmp:
        # warm-up (lazy initialisation, first-touch allocations), not timed
        bare_train(lambda: BareCNN(data.in_channels, data.num_classes, args.width), bare_data,
                   epochs=1, seed=0)
        train(recipe.replace(epochs=1), data, "cpu")
        for rep in range(args.repeats):
            # (a) bare loop
            with Timer() as t:
                hist = bare_train(lambda: BareCNN(data.in_channels, data.num_classes, args.width),
                                  bare_data, epochs=args.epochs, seed=0)
            total_s["a"].append(t.s)
            epoch_s["a"] += [m["epoch_s"] for m in hist[1:]]
            train_ips["a"] += [m["images_per_s"] for m in hist[1:]]
            val_accs["a"] = [m["val_acc"] for m in hist]

            # (b) trainables.loop.train, no Ray: epoch wall = time between reports
            stamps = [time.perf_counter()]
            with Timer() as t:
                res = train(recipe, data, "cpu",
                            lambda m, s, st=stamps: st.append(time.perf_counter()))
            total_s["b"].append(t.s)
            epoch_s["b"] += [b - a for a, b in zip(stamps[1:-1], stamps[2:], strict=True)]
            train_ips["b"] += [m["images_per_s"] for m in res.history[1:]]
            val_accs["b"] = [m["val_acc"] for m in res.history]

            # (c) one trial in Ray Tune
            result = tune(knobs, num_samples=1,
                          tune_config=TuneConfig(searcher="random", scheduler="fifo", seed=0),
                          resources=Resources(cpus_per_trial=args.threads),
                          run_config=RunConfig(storage=tmp, name=f"overhead-{rep}", verbose=0))
            row = result.dataframe.iloc[0]
            if row["status"] == "errored":
                raise RuntimeError(f"the Ray trial failed: {row['error']}")
            rows = trial_results(row["path"])
            total_s["c"].append(result.summary["wall_time_s"])
            epoch_s["c"] += [r["time_this_iter_s"] for r in rows[1:]]
            train_ips["c"] += [r["images_per_s"] for r in rows[1:]]
            val_accs["c"] = [r["val_acc"] for r in rows]
            c_first_epoch_s.append(rows[0]["time_this_iter_s"])
            c_untracked_s.append(result.summary["wall_time_s"] - rows[-1]["time_total_s"])

    ips = {k: n / median(v) for k, v in epoch_s.items()}
    e2e = {k: n * args.epochs / median(v) for k, v in total_s.items()}
    trn = {k: median(v) for k, v in train_ips.items()}
    ratio = ips["c"] / ips["a"]
    figures = {
        "images_per_s": ips, "ratio_b_a": ips["b"] / ips["a"], "ratio_c_a": ratio,
        "train_only_images_per_s": trn, "train_only_ratio_c_a": trn["c"] / trn["a"],
        "end_to_end_images_per_s": e2e, "end_to_end_ratio_c_a": e2e["c"] / e2e["a"],
        "c_first_epoch_s": median(c_first_epoch_s),
        "c_outside_iterations_s": median(c_untracked_s), "ray_init_s": ray_init_s,
        "total_s": {k: median(v) for k, v in total_s.items()},
        "val_acc": val_accs["a"][-1],
        "same_metrics": val_accs["a"] == val_accs["b"] == val_accs["c"],
        "train_images": n, "threads": args.threads,
    }
    emit("trial_overhead", figures, ratio=ratio, target=f"c/a >= {TARGET}",
         met=ratio >= TARGET, args=args)


if __name__ == "__main__":
    main()
