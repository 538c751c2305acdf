"""What a model costs: parameters, FLOPs per image and inference latency. Pure torch.

Every trial measures these once, at its start, on its own device (``trainables.loop``), and they
go into every per-epoch row beside ``train_time_s``, the seconds spent training so far:

- ``params``: every parameter; ``params_trainable``: those still trained after ``freeze``;
- ``flops``: forward FLOPs for one image at the data's channels and size, counted by torch's
  ``FlopCounterMode`` (2 per multiply-accumulate of convolutions, linear layers and matmuls;
  normalisation, activations and pooling are not counted, as in most papers' FLOPs);
- ``latency_ms``: the median of ``timed`` forward passes at batch 1 after ``warmup`` ones, in
  eval mode under no_grad, with the trial's precision and memory format, on the trial's device
  (CUDA synchronised around each pass), eager even when the trial trains a ``torch.compile``d
  model (compiling costs more than measuring); ``latency_device`` names that device ("cpu", or the
  CUDA device's name). Both loops stop early after ``time_cap_s`` (at least 3 timed passes),
  so a big model on a slow CPU costs about a second, not minutes.

Measuring changes nothing the training sees: eval mode (no BatchNorm statistics updated, no
dropout), zeros as the input (no random numbers drawn), no gradients.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any

import torch
import torch.nn as nn

__all__ = ["COST_KEYS", "count_flops", "count_params", "device_name", "measure_cost",
           "measure_latency_ms"]

# the keys measure_cost returns (train_time_s is the loop's): the columns results.csv gets
COST_KEYS = ("params", "params_trainable", "flops", "latency_ms", "latency_device")
WARMUP, TIMED, TIME_CAP_S = 5, 20, 1.0


def count_params(model: nn.Module) -> tuple[int, int]:
    """(all parameters, those with requires_grad): ``freeze`` lowers the second only."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Any:
    """Eval mode for the duration, then each module's own mode back (frozen BatchNorm layers
    stay in eval mode during training: see trainables.parts.apply_freeze)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """Forward FLOPs of ``model`` on ``example`` (a batch of one for FLOPs per image)."""
    # here, not at the top: it imports triton (0.1 s), and the driver needs only COST_KEYS
    from torch.utils.flop_counter import FlopCounterMode

    with _eval_mode(model), torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            model(example)
    return int(counter.get_total_flops())


def device_name(device: torch.device) -> str:
    """'cpu', or the CUDA device's name (e.g. 'NVIDIA H100 80GB HBM3')."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def measure_latency_ms(model: nn.Module, example: torch.Tensor, *, warmup: int = WARMUP,
                       timed: int = TIMED, time_cap_s: float = TIME_CAP_S,
                       autocast: contextlib.AbstractContextManager | None = None) -> float:
    """Median milliseconds of a forward pass of ``example`` after ``warmup`` passes; each loop
    ends early once it has taken ``time_cap_s`` (the timed one after at least 3 passes)."""
    cuda = example.device.type == "cuda"
    times: list[float] = []
    with _eval_mode(model), torch.no_grad(), autocast or contextlib.nullcontext():
        start = time.perf_counter()
        for _ in range(warmup):
            model(example)
            if time.perf_counter() - start > time_cap_s:
                break
        if cuda:
            torch.cuda.synchronize(example.device)
        start = time.perf_counter()
        for i in range(max(timed, 1)):
            t0 = time.perf_counter()
            model(example)
            if cuda:
                torch.cuda.synchronize(example.device)
            times.append(time.perf_counter() - t0)
            if i >= 2 and time.perf_counter() - start > time_cap_s:
                break
    return statistics.median(times) * 1e3


def measure_cost(model: nn.Module, example: torch.Tensor, *,
                 autocast: contextlib.AbstractContextManager | None = None,
                 latency: bool = True) -> dict[str, Any]:
    """The COST_KEYS of ``model`` for ``example`` (one image: shape (1, C, H, W), on the
    model's device and in its memory format). ``latency=False`` leaves the latency keys out
    (a resumed trial keeps the latency it measured before)."""
    total, trainable = count_params(model)
    cost: dict[str, Any] = {"params": total, "params_trainable": trainable,
                            "flops": count_flops(model, example)}
    if latency:
        cost["latency_ms"] = measure_latency_ms(model, example, autocast=autocast)
        cost["latency_device"] = device_name(example.device)
    return cost
