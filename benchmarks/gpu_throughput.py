"""Benchmark 6, GPU throughput: ResNet-18 at 32x32, batch 512, synthetic data on the GPU.

Training images/s of the project's loop (``trainables.loop.Trainer``, model ``resnet18`` from
the project's registry) and of the bare loop (``_bare.bare_train`` on a bare
``torchvision.models.resnet18``), for fp32, bf16 autocast, bf16 + channels_last, and bf16 +
channels_last + torch.compile. Each measurement trains one warm-up epoch (compilation, cuDNN
algorithm choice, allocator growth) and one timed epoch of ``--steps`` steps on the same
model. Then the trial-overhead ratio on the GPU: the bf16 + channels_last recipe as a Ray Tune
trial (the product's trainable, ``tuner.running.runner.build_trainable``, one GPU) vs the bare loop,
per epoch from epoch 2 on, counting validation, reporting and checkpointing.

A variant that fails (torch.compile without a working Triton, out of memory, over
``--variant-timeout``) records its error and the run goes on. Without CUDA it prints a JSON
line with ``"skipped": "no CUDA"`` and exits 0 (``--allow-cpu`` runs a tiny smoke test on the
CPU instead). About 3 minutes on an H100.

    python benchmarks/gpu_throughput.py [--steps 200] [--batch-size 512] [--skip-ray]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import torch
from _bare import BareData, bare_train
from _common import emit, median, ray_local, stdout_to_stderr, trial_results

TARGET = 0.95
LR = 0.05  # per 128 images (the project's unit); low enough that random labels never diverge
VARIANTS = {  # name: (precision, channels_last, compile)
    "fp32": ("fp32", False, False),
    "bf16": ("bf16", False, False),
    "bf16_channels_last": ("bf16", True, False),
    "bf16_channels_last_compile": ("bf16", True, True),
}
OVERHEAD_VARIANT = "bf16_channels_last"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200, help="timed steps per measurement")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--ray-epochs", type=int, default=6,
                   help="epochs of the Ray trial (>= 2; epoch 1 is warm-up, the median of the "
                        "rest the steady state)")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--skip-ray", action="store_true", help="skip the Ray trial overhead part")
    p.add_argument("--variant-timeout", type=int, default=240,
                   help="seconds one variant may take (compilation included)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 20 steps, fp32 and bf16 + channels_last, 2 Ray epochs")
    p.add_argument("--allow-cpu", action="store_true",
                   help="smoke-test on the CPU (tiny sizes, no compile); not a measurement")
    args = p.parse_args()
    if args.quick:
        args.steps, args.ray_epochs = 20, 2
        args.variants = ["fp32", "bf16_channels_last"]
    if args.ray_epochs < 2:
        p.error("--ray-epochs must be >= 2 (epoch 1 is excluded from the steady state)")
    if args.allow_cpu and not torch.cuda.is_available():
        args.steps, args.batch_size = 3, 16
        args.variants = [v for v in args.variants if not VARIANTS[v][2]]
    return args


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in the main thread after ``seconds`` (a stuck compile, say)."""
    def fire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"over {seconds}s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def guarded(fn: Callable[[], dict[str, Any]], seconds: int) -> dict[str, Any]:
    """``fn()``'s figures, or {"error": ...} when it fails; frees GPU memory either way."""
    try:
        with deadline(seconds):
            return fn()
    except Exception as e:  # noqa: BLE001  (a failing variant must not end the run)
        traceback.print_exc(file=sys.stderr)
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
                         if str(e).strip() else type(e).__name__}
    finally:
        torch._dynamo.reset()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def synthetic_splits(n_train: int, size: int, device: str) -> Any:
    """Random uint8 images and labels as a DataSplits (what the model learns is irrelevant)."""
    from trainables.data import DataSplits

    g = torch.Generator(device=device).manual_seed(0)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, 3, size, size), generator=g, device=device,
                             dtype=torch.uint8)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, 10, (n,), generator=g, device=device)

    n_eval = 2048
    return DataSplits(name="synthetic", train_x=images(n_train), train_y=labels(n_train),
                      val_x=images(n_eval), val_y=labels(n_eval), test_x=images(n_eval),
                      test_y=labels(n_eval), num_classes=10,
                      classes=[f"class_{i}" for i in range(10)], mean=(0.5,) * 3,
                      std=(0.29,) * 3)


def recipe_knobs(args: argparse.Namespace, variant: str, epochs: int) -> dict[str, Any]:
    precision, channels_last, compile_ = VARIANTS[variant]
    return {"dataset": "synthetic", "image_size": args.image_size, "model": "resnet18",
            "batch_size": args.batch_size, "epochs": epochs, "aug_crop": "none", "lr": LR,
            "precision": precision, "channels_last": channels_last, "compile": compile_,
            "seed": 0}


def project_variant(args: argparse.Namespace, variant: str, data: Any,
                    device: str) -> dict[str, Any]:
    from trainables.loop import Trainer
    from trainables.recipe import Recipe

    trainer = Trainer(Recipe.from_dict(recipe_knobs(args, variant, epochs=2)), data,
                      torch.device(device))
    start = time.perf_counter()
    trainer.train_epoch()  # warm-up
    warm = time.perf_counter() - start
    m = trainer.train_epoch()
    return {"images_per_s": m["images_per_s"], "warmup_s": warm}


def bare_variant(args: argparse.Namespace, variant: str, data: BareData,
                 device: str) -> dict[str, Any]:
    import torchvision

    precision, channels_last, compile_ = VARIANTS[variant]
    hist = bare_train(lambda: torchvision.models.resnet18(num_classes=10), data, epochs=2,
                      batch_size=args.batch_size, lr=LR * args.batch_size / 128, pad=0,
                      device=device, channels_last=channels_last, compile=compile_,
                      amp_dtype=torch.bfloat16 if precision == "bf16" else None,
                      evaluate=False)
    return {"images_per_s": hist[1]["images_per_s"], "warmup_s": hist[0]["train_s"]}


def ray_overhead(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """The bf16 + channels_last recipe as one Ray Tune trial vs the bare loop, per epoch."""
    import torchvision
    from ray.tune import RunConfig, TuneConfig, Tuner

    from tuner.running.runner import build_trainable
    from tuner.running.settings import RunSettings

    n_train = args.steps * args.batch_size
    data = synthetic_splits(n_train, args.image_size, "cpu")  # the object store holds it
    on_gpu = device == "cuda"
    settings = RunSettings(space={}, cpus_per_trial=1, gpus_per_trial=1 if on_gpu else 0)
    knobs = recipe_knobs(args, OVERHEAD_VARIANT, epochs=args.ray_epochs)
    cpus = os.cpu_count() or 1
    with ray_local(cpus) as init_s, tempfile.TemporaryDirectory() as tmp:
        tuner = Tuner(build_trainable(settings, data), param_space=knobs,
                      tune_config=TuneConfig(num_samples=1, reuse_actors=True),
                      run_config=RunConfig(name="gpu-overhead", storage_path=tmp, verbose=0))
        grid = tuner.fit()
        result = next(iter(grid))
        if result.error is not None:
            raise RuntimeError(f"the Ray trial failed: {result.error}")
        rows = trial_results(result.path)
    if len(rows) < 2:
        raise RuntimeError(f"the Ray trial reported {len(rows)} epoch(s), need >= 2 "
                           f"(stop_reason: {rows[-1].get('stop_reason') if rows else None})")
    precision, channels_last, _ = VARIANTS[OVERHEAD_VARIANT]
    bare = bare_train(lambda: torchvision.models.resnet18(num_classes=10),
                      BareData(data.train_x, data.train_y, data.val_x, data.val_y, data.test_x,
                               data.test_y, data.mean, data.std),
                      epochs=args.ray_epochs, batch_size=args.batch_size,
                      lr=LR * args.batch_size / 128, pad=0, device=device,
                      channels_last=channels_last, amp_dtype=torch.bfloat16)
    # steady state: the median epoch after the warm-up one. The last epoch also writes the
    # trial's final checkpoint (once per trial, like ray.init): reported apart, and in the mean.
    c_times = [r["time_this_iter_s"] for r in rows[1:]]
    a_times = [m["epoch_s"] for m in bare[1:]]
    c_epoch, a_epoch = median(c_times), median(a_times)
    c_train = median([r["images_per_s"] for r in rows[1:]])
    a_train = median([m["images_per_s"] for m in bare[1:]])
    return {"variant": OVERHEAD_VARIANT, "ray_init_s": init_s,
            "epoch_images_per_s": {"bare": n_train / a_epoch, "trial": n_train / c_epoch},
            "ratio_trial_bare": a_epoch / c_epoch,
            "ratio_trial_bare_mean_incl_end_checkpoint": (sum(a_times) / len(a_times))
            / (sum(c_times) / len(c_times)),
            "trial_epoch_s": c_times, "bare_epoch_s": a_times,
            "train_only_images_per_s": {"bare": a_train, "trial": c_train},
            "train_only_ratio_trial_bare": c_train / a_train,
            "trial_first_epoch_s": rows[0]["time_this_iter_s"]}


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        emit("gpu_throughput", {"skipped": "no CUDA"}, ratio=None,
             target=f"trial / bare epoch images/s >= {TARGET} on GPU", met=None, args=args)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(1)  # the trial gets 1 CPU; the GPU does the work
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (CPU smoke test)"
    results: dict[str, Any] = {}
    with stdout_to_stderr():
        data = synthetic_splits(args.steps * args.batch_size, args.image_size, device)
        bare_data = BareData(data.train_x, data.train_y, data.val_x, data.val_y, data.test_x,
                             data.test_y, data.mean, data.std)
        for variant in args.variants:
            project = guarded(lambda v=variant, d=data: project_variant(args, v, d, device),
                              args.variant_timeout)
            bare = guarded(lambda v=variant, d=bare_data: bare_variant(args, v, d, device),
                           args.variant_timeout)
            entry = {"project": project, "bare": bare}
            if "images_per_s" in project and "images_per_s" in bare:
                entry["ratio_project_bare"] = project["images_per_s"] / bare["images_per_s"]
            results[variant] = entry
            print(variant, entry, file=sys.stderr, flush=True)
        overhead = None
        if not args.skip_ray:
            overhead = guarded(lambda: ray_overhead(args, device), 2 * args.variant_timeout)
    ratio = overhead.get("ratio_trial_bare") if overhead else None
    emit("gpu_throughput", {"gpu": gpu, "variants": results, "trial_overhead": overhead,
                            "images_per_step": args.batch_size, "timed_steps": args.steps},
         ratio=ratio, target=f"trial / bare epoch images/s >= {TARGET} on GPU",
         met=None if ratio is None else ratio >= TARGET, args=args)


if __name__ == "__main__":
    main()
