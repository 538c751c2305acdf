"""Benchmark 12, memory format: the quick preset's model in NHWC (``channels_last``) vs NCHW order.

One torch thread (what a trial on one CPU gets), the quick preset's simple_cnn (width 16, digits'
1x16x16 images as the preset has them since 2026-12-02, ``--image-size 32`` before; batch 128,
SGD with Nesterov momentum): the time of a training step (forward, cross-entropy, backward,
optimizer step) and of an evaluation forward, the two formats
interleaved over ``--rounds`` rounds of ``--steps`` steps each (after 3 warm-up steps). Headline:
the median NCHW / NHWC training-step time, so > 1 means channels_last is faster. It measures
the kernels only; BENCHMARKS.md section 10 measures the whole default run with and without it.

    python benchmarks/memory_format.py [--width 16] [--image-size 16] [--steps 40] [--rounds 4]
        [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _common import emit, median, stdout_to_stderr

TARGET = 1.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=40, help="timed steps per round and format")
    p.add_argument("--rounds", type=int, default=4, help="rounds, formats interleaved")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 5 steps")
    args = p.parse_args()
    if args.quick:
        args.steps, args.rounds = 5, 2
    return args


def measure(fmt: torch.memory_format, args: argparse.Namespace) -> tuple[float, float]:
    """Seconds per training step and per evaluation forward, ``args.steps`` each."""
    from trainables.models import build_model

    torch.manual_seed(0)  # the registry's model, as the training loop builds it
    model = build_model("simple_cnn", in_channels=1, num_classes=10, width=args.width)
    model = model.to(memory_format=fmt)
    x = torch.randn(args.batch_size, 1, args.image_size, args.image_size)
    x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (args.batch_size,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    train_s = (time.perf_counter() - start) / args.steps
    model.eval()
    with torch.inference_mode():
        model(x)
        start = time.perf_counter()
        for _ in range(args.steps):
            model(x)
    return train_s, (time.perf_counter() - start) / args.steps


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    formats = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
    train_ms: dict[str, list[float]] = {k: [] for k in formats}
    eval_ms: dict[str, list[float]] = {k: [] for k in formats}
    with stdout_to_stderr():
        for _ in range(args.rounds):
            for name, fmt in formats.items():
                t, e = measure(fmt, args)
                train_ms[name].append(1000 * t)
                eval_ms[name].append(1000 * e)
    train_med = {k: median(v) for k, v in train_ms.items()}
    eval_med = {k: median(v) for k, v in eval_ms.items()}
    ratio = train_med["nchw"] / train_med["channels_last"]
    emit("memory_format", {"train_step_ms": train_med, "eval_ms": eval_med,
                           "train_ratio": ratio,
                           "eval_ratio": eval_med["nchw"] / eval_med["channels_last"],
                           "train_step_ms_rounds": train_ms},
         ratio=ratio, target=f"> {TARGET} (channels_last faster)", met=ratio > TARGET, args=args)


if __name__ == "__main__":
    main()
