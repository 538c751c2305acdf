"""Confirmation over seeds: how often is a search's single-run winner not the best by mean?

``--runs`` searches of the ``quick`` preset, each as ``cnn-tuner run`` does it by default (TPE +
ASHA, 16 trials, the preset's epochs) with searcher seed 0, 1, ...; each then confirms its top
``--top`` trials with ``--seeds`` new seeds each (``TuneConfig(confirm_top=, confirm_seeds=)``,
the path of ``run --confirm-top``). Per run: the single-run winner, the best by mean, whether
they differ, both recipes' means and the best's 95% CI. Headline ratio: the fraction of runs whose
winner changed; no target (a measurement, not a promise). Also: the mean gain, in points of the
metric, of taking the best by mean over the single-run winner (both means over the same seeds).

    python benchmarks/confirm_winner.py [--runs 3] [--top 4] [--seeds 3]
    python benchmarks/confirm_winner.py --num-samples 4 --max-epochs 2   # a smoke run
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

from _common import emit, mean, parse_fixed, ray_local, stdout_to_stderr


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="quick", help="preset name or YAML file")
    p.add_argument("--fixed", nargs="*", default=[], help="KNOB=VALUE fixed on top of the space")
    p.add_argument("--runs", type=int, default=3, help="searches, with searcher seeds 0..N-1")
    p.add_argument("--num-samples", type=int, default=None, help="trials per search (16)")
    p.add_argument("--max-epochs", type=int, default=None, help="(default: the space's)")
    p.add_argument("--top", type=int, default=4, help="trials confirmed per search")
    p.add_argument("--seeds", type=int, default=3, help="seeds per confirmed trial")
    return p.parse_args()


def one_run(args: argparse.Namespace, seed: int, tmp: str) -> dict[str, Any]:
    """A search with confirmation; what the confirmation found."""
    import pandas as pd

    from tuner import RunConfig, TuneConfig, tune
    from tuner.running.confirm import CONFIRM_CSV

    res = tune(args.space, num_samples=args.num_samples, max_epochs=args.max_epochs,
               fixed=parse_fixed(args.fixed),
               tune_config=TuneConfig(seed=seed, confirm_top=args.top, confirm_seeds=args.seeds),
               run_config=RunConfig(storage=tmp, name=f"confirm-{seed}", verbose=0))
    c = res.summary.get("confirmed")
    if not c:
        return {"seed": seed, "confirmed": False, "errored": res.summary["errored"]}
    table = pd.read_csv(f"{res.path}/{CONFIRM_CSV}", dtype={"trial_id": str})
    single_mean = float(table.set_index("trial_id").loc[c["single_run_best_trial"], "mean"])
    return {"seed": seed, "confirmed": True, "winner_changed": c["winner_changed"],
            "single_run_best_trial": c["single_run_best_trial"],
            "best_trial_by_mean": c["best_trial_by_mean"],
            "single_run_best_mean": single_mean, "best_mean": c["mean"],
            "best_ci": [c["ci_low"], c["ci_high"]], "confirmed_trials": c["top"],
            "metric": c["metric"], "wall_s": res.summary["wall_time_s"],
            "errored": res.summary["errored"]}


def main() -> None:
    args = parse_args()
    import tuner.running.runner  # noqa: F401  (Ray and hyperopt imports before the runs)

    runs: list[dict[str, Any]] = []
    with stdout_to_stderr(), ray_local(2) as ray_init_s, tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.runs):
            runs.append(one_run(args, seed, tmp))
            print("run", seed, runs[-1], flush=True)  # progress, on stderr
    done = [r for r in runs if r["confirmed"]]
    changed = sum(r["winner_changed"] for r in done)
    fraction = changed / len(done) if done else None
    gain = mean([100 * abs(r["best_mean"] - r["single_run_best_mean"]) for r in done])
    emit("confirm_winner", {"runs": len(runs), "confirmed_runs": len(done),
                            "winner_changed": changed, "winner_changed_fraction": fraction,
                            "mean_gain_points": gain, "per_run": runs,
                            "ray_init_s": ray_init_s},
         ratio=fraction, target=(f"measured: how often the single-run best differs from the "
                                 f"best by mean (top {args.top}, {args.seeds} seeds)"),
         met=None, args=args)


if __name__ == "__main__":
    main()
