"""Benchmark 5, short trials: 40 one-epoch trials on digits, three ways.

* tuner: ``tuner.tune`` (tpe searcher, fifo scheduler: ASHA has nothing to stop in one epoch),
  as a user calls it; and the same with ``max_concurrent=2`` (``tuner_max_concurrent``), which
  is what the fix proposed in BENCHMARKS.md would make the default;
* raw_ray: a hand-written Ray Tune function trainable with Ray's defaults (random search, no
  actor reuse, one CPU per trial) calling the same ``trainables.loop.train``; the dataset is
  passed with ``tune.with_parameters``, as Ray's docs advise (so it is not reloaded per trial);
* optuna: Optuna in one process, TPE, ``n_jobs=2`` threads, the same ``train`` per trial.

All train the same recipe family: the knobs drawn (lr, weight decay, label smoothing, dropout)
do not change the cost of a trial. Every variant loads its dataset inside its timed region;
``ray.init`` (once per process) is reported on its own and excluded from the Ray walls, and
Optuna runs before Ray starts. Headlines: tuner / raw_ray (target <= 0.5) and tuner / optuna
(target <= 1.1, issue 15; 2 before it).

``profile``: where each side's core-seconds go (2 cores x wall): inside its trials (a tuner
trial's Ray ``time_total_s``: fetching the data, building the model, the epoch, the test,
reporting and checkpointing; an Optuna trial's ``objective`` call), of which the epochs
(``epoch_time_s`` of each row: training and validation), and outside any trial (starting the
workers, Ray's scheduling and bookkeeping between trials, TPE, the tail where one core waits);
``cpu_s_by_process``: the CPU seconds each kind of process spent meanwhile (the driver; Ray's
raylet, GCS and other agents; its workers, where the trials run), read from /proc.

    python benchmarks/short_trials.py [--trials 40] [--width 16] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import torch
from _common import (
    Timer,
    TreeCPU,
    emit,
    median,
    quiet_optuna,
    ray_local,
    stdout_to_stderr,
    trial_results,
)

TARGET_RAW, TARGET_OPTUNA = 0.5, 1.1


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--skip-fix", action="store_true",
                   help="skip the tuner run with max_concurrent=2")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 4 tiny trials, no max_concurrent variant")
    args = p.parse_args()
    if args.quick:
        args.trials, args.width, args.image_size, args.skip_fix = 4, 16, 16, True
    return args


def space_dict(args: argparse.Namespace) -> dict[str, Any]:
    return {"dataset": "digits", "image_size": args.image_size, "width": args.width,
            "epochs": 1, "batch_size": 128,
            "lr": {"loguniform": [1e-3, 0.5]}, "weight_decay": {"loguniform": [1e-5, 1e-2]},
            "label_smoothing": {"uniform": [0.0, 0.2]}, "dropout": {"uniform": [0.0, 0.5]}}


def run_optuna(args: argparse.Namespace) -> dict[str, Any]:
    """Optuna TPE in this process, 2 threads, one epoch per trial."""
    from search_spaces import SearchSpace, to_optuna_space
    from trainables.data import load_data
    from trainables.loop import train
    from trainables.recipe import Recipe

    optuna = quiet_optuna()
    space = SearchSpace.from_dict(space_dict(args))
    torch.set_num_threads(1)  # per-thread intra-op parallelism: 2 jobs x 1 thread = 2 cores
    start = time.perf_counter()
    data = load_data("digits", image_size=args.image_size)

    suggest = to_optuna_space(space)  # define-by-run: conditional knobs only when active

    trial_s: list[float] = []
    epochs_s: list[float] = []

    def objective(trial: Any) -> float:
        began = time.perf_counter()
        result = train(Recipe.from_dict(suggest(trial)), data, "cpu")
        trial_s.append(time.perf_counter() - began)
        epochs_s.append(sum(row["epoch_time_s"] for row in result.history))
        return result.final["val_acc"]

    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=max(4, args.trials // 4))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    with TreeCPU() as cpu:
        study.optimize(objective, n_trials=args.trials, n_jobs=2)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "best_val_acc": study.best_value,
            "profile": {**core_seconds(wall, trial_s, epochs_s), "cpu_s_by_process": cpu.seconds}}


def core_seconds(wall: float, trial_s: list[float], epochs_s: list[float],
                 cores: int = 2) -> dict[str, float]:
    """Where ``cores`` x ``wall`` core-seconds went: in trials (of which epochs), and outside."""
    offered, in_trials, epochs = cores * wall, sum(trial_s), sum(epochs_s)
    return {"core_s": offered, "in_trials_s": in_trials, "epochs_s": epochs,
            "in_trials_not_epochs_s": in_trials - epochs, "outside_trials_s": offered - in_trials,
            "trial_s_median": median(trial_s), "epoch_s_median": median(epochs_s),
            "outside_trials_per_trial_s": (offered - in_trials) / len(trial_s)}


def run_tuner(args: argparse.Namespace, tmp: str, name: str,
              max_concurrent: int | None) -> dict[str, Any]:
    from tuner import Resources, RunConfig, TuneConfig, tune

    with TreeCPU() as cpu:
        res = tune(space_dict(args), num_samples=args.trials,
                   tune_config=TuneConfig(searcher="tpe", scheduler="fifo",
                                          max_concurrent=max_concurrent, seed=0),
                   resources=Resources(cpus_per_trial=1),
                   run_config=RunConfig(storage=tmp, name=name, verbose=0))
    df = res.dataframe
    rows = [trial_results(p) for p in df["path"]]
    pids = {r["pid"] for trial in rows for r in trial}
    wall = res.summary["wall_time_s"]
    return {"wall_s": wall, "best_val_acc": res.summary["best_val_acc"],
            "errored": int((df["status"] == "errored").sum()), "actors": len(pids),
            "profile": {**core_seconds(wall, [t[-1]["time_total_s"] for t in rows if t],
                                       [sum(r.get("epoch_time_s", 0.0) for r in t)
                                        for t in rows if t]),
                        "cpu_s_by_process": cpu.seconds}}


def raw_trainable(config: dict[str, Any], data: Any = None) -> None:
    """What a user writes without the platform: config -> Recipe -> train, report per epoch."""
    from ray import tune

    from trainables.loop import train
    from trainables.recipe import Recipe

    recipe = Recipe.from_dict({k: v for k, v in config.items() if v is not None})
    train(recipe, data, "cpu",
          lambda m, state: tune.report({"val_acc": m["val_acc"], "epoch": m["epoch"]}))


def run_raw_ray(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    from ray import tune

    from trainables.data import load_data

    with Timer() as t:
        data = load_data("digits", image_size=args.image_size)
        fixed = {k: v for k, v in space_dict(args).items() if not isinstance(v, dict)}
        param_space = {**fixed, "lr": tune.loguniform(1e-3, 0.5),
                       "weight_decay": tune.loguniform(1e-5, 1e-2),
                       "label_smoothing": tune.uniform(0.0, 0.2),
                       "dropout": tune.uniform(0.0, 0.5)}
        tuner = tune.Tuner(tune.with_parameters(raw_trainable, data=data),
                           param_space=param_space,
                           tune_config=tune.TuneConfig(metric="val_acc", mode="max",
                                                       num_samples=args.trials),
                           run_config=tune.RunConfig(name="raw", storage_path=tmp, verbose=0))
        grid = tuner.fit()
    best = grid.get_best_result()
    return {"wall_s": t.s, "best_val_acc": best.metrics["val_acc"],
            "errored": sum(r.error is not None for r in grid)}


def main() -> None:
    args = parse_args()
    import ray.tune  # noqa: F401  (imports outside the timed regions, for every variant)

    import tuner.running.runner  # noqa: F401

    out: dict[str, Any] = {}
    with stdout_to_stderr():
        out["optuna"] = run_optuna(args)
        with ray_local(2) as ray_init_s, tempfile.TemporaryDirectory() as tmp:
            out["tuner"] = run_tuner(args, tmp, "short-tuner", None)
            if not args.skip_fix:
                out["tuner_max_concurrent"] = run_tuner(args, tmp, "short-tuner-mc2", 2)
            out["raw_ray"] = run_raw_ray(args, tmp)
    wall = {k: v["wall_s"] for k, v in out.items()}
    ratio_raw = wall["tuner"] / wall["raw_ray"]
    ratio_optuna = wall["tuner"] / wall["optuna"]
    figures: dict[str, Any] = {
        "wall_s": wall, "ray_init_s": ray_init_s,
        "ratio_raw": ratio_raw, "ratio_optuna": ratio_optuna,
        "ratio_optuna_incl_ray_init": (wall["tuner"] + ray_init_s) / wall["optuna"],
        "best_val_acc": {k: v["best_val_acc"] for k, v in out.items()},
        "tuner_actors": out["tuner"]["actors"],
        "profile": {k: v["profile"] for k, v in out.items() if "profile" in v},
        "errored": {k: v.get("errored", 0) for k, v in out.items()},
    }
    if "tuner_max_concurrent" in out:
        mc = wall["tuner_max_concurrent"]
        figures.update(ratio_raw_max_concurrent=mc / wall["raw_ray"],
                       ratio_optuna_max_concurrent=mc / wall["optuna"],
                       tuner_max_concurrent_actors=out["tuner_max_concurrent"]["actors"])
    emit("short_trials", figures, ratio=ratio_raw, target=f"tuner / raw_ray <= {TARGET_RAW}",
         met=ratio_raw <= TARGET_RAW, ratio_optuna=ratio_optuna,
         target_optuna=f"tuner / optuna <= {TARGET_OPTUNA:g}",
         met_optuna=ratio_optuna <= TARGET_OPTUNA, args=args)


if __name__ == "__main__":
    main()
