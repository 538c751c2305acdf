"""Time to accuracy: wall time from process start until a run holds a recipe with test_acc >= 0.99.

Three ways to search digits, each a fresh Python process (so imports, Ray start and data loading
count alike), run ``--runs`` times with seeds 0, 1, 2, ... interleaved (default, raw_ray, optuna,
default, ...):

* default: ``cnn-tuner run`` exactly as a user runs it (quick preset, tpe + asha, 16 trials,
  12 epochs), as ``python -m tuner.cli run --storage TMP --name default-SEED --verbose 0
  --seed SEED``;
* raw_ray: a plain Ray Tune script as a user writes it: ``ray.init(address="local")``,
  ``tune.Tuner`` over a function trainable, HyperOptSearch (``--trials // 4`` start-up points,
  at least 4) behind a ``ConcurrencyLimiter`` of 2, ASHA (grace 1 epoch, reduction factor 3,
  the product's rungs), one CPU per trial, the data passed with ``tune.with_parameters``;
* optuna: Optuna in one process: TPE sampler (same start-up points), successive-halving pruner
  (same rungs), ``n_jobs=2`` threads, one torch thread each.

The two baselines search their own good recipe space (``BASELINE_SPACE``): a LeNet-like CNN
(two 3x3 conv + ReLU + max-pool stages at ``width`` and ``2 * width`` channels, a 128-unit hidden
layer) at 16x16, trained by ``_bare.bare_train`` (SGD with Nesterov momentum, OneCycle, optional
pad-and-crop), over lr, batch size, weight decay, width and augmentation, ``--trials`` trials
of ``--epochs`` epochs. Their data are the project's digits splits
(``trainables.data.load_data``), so all three are scored on the same 359 test images.

Definitions (times in seconds since the parent started the process):

* a trial has *ended* when it ran to its last epoch on its own (completed, or stopped by its own
  early-stopping rule): only then does it report ``test_acc``. Trials stopped by ASHA or a pruner
  never report one;
* ``tta_s``: the time of the first ended trial with ``test_acc >= --target``, or None;
* ``tta_incumbent_s``: the first time the run's best ended trial so far (highest val_acc; the
  first to reach it on ties) has ``test_acc >= --target``: what a user who picks by validation
  would hold; or None;
* ``final_best_test_acc``: the test_acc of the best ended trial by val_acc (``summary.json``'s
  ``best_test_acc`` for the default run, the same rule for the baselines);
* ``summary_s`` (default run): process start until its summary's first line is printed, which
  ``cnn-tuner run`` does before shutting Ray down;
* ``wall_s``: process start to process exit;
* ``first_result_s``: the time of the first epoch any trial reported (start-up cost: imports,
  data, Ray and worker start).

Times of results are Ray's ``timestamp`` (whole seconds, rounded down), and the Optuna baseline
rounds its own down the same way, so ``tta_s`` and ``first_result_s`` have a resolution of 1 s.

Headline (issue 15): the default run's median ``summary_s`` <= 30 s with final test_acc >= target
in every run; ``ratio`` = median default ``summary_s`` / 30 s.

    python benchmarks/time_to_accuracy.py [--runs 3] [--target 0.99] [--quick]
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from _bare import BareData, bare_train
from _common import emit, mean, median, stdout_to_stderr, trial_results

from tuner.running.schedulers import ASHA_GRACE

TARGET_WALL_S = 30.0
SUMMARY_LINE = re.compile(r"^\d+ trials: ")  # the first line of `cnn-tuner run`'s summary
METHODS = ("default", "raw_ray", "optuna")
GRACE_PERIOD, REDUCTION_FACTOR = ASHA_GRACE, 3  # the product's ASHA rungs, for both baselines
BASELINE_IMAGE_SIZE = 16  # digits are 8x8 scans: 16x16 loses nothing
# The baselines' own space, plain data: (kind, arguments), converted for Ray Tune and Optuna below.
BASELINE_SPACE: dict[str, tuple[str, Any]] = {
    "lr": ("loguniform", (0.01, 0.5)),  # peak of the OneCycle schedule, SGD + Nesterov
    "batch_size": ("choice", (32, 64, 128)),
    "weight_decay": ("loguniform", (1e-5, 1e-3)),  # on weights only
    "width": ("choice", (16, 32)),  # conv channels: width, 2 * width
    "pad": ("choice", (0, 2)),  # pad-and-crop augmentation off / on
}
HERE = os.path.dirname(os.path.abspath(__file__))
CHILD_ARGS = ("child", "seed", "storage", "out")  # internal: how the parent starts a baseline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="runs per method, seeds 0..N-1")
    p.add_argument("--target", type=float, default=0.99, help="test_acc to reach")
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    p.add_argument("--trials", type=int, default=16, help="trials per baseline run")
    p.add_argument("--epochs", type=int, default=12, help="epochs per baseline trial")
    p.add_argument("--default-args", default="",
                   help='extra flags for the default run, one string: --default-args="--set '
                        'image_size=16"')
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 run each, 4 trials of 3 epochs everywhere")
    # the two baselines run this file again as a child process
    p.add_argument("--child", choices=("raw_ray", "optuna"), help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--storage", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.default_args = shlex.split(args.default_args)
    if args.quick:
        args.runs, args.trials, args.epochs = 1, 4, 3
        args.default_args = ["--num-samples", "4", "--max-epochs", "3", *args.default_args]
    return args


# -- the baselines' model, data and space -------------------------------------------------------

class LeNet(nn.Module):
    """LeNet-like: [conv3x3, ReLU, max-pool] at width and 2 * width, then 128 hidden units."""

    def __init__(self, in_channels: int, num_classes: int, width: int, image_size: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * (image_size // 4) ** 2, 128), nn.ReLU(),
            nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def baseline_data() -> BareData:
    """The project's digits splits as plain tensors (workers need only torch and _bare)."""
    from trainables.data import load_data

    d = load_data("digits", image_size=BASELINE_IMAGE_SIZE)
    return BareData(d.train_x, d.train_y, d.val_x, d.val_y, d.test_x, d.test_y, d.mean, d.std)


def train_baseline(config: dict[str, Any], data: BareData, epochs: int, seed: int,
                   on_epoch: Callable[[dict[str, Any]], None]) -> None:
    """One baseline trial; ``on_epoch`` gets val_acc every epoch and test_acc after the last."""
    num_classes = int(data.train_y.max()) + 1
    bare_train(lambda: LeNet(data.train_x.shape[1], num_classes, config["width"],
                             BASELINE_IMAGE_SIZE),
               data, epochs=epochs, batch_size=config["batch_size"], lr=config["lr"],
               weight_decay=config["weight_decay"], pad=config["pad"], seed=seed,
               on_epoch=on_epoch)


def ray_space() -> dict[str, Any]:
    from ray import tune

    kinds = {"loguniform": lambda a: tune.loguniform(*a), "choice": lambda a: tune.choice(a)}
    return {k: kinds[kind](list(a)) for k, (kind, a) in BASELINE_SPACE.items()}


def optuna_suggest(trial: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, (kind, a) in BASELINE_SPACE.items():
        out[k] = (trial.suggest_float(k, *a, log=True) if kind == "loguniform"
                  else trial.suggest_categorical(k, list(a)))
    return out


def startup_points(trials: int) -> int:
    return max(4, trials // 4)


# -- children: the two baseline scripts ---------------------------------------------------------

def raw_trainable(config: dict[str, Any], data: BareData, epochs: int, seed: int) -> None:
    """The function trainable (``data``, ``epochs`` and ``seed`` bound by with_parameters)."""
    from ray import tune

    def report(m: dict[str, Any]) -> None:
        row = {"epoch": m["epoch"], "val_acc": m["val_acc"]}
        if "test_acc" in m:
            row["test_acc"] = m["test_acc"]
        tune.report(row)

    train_baseline(config, data, epochs, seed, report)


def child_raw_ray(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.hyperopt import HyperOptSearch

    marks = {"imported": time.time()}
    data = baseline_data()
    marks["data_loaded"] = time.time()
    ray.init(address="local")  # a new local Ray, never another user's cluster on this machine
    marks["ray_started"] = time.time()
    searcher = HyperOptSearch(n_initial_points=startup_points(args.trials),
                              random_state_seed=args.seed)
    tuner = tune.Tuner(
        tune.with_parameters(raw_trainable, data=data, epochs=args.epochs, seed=args.seed),
        param_space=ray_space(),
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", num_samples=args.trials,
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=2),
            scheduler=ASHAScheduler(max_t=args.epochs, grace_period=GRACE_PERIOD,
                                    reduction_factor=REDUCTION_FACTOR)),
        run_config=tune.RunConfig(name="raw", storage_path=args.storage, verbose=0))
    grid = tuner.fit()
    return {"marks": marks, "errored": sum(r.error is not None for r in grid)}


def child_optuna(args: argparse.Namespace) -> dict[str, Any]:
    from _common import quiet_optuna

    optuna = quiet_optuna()
    torch.set_num_threads(1)  # 2 jobs x 1 thread = 2 cores
    marks = {"imported": time.time()}
    data = baseline_data()
    marks["data_loaded"] = time.time()
    rows: list[dict[str, Any]] = []

    def objective(trial: Any) -> float:
        config = optuna_suggest(trial)
        last: dict[str, Any] = {}

        def report(m: dict[str, Any]) -> None:
            row = {"trial": trial.number, "epoch": m["epoch"], "val_acc": m["val_acc"],
                   "timestamp": int(time.time())}  # whole seconds, as Ray's
            if "test_acc" in m:
                row["test_acc"] = m["test_acc"]
            rows.append(row)
            last.update(row)
            trial.report(m["val_acc"], m["epoch"])
            if m["epoch"] < args.epochs and trial.should_prune():
                raise optuna.TrialPruned()

        train_baseline(config, data, args.epochs, args.seed, report)
        return last["val_acc"]

    sampler = optuna.samplers.TPESampler(seed=args.seed,
                                         n_startup_trials=startup_points(args.trials))
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=GRACE_PERIOD,
                                                    reduction_factor=REDUCTION_FACTOR)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    study.optimize(objective, n_trials=args.trials, n_jobs=2)
    failed = sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
    return {"marks": marks, "rows": rows, "errored": failed}


# -- the parent: run, time, score ---------------------------------------------------------------

def run_process(cmd: list[str]) -> tuple[float, float, float | None]:
    """Run ``cmd`` (its output on our stderr); return (start epoch time, wall seconds, seconds
    until its stdout printed a run summary's first line, ``N trials: ...``, or None)."""
    start, t0 = time.time(), time.perf_counter()
    summary_s = None
    with subprocess.Popen(cmd, cwd=os.path.dirname(HERE), stdout=subprocess.PIPE,
                          text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if summary_s is None and SUMMARY_LINE.match(line):
                summary_s = time.perf_counter() - t0
            sys.stderr.write(line)
        rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"exit status {rc} from: {' '.join(cmd)}")
    return start, wall, summary_s


def ray_rows(experiment: str) -> list[dict[str, Any]]:
    """Every result row of every trial of a Ray Tune experiment folder."""
    rows = []
    for path in sorted(glob.glob(os.path.join(experiment, "*", "result.json"))):
        rows += trial_results(os.path.dirname(path))
    return rows


def score(rows: list[dict[str, Any]], start: float, target: float) -> dict[str, Any]:
    """tta_s, tta_incumbent_s, final_best_test_acc and first_result_s from result rows."""
    ended = sorted((r["timestamp"] - start, r["val_acc"], r["test_acc"]) for r in rows
                   if r.get("test_acc") is not None)
    tta = next((t for t, _, test in ended if test >= target), None)
    tta_incumbent, best_val, best_test = None, -math.inf, None
    for t, val, test in ended:
        if val > best_val:
            best_val, best_test = val, test
        if tta_incumbent is None and best_test is not None and best_test >= target:
            tta_incumbent = t
    return {"tta_s": tta, "tta_incumbent_s": tta_incumbent, "final_best_test_acc": best_test,
            "first_result_s": min((r["timestamp"] - start for r in rows), default=None),
            "trials_ended": len(ended)}


def run_default(args: argparse.Namespace, seed: int, tmp: str) -> dict[str, Any]:
    name = f"default-{seed}"
    start, wall, summary_s = run_process([
        sys.executable, "-m", "tuner.cli", "run", "--storage", tmp, "--name", name,
        "--verbose", "0", "--seed", str(seed), *args.default_args])
    experiment = os.path.join(tmp, name)
    with open(os.path.join(experiment, "summary.json")) as f:
        summary = json.load(f)
    out = {"wall_s": wall, "summary_s": summary_s,
           **score(ray_rows(experiment), start, args.target)}
    out.update(final_best_test_acc=summary["best_test_acc"], tune_wall_s=summary["wall_time_s"],
               trial_epochs=summary["total_trial_epochs"], errored=summary["errored"])
    return out


def run_baseline(method: str, args: argparse.Namespace, seed: int, tmp: str) -> dict[str, Any]:
    storage = os.path.join(tmp, f"{method}-{seed}")
    out_file = storage + ".json"
    start, wall, _ = run_process([
        sys.executable, os.path.join(HERE, "time_to_accuracy.py"), "--child", method, "--seed",
        str(seed), "--trials", str(args.trials), "--epochs", str(args.epochs), "--storage",
        storage, "--out", out_file])
    with open(out_file) as f:
        child = json.load(f)
    rows = child["rows"] if method == "optuna" else ray_rows(os.path.join(storage, "raw"))
    out = {"wall_s": wall, **score(rows, start, args.target), "errored": child["errored"]}
    out.update({f"{k}_s": v - start for k, v in child["marks"].items()})
    if "ray_started_s" in out:
        out["ray_init_s"] = out["ray_started_s"] - out["data_loaded_s"]
    return out


def summarise(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    reached = [r["tta_s"] for r in runs if r["tta_s"] is not None]
    walls = [r["wall_s"] for r in runs]
    return {
        "tta_median_s": median(reached) if reached else None,
        "tta_mean_s": mean(reached) if reached else None,
        "not_reached": len(runs) - len(reached),
        "not_reached_seeds": [s for s, r in zip(seeds, runs, strict=True) if r["tta_s"] is None],
        "wall_median_s": median(walls), "wall_mean_s": mean(walls),
        # the default run prints its summary before Ray's shutdown; a baseline ends at its exit
        "summary_median_s": median([r.get("summary_s") or r["wall_s"] for r in runs]),
        "final_best_test_acc": [r["final_best_test_acc"] for r in runs],
        "per_run": runs,
    }


def parent(args: argparse.Namespace) -> None:
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
    seeds = list(range(args.runs))
    with stdout_to_stderr(), tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for method in args.methods:
                r = (run_default(args, seed, tmp) if method == "default"
                     else run_baseline(method, args, seed, tmp))
                runs[method].append(r)
                print(method, seed, r, flush=True)  # progress, on stderr
    methods = {m: summarise(rs, seeds) for m, rs in runs.items()}
    ratio = met = None
    if "default" in methods:
        d = methods["default"]
        ratio = d["summary_median_s"] / TARGET_WALL_S
        met = ratio <= 1 and all(a is not None and a >= args.target
                                 for a in d["final_best_test_acc"])
    emit("time_to_accuracy", {"methods": methods, "seeds": seeds},
         ratio=ratio, target=(f"default run: median wall <= {TARGET_WALL_S:g} s (process start "
                              f"to summary) and final test_acc >= {args.target} in every run"),
         met=met, args=argparse.Namespace(**{k: v for k, v in vars(args).items()
                                             if k not in CHILD_ARGS}))


def main() -> None:
    args = parse_args()
    if args.child is None:
        parent(args)
        return
    with stdout_to_stderr():
        result = child_raw_ray(args) if args.child == "raw_ray" else child_optuna(args)
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
