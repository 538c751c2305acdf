"""A bare, hand-written PyTorch training loop that imports nothing from the project.

It is the yardstick of the trial-overhead benchmarks: what an engineer would write by hand for the
same recipe (in-memory uint8 tensors, a batched pad-and-crop, SGD with Nesterov momentum, weight
decay on weights only, OneCycle LR per batch, validation every epoch, test at the end). On CPU it
draws its random numbers in the same order as ``trainables.loop.Trainer`` (global seed, then one
generator for batch order and crop offsets), so for the default recipe it reaches the same
metrics; that is checked, and proves both loops did the same work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn_relu(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class BareCNN(nn.Module):
    """The airbench-style CNN: stem, then 3 stages [conv, pool, BN, ReLU, conv, BN, ReLU] at
    w, 2w, 4w, global average pool, linear (written out here, not imported)."""

    def __init__(self, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = [conv_bn_relu(in_channels, width)]
        c = width
        for c_out in (width, 2 * width, 4 * width):
            blocks.append(nn.Sequential(conv_bn_relu(c, c_out, pool=True),
                                        conv_bn_relu(c_out, c_out)))
            c = c_out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.0),
                                  nn.Linear(c, num_classes))
        for m in self.modules():  # He init, as torchvision's ResNet (and simple_cnn) do
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class BareData:
    """Plain tensors: uint8 (N, C, H, W) images, int64 labels, per-channel mean/std in [0, 1]."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to(self, device: torch.device) -> BareData:
        return BareData(*(t.to(device) for t in (self.train_x, self.train_y, self.val_x,
                                                  self.val_y, self.test_x, self.test_y)),
                        self.mean, self.std)


def pad_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``pad`` and crop back at a random offset per image (two gathers)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)
    cols = ox[:, None] + torch.arange(w, device=x.device)
    x = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
    return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def bare_train(model_fn: Callable[[], nn.Module], data: BareData, *, epochs: int,
               batch_size: int = 128, lr: float = 0.2, momentum: float = 0.9,
               weight_decay: float = 5e-4, pad: int = 2, seed: int = 0,
               device: str | torch.device = "cpu", amp_dtype: torch.dtype | None = None,
               channels_last: bool = False, compile: bool = False, evaluate: bool = True,
               on_epoch: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train ``model_fn()`` and return one dict per epoch (train seconds, images/s, val_acc; the
    last also test_acc). ``lr`` is the learning rate itself (no batch-size scaling)."""
    dev = torch.device(device)
    torch.manual_seed(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    data = data.to(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model_fn().to(dev).to(memory_format=fmt)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, momentum=momentum, nesterov=True)
    n = len(data.train_y)
    steps = n // batch_size + (n % batch_size >= 2)  # a last batch of 1 would upset BatchNorm
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps,
                                                pct_start=0.3, cycle_momentum=False)
    mean = torch.tensor(data.mean, device=dev).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=dev).view(1, -1, 1, 1)
    forward = torch.compile(model) if compile else model
    autocast = (torch.autocast(device_type=dev.type, dtype=amp_dtype) if amp_dtype is not None
                else None)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255)

    def normalise(x: torch.Tensor) -> torch.Tensor:
        return ((x - mean) / std).contiguous(memory_format=fmt)

    def run(x: torch.Tensor) -> torch.Tensor:
        if autocast is None:
            return forward(x)
        with autocast:
            return forward(x)

    @torch.no_grad()
    def accuracy(xs: torch.Tensor, ys: torch.Tensor) -> float:
        model.eval()
        correct = torch.zeros((), device=dev)
        for i in range(0, len(ys), 1024):
            logits = run(normalise(prepare(xs[i:i + 1024]))).float()
            correct += (logits.argmax(1) == ys[i:i + 1024]).sum()
        return correct.item() / max(len(ys), 1)

    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=gen, device=dev)
        loss_sum = torch.zeros((), device=dev)
        for step in range(steps):
            idx = perm[step * batch_size:(step + 1) * batch_size]
            x, y = prepare(data.train_x[idx]), data.train_y[idx]
            if pad:
                x = pad_crop(x, pad, gen).clamp(0.0, 1.0)
            logits = run(normalise(x))
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(y)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - start
        m: dict[str, Any] = {"epoch": epoch, "train_loss": loss_sum.item() / n,
                             "train_s": train_s, "images_per_s": n / train_s}
        if evaluate:
            m["val_acc"] = accuracy(data.val_x, data.val_y)
            if epoch == epochs:
                m["test_acc"] = accuracy(data.test_x, data.test_y)
        m["epoch_s"] = time.perf_counter() - start
        history.append(m)
        if on_epoch is not None:
            on_epoch(m)
    return history
