"""Benchmark 4, concurrency: the same 8 one-CPU trials, one at a time vs two at a time.

``tuner.tune`` runs 8 trials of one recipe (they differ only in ``seed``, which costs nothing)
with ``cpus_per_trial=1`` and ``max_concurrent`` 1, then 2, on a 2-CPU local Ray. Headline: wall
time at 1 / wall time at 2 (ideal 2.0). The median trial time at each setting shows how much two
trials slow each other down (shared cores, caches, memory bandwidth, Ray's own processes);
``actors`` counts the worker processes that ran trials (actors are reused between trials).

Other users' load on a shared machine takes cores from the second trial, so before each run
the machine's own 1-vs-2-process speedup is measured (``machine_speedup``: the same fixed
1-thread convolution workload in one process, then in two at once): the trials cannot beat it,
and ``speedup_vs_machine`` = speedup / machine_speedup shows what Ray and the trials lose
beyond what the machine gave at that moment.

The trials tune ``seed`` with the tpe searcher because ``max_concurrent`` is ignored by the
random and grid searchers (see BENCHMARKS.md); seed is drawn, so the 8 trials cost the same.

    python benchmarks/concurrency.py [--trials 8] [--epochs 3] [--width 32] [--repeats 1] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time

from _common import emit, mean, median, ray_local, stdout_to_stderr, trial_results

TARGET = 1.7


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1, help="alternating 1, 2, 1, 2, ...")
    p.add_argument("--burn-iters", type=int, default=150,
                   help="size of the machine-speedup workload (~2 s per 100 on 1 core)")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 tiny 1-epoch trials")
    args = p.parse_args()
    if args.quick:
        args.trials, args.epochs, args.width, args.image_size, args.burn_iters = 4, 1, 16, 16, 30
    return args


def _burn(iters: int) -> float:
    """A fixed 1-thread CPU workload (convolution forward + backward); its seconds."""
    import torch

    torch.set_num_threads(1)
    conv = torch.nn.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(64, 16, 32, 32)
    start = time.perf_counter()
    for _ in range(iters):
        conv(x).sum().backward()
    return time.perf_counter() - start


def machine_speedup(pool: multiprocessing.pool.Pool, iters: int) -> float:
    """2 x (one process alone) / (two processes at once): what the machine gives now."""
    one = pool.apply(_burn, (iters,))
    start = time.perf_counter()
    pool.map(_burn, [iters, iters], chunksize=1)
    return 2 * one / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    from tuner import Resources, RunConfig, TuneConfig, tune

    space = {"dataset": "digits", "image_size": args.image_size, "width": args.width,
             "epochs": args.epochs, "seed": {"randint": [0, 2**20]}}
    runs: dict[int, list[dict]] = {1: [], 2: []}
    machine: list[float] = []
    pool = multiprocessing.get_context("spawn").Pool(2)
    pool.map(_burn, [1, 1], chunksize=1)  # both workers up, torch imported
    with stdout_to_stderr(), ray_local(2) as ray_init_s, tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for conc in (1, 2):
                machine.append(machine_speedup(pool, args.burn_iters))
                res = tune(space, num_samples=args.trials,
                           tune_config=TuneConfig(searcher="tpe", scheduler="fifo",
                                                  max_concurrent=conc, seed=rep),
                           resources=Resources(cpus_per_trial=1),
                           run_config=RunConfig(storage=tmp, name=f"concurrency-{conc}-{rep}",
                                                verbose=0))
                df = res.dataframe
                pids = set()
                for path in df["path"]:
                    pids |= {r["pid"] for r in trial_results(path)}
                runs[conc].append({"wall_s": res.summary["wall_time_s"],
                                   "trial_s": median(list(df["time_total_s"])),
                                   "errored": int((df["status"] == "errored").sum()),
                                   "actors": len(pids)})
    pool.close()
    wall = {c: median([r["wall_s"] for r in rs]) for c, rs in runs.items()}
    trial = {c: median([r["trial_s"] for r in rs]) for c, rs in runs.items()}
    ratio = wall[1] / wall[2]
    figures = {
        "wall_s": {"1": wall[1], "2": wall[2]}, "speedup": ratio,
        "machine_speedup": median(machine), "machine_speedup_each": machine,
        "speedup_vs_machine": ratio / median(machine),
        "median_trial_s": {"1": trial[1], "2": trial[2]},
        "trial_slowdown_2_vs_1": trial[2] / trial[1],
        "actors": {str(c): mean([r["actors"] for r in rs]) for c, rs in runs.items()},
        "errored": sum(r["errored"] for rs in runs.values() for r in rs),
        "trial_epochs": args.trials * args.epochs, "ray_init_s": ray_init_s,
    }
    emit("concurrency", figures, ratio=ratio, target=f"wall(1) / wall(2) >= {TARGET}",
         met=ratio >= TARGET, args=args)


if __name__ == "__main__":
    main()
