"""Benchmark, multi-objective search on digits: val_acc (max) against params (min).

Three searches of the same space with the same ``--num-samples`` and ``--max-epochs``, each
repeated over ``--seeds``, all through ``tuner.tune`` with ``objectives=("val_acc:max",
"params:min")``:

* random_fifo: random search, every trial to its end (the baseline);
* random_moasha: random search with the multi-objective ASHA (tuner.running.mo_asha: rungs
  promote by non-dominated sorting, crowding-distance tie-break);
* optuna_fifo: Optuna's multi-objective TPE through Ray's OptunaSearch, every trial to its end;
* random_moasha_2x: random_moasha with twice the trials (the same first ones: the random
  generator draws in order), so about random_fifo's trial-epochs: what the early stops buy.

Each run's hypervolume-so-far is measured against cumulative trial-epochs (a trial counts when
it ends on its own; tuner.analysis.front_plots.hypervolume_points), with ONE reference point for
every run: val_acc 0 and 1.1 x the largest params of any trial of any run (printed). Headline
ratio: the trial-epochs random_moasha needs to reach random_fifo's final hypervolume (same
seed), over random_fifo's trial-epochs, mean over seeds (a seed where it never gets there counts
as its whole budget, and is listed). Target: <= 0.5. The same figure is printed for
random_moasha_2x, with each run's final hypervolume over random_fifo's.

The space is the quick preset with width widened to 4-32 (so params spans ~40x) and
``--fixed`` knobs on top (default image_size=16 batch_size=128).

    python benchmarks/multi_objective.py [--num-samples 24] [--max-epochs 9] [--seeds 3]
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

from _common import emit, mean, parse_fixed, ray_local, stdout_to_stderr

TARGET = 0.5
OBJECTIVES = ("val_acc:max", "params:min")
# name -> (searcher, scheduler, num_samples multiplier)
METHODS = {"random_fifo": ("random", "fifo", 1), "random_moasha": ("random", "asha", 1),
           "optuna_fifo": ("optuna", "fifo", 1), "random_moasha_2x": ("random", "asha", 2)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fixed", nargs="*", default=["image_size=16", "batch_size=128"],
                   help="KNOB=VALUE fixed on top of the space")
    p.add_argument("--num-samples", type=int, default=24)
    p.add_argument("--max-epochs", type=int, default=9)
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    p.add_argument("--quick", action="store_true", help="smoke run: 6 samples, 3 epochs, 1 seed")
    args = p.parse_args()
    if args.quick:
        args.num_samples, args.max_epochs, args.seeds = 6, 3, 1
    return args


def space(args: argparse.Namespace) -> dict[str, Any]:
    from search_spaces import load_space

    base = load_space("quick").to_dict()
    return {**base, "width": {"qrandint": [4, 32, 4]}, **parse_fixed(args.fixed)}


def run(args: argparse.Namespace, method: str, seed: int, tmp: str) -> dict[str, Any]:
    from tuner import RunConfig, TuneConfig, tune
    from tuner.analysis.front_plots import hypervolume_points
    from tuner.analysis.report import epoch_events, load_experiment
    from tuner.running.pareto import parse_objectives

    searcher, scheduler, times = METHODS[method]
    res = tune(space(args), num_samples=times * args.num_samples, max_epochs=args.max_epochs,
               tune_config=TuneConfig(searcher=searcher, scheduler=scheduler, seed=seed,
                                      objectives=OBJECTIVES),
               run_config=RunConfig(storage=tmp, name=f"{method}-{seed}", verbose=0))
    exp = load_experiment(res.path)
    points = hypervolume_points(exp.trials, epoch_events(exp.curves, "val_acc"),
                                parse_objectives(OBJECTIVES))
    return {"trial_epochs": res.summary["total_trial_epochs"],
            "front_size": len(res.summary["pareto_front"]), "points": points,
            "max_params": float(res.dataframe["params"].max()),
            "errored": res.summary["errored"]}


def epochs_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((x for x, hv in curve if hv >= target - 1e-12), None)


def main() -> None:
    args = parse_args()
    import tuner.running.runner  # noqa: F401  (Ray and Optuna imports before the runs)
    from tuner.running.pareto import hypervolume_curve, parse_objectives

    objectives = parse_objectives(OBJECTIVES)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    with stdout_to_stderr(), ray_local(2) as ray_init_s, tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for method in METHODS:
                runs[method].append(run(args, method, seed, tmp))
                r = runs[method][-1]
                print(method, seed, {k: v for k, v in r.items() if k != "points"}, flush=True)
    reference = (0.0, 1.1 * max(r["max_params"] for rs in runs.values() for r in rs))
    for rs in runs.values():
        for r in rs:
            r["curve"] = hypervolume_curve(r.pop("points"), objectives, reference)
            r["final_hv"] = r["curve"][-1][1] if r["curve"] else 0.0
    reach: dict[str, dict[str, list]] = {}
    for method in ("random_moasha", "random_moasha_2x"):
        fractions, missed, share = [], [], []
        for seed in range(args.seeds):
            base, mo = runs["random_fifo"][seed], runs[method][seed]
            reached = epochs_to_reach(mo["curve"], base["final_hv"])
            if reached is None:
                missed.append(seed)
                reached = mo["trial_epochs"]
            fractions.append(reached / base["trial_epochs"])
            share.append(mo["final_hv"] / base["final_hv"])
        reach[method] = {"fraction_per_seed": fractions, "never_reached_seeds": missed,
                         "final_hv_over_fifo_per_seed": share}
    fractions, missed = (reach["random_moasha"]["fraction_per_seed"],
                         reach["random_moasha"]["never_reached_seeds"])
    summary = {m: {"trial_epochs": mean([r["trial_epochs"] for r in rs]),
                   "final_hypervolume": mean([r["final_hv"] for r in rs]),
                   "front_size": mean([r["front_size"] for r in rs]),
                   "per_seed": [{"trial_epochs": r["trial_epochs"], "final_hv": r["final_hv"],
                                 "curve": r["curve"]} for r in rs]}
               for m, rs in runs.items()}
    ratio = mean(fractions)
    emit("multi_objective", {"searches": summary, "reference_point": list(reference),
                             "reach_fifo_final_hv": reach, "ray_init_s": ray_init_s},
         ratio=ratio, target=(f"random_moasha reaches random_fifo's final hypervolume within "
                              f"{TARGET} of its trial-epochs (mean over seeds)"),
         met=ratio <= TARGET and not missed, args=args)


if __name__ == "__main__":
    main()
