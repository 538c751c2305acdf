"""Benchmark 7b/7c, GPU packing and data-parallel scaling (issue 12 §5 b, c).

(b) Packing: the aggregate trial-epochs/s of 1, 2, 4 and 8 concurrent trials on ONE GPU through
fractional ``gpus_per_trial`` (1/k each), for simple_cnn and resnet_small on 32x32 synthetic
images. Every trial is the product's trainable (``tuner.running.runner.build_trainable``) inside
a Ray Tune ``Tuner``, k trials started together (``max_concurrent_trials=k``), the same recipe
with different seeds. Per trial, its steady epoch rate is ``epochs after the first /
their time_this_iter_s`` (epoch 1 holds CUDA start-up and cuDNN's algorithm choice; the time
includes validation, the report and the checkpoint); the aggregate is the sum over the k trials.
``wall_rate`` (all trial-epochs / the Tuner's wall, start-up included) is given beside it, and
``start_skew_s`` says how far apart the k trials began (a large skew would overstate the sum).
Headline: simple_cnn's aggregate at 4 per GPU / at 1 per GPU; target >= 2.5 (fused training of
small models, HFTA MLSys 2021, reports 2.5-15x).

(c) Data parallel, when the machine has 2 or more GPUs: one ResNet-18 trial at 64x64 with
``workers_per_trial`` 1 and then 2 (one GPU each, Ray Train DDP over NCCL, the same global
batch); the steady median of the rows' ``images_per_s`` (the global batch's images, all-reduced
time). Target: 2 workers >= 1.7x one.

Without CUDA it prints one JSON line with ``"skipped": "no CUDA"`` and exits 0. ``--allow-cpu``
runs the same code on the CPU as a smoke test, not a measurement: a "device" is one CPU, packing
1 and 2 trials through fractional ``cpus_per_trial``, and (c) with 2 gloo workers.

    python benchmarks/gpu_packing.py [--per-gpu 1 2 4 8] [--epochs 6] [--skip-ddp]
                                     [--models simple_cnn resnet_small] [--allow-cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

import torch
from _common import emit, median, ray_local, stdout_to_stderr, trial_results
from gpu_throughput import synthetic_splits

PACKING_TARGET, DDP_TARGET = 2.5, 1.7
LR = 0.05  # per 128 images; random-pattern labels never diverge at this rate


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-gpu", type=int, nargs="+", default=[1, 2, 4, 8],
                   help="concurrent trials per GPU to measure")
    p.add_argument("--models", nargs="+", default=["simple_cnn", "resnet_small"])
    p.add_argument("--epochs", type=int, default=6, help="epochs per trial (>= 2)")
    p.add_argument("--train-images", type=int, default=10240)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--ddp-train-images", type=int, default=32768)
    p.add_argument("--ddp-batch-size", type=int, default=256)
    p.add_argument("--skip-ddp", action="store_true", help="skip (c)")
    p.add_argument("--allow-cpu", action="store_true",
                   help="smoke-test on the CPU (tiny sizes, 1 and 2 trials per CPU); not a "
                        "measurement")
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (epoch 1 is excluded from the steady state)")
    args.cpu_smoke = args.allow_cpu and not torch.cuda.is_available()
    if args.cpu_smoke:
        args.per_gpu, args.models, args.epochs = [1, 2], ["simple_cnn"], 2
        args.train_images, args.ddp_train_images, args.ddp_batch_size = 512, 512, 64
    return args


def knobs(model: str, image_size: int, batch_size: int, epochs: int, small: bool) -> dict:
    out = {"dataset": "synthetic", "image_size": image_size, "model": model,
           "batch_size": batch_size, "epochs": epochs, "aug_crop": "none", "lr": LR}
    if small:  # CPU smoke (the callers pass 16 px)
        out["width"] = 8
    return out


def run_trials(settings: Any, data: Any, param_space: dict, name: str, tmp: str,
               concurrent: int) -> tuple[list[list[dict]], float]:
    """Run the product's trainable over ``param_space`` in a Tuner; each trial's rows, wall."""
    from ray.tune import RunConfig, TuneConfig, Tuner

    from tuner.running.runner import build_trainable

    tuner = Tuner(build_trainable(settings, data), param_space=param_space,
                  tune_config=TuneConfig(max_concurrent_trials=concurrent, reuse_actors=False),
                  run_config=RunConfig(name=name, storage_path=tmp, verbose=0))
    start = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - start
    rows = []
    for result in grid:
        if result.error is not None:
            raise RuntimeError(f"{name}: a trial failed: {result.error}")
        rows.append(trial_results(result.path))
    return rows, wall


def packing(args: argparse.Namespace) -> dict[str, Any]:
    """(b): for each model and k, k trials at 1/k of the device each. On a GPU each trial
    reserves the same CPU share at every k (1, or less where the machine cannot give the
    largest k one each), so only the GPU share changes."""
    cpus = min(1.0, (os.cpu_count() or 2) / max(args.per_gpu))
    from ray import tune

    from tuner.running.settings import RunSettings

    size = 16 if args.cpu_smoke else 32
    data = synthetic_splits(args.train_images, size, "cpu")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            per_model: dict[str, Any] = {}
            for k in args.per_gpu:
                share = 1 / k
                settings = RunSettings(
                    space={}, cpus_per_trial=share if args.cpu_smoke else cpus,
                    gpus_per_trial=0 if args.cpu_smoke else share)
                space = {**knobs(model, size, args.batch_size, args.epochs, args.cpu_smoke),
                         "seed": tune.grid_search(list(range(k)))}
                rows, wall = run_trials(settings, data, space, f"{model}-{k}", tmp, k)
                steady = [r[1:] for r in rows]
                rates = [len(s) / sum(x["time_this_iter_s"] for x in s) for s in steady]
                starts = [r[0]["timestamp"] - r[0]["time_this_iter_s"] for r in rows]
                per_model[str(k)] = {
                    "aggregate_trial_epochs_per_s": sum(rates),
                    "per_trial_epochs_per_s": median(rates),
                    "wall_rate": sum(len(r) for r in rows) / wall, "wall_s": wall,
                    "start_skew_s": max(starts) - min(starts),
                    "epoch_images_per_s_per_trial": median(
                        [x["images_per_s"] for s in steady for x in s]),
                    "devices": sorted({r[0].get("device", "?") for r in rows})}
                print(f"gpu_packing: {model} x{k}: {per_model[str(k)]}", file=sys.stderr)
            base = per_model[str(args.per_gpu[0])]["aggregate_trial_epochs_per_s"]
            for figures in per_model.values():
                figures["vs_first"] = figures["aggregate_trial_epochs_per_s"] / base
            out[model] = per_model
    return out


def data_parallel(args: argparse.Namespace) -> dict[str, Any]:
    """(c): one ResNet-18 trial at 64x64, 1 worker then 2 (a GPU each), the same global batch."""
    from tuner.running.settings import RunSettings

    size = 16 if args.cpu_smoke else 64
    model = "simple_cnn" if args.cpu_smoke else "resnet18"
    data = synthetic_splits(args.ddp_train_images, size, "cpu")
    space = {**knobs(model, size, args.ddp_batch_size, args.epochs, args.cpu_smoke), "seed": 0}
    out: dict[str, Any] = {"model": model, "image_size": size}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            settings = RunSettings(space={}, workers_per_trial=workers,
                                   cpus_per_trial=0.5 if args.cpu_smoke else 2,
                                   gpus_per_trial=0 if args.cpu_smoke else 1)
            rows, wall = run_trials(settings, data, space, f"ddp-{workers}", tmp, 1)
            steady = rows[0][1:]
            out[str(workers)] = {"images_per_s": median([r["images_per_s"] for r in steady]),
                                 "world_size": steady[-1].get("world_size"), "wall_s": wall}
    out["speedup"] = out["2"]["images_per_s"] / out["1"]["images_per_s"]
    return out


def main() -> int:
    args = parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        emit("gpu_packing", {"skipped": "no CUDA"}, ratio=None,
             target=f"4 trials per GPU >= {PACKING_TARGET}x 1 per GPU (simple_cnn)", met=None)
        print("skipped: no CUDA", file=sys.stderr)
        return 0
    gpus = torch.cuda.device_count()
    cpus = os.cpu_count() or 2
    figures: dict[str, Any] = {"gpus": gpus, "cpu_smoke": args.cpu_smoke}
    with stdout_to_stderr():
        # (b) on one GPU: Ray is told of one, so every fraction shares GPU 0
        with ray_local(2 if args.cpu_smoke else cpus, num_gpus=0 if args.cpu_smoke else 1):
            figures["packing"] = packing(args)
        if args.skip_ddp:
            figures["data_parallel"] = "skipped: --skip-ddp"
        elif gpus >= 2 or args.cpu_smoke:
            with ray_local(2 if args.cpu_smoke else cpus, num_gpus=min(gpus, 2)):
                figures["data_parallel"] = data_parallel(args)
        else:
            figures["data_parallel"] = f"skipped: {gpus} GPU (needs 2)"
    ratio = None
    simple = figures["packing"].get("simple_cnn", {})
    if "1" in simple and "4" in simple:
        ratio = simple["4"]["aggregate_trial_epochs_per_s"] / \
            simple["1"]["aggregate_trial_epochs_per_s"]
    ddp = figures["data_parallel"]
    figures["data_parallel_met"] = (ddp["speedup"] >= DDP_TARGET
                                    if isinstance(ddp, dict) and not args.cpu_smoke else None)
    emit("gpu_packing", figures, ratio=ratio,
         target=f"4 trials per GPU >= {PACKING_TARGET}x 1 per GPU (simple_cnn); "
                f"2-GPU DDP >= {DDP_TARGET}x 1 GPU (resnet18, 64 px)",
         met=None if ratio is None or args.cpu_smoke else ratio >= PACKING_TARGET, args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
