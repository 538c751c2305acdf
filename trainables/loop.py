"""The pure training loop: ``train(recipe, data, device, report)``. No Ray in here.

Data lives on the training device as uint8 tensors; each batch is sliced, augmented per image
and normalised there, so there is no DataLoader and no per-image Python. Host syncs happen once
per epoch (metrics) and, for the non-finite-loss guard, every step on CPU (free there) and every
``NONFINITE_CHECK_EVERY`` steps on CUDA.

``report(metrics, state)`` is called once per epoch with the epoch's metrics and a zero-argument
function returning the checkpoint dict (called only if the caller wants a checkpoint). The last
epoch's metrics also carry ``test_acc`` (held-out split, used nowhere else) and ``stop_reason``:
completed | early_stopped | non_finite_loss.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from trainables.augment import AugmentConfig, Augmenter, mix_batch
from trainables.data import DataSplits, load_recipe_data
from trainables.errors import first_line
from trainables.models import build_model
from trainables.optim import LRSchedule, build_optimizer, effective_lr
from trainables.parts import apply_freeze, param_groups
from trainables.recipe import Recipe

Report = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], Any]
NONFINITE_CHECK_EVERY = 25  # CUDA steps between host syncs of the loss guard
# A mean cross-entropy above this many nats means the true class's probability underflows
# float32 (e^-104 already does): the loss is "finite" only because log-softmax is computed
# stably. Such a run has diverged (AdamW at lr 1000 stays here, never reaching NaN), so the
# guard treats it like NaN/inf.
DIVERGED_LOSS = 1e4
EVAL_BATCH = 1024


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on CUDA where supported, else fp16; fp32 on CPU (slow bf16 on most CPUs)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


class TrialOutOfMemory(RuntimeError):
    """The device ran out of memory; the message names the batch size and what to try."""


def _finite(loss: torch.Tensor | float) -> bool:
    """False for NaN/inf and for a diverged loss (see DIVERGED_LOSS)."""
    value = float(loss)
    return math.isfinite(value) and value < DIVERGED_LOSS


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    model: torch.nn.Module

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1]


@dataclass
class _EarlyStop:
    patience: int
    min_delta: float
    best: float = -math.inf
    bad_epochs: int = 0

    def update(self, val_acc: float) -> bool:
        """Record an epoch; True when patience has run out."""
        if val_acc > self.best + self.min_delta:
            self.best, self.bad_epochs = val_acc, 0
        else:
            self.bad_epochs += 1
        return self.patience > 0 and self.bad_epochs >= self.patience


@dataclass
class Trainer:
    """Everything one run needs, built from a Recipe. ``train()`` drives it epoch by epoch."""

    recipe: Recipe
    data: DataSplits
    device: torch.device
    precision: str = field(init=False)

    def __post_init__(self) -> None:
        r, dev = self.recipe, self.device
        r.check_device(dev.type)
        self.precision = resolve_precision(r.precision, dev)
        torch.manual_seed(r.seed)
        self.gen = torch.Generator(device=dev).manual_seed(r.seed)
        self.data = self.data.to(dev)
        self.model = build_model(r.model, in_channels=self.data.in_channels,
                                 num_classes=self.data.num_classes, width=r.width,
                                 batch_norm=r.batch_norm, bn_momentum=r.bn_momentum,
                                 dropout=r.dropout, pretrained=r.pretrained,
                                 download=r.download).to(dev)
        self.memory_format = torch.channels_last if r.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        apply_freeze(self.model, r.freeze)
        groups = param_groups(self.model, lr=effective_lr(r), backbone_lr_mult=r.backbone_lr_mult,
                              weight_decay=r.weight_decay)
        self.optimizer = build_optimizer(r, groups)
        n = len(self.data.train_y)
        self.steps_per_epoch = max(1, n // r.batch_size + (n % r.batch_size >= 2))
        self.schedule = LRSchedule(r, self.optimizer, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.forward = torch.compile(self.model) if r.compile else self.model
        self.augment = Augmenter(AugmentConfig.from_recipe(r))
        self.mean = torch.tensor(self.data.mean, device=dev).view(1, -1, 1, 1)
        self.std = torch.tensor(self.data.std, device=dev).view(1, -1, 1, 1)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.early = _EarlyStop(r.early_stop_patience, r.early_stop_min_delta)

    # -- pieces ---------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @staticmethod
    def _prepare(x_uint8: torch.Tensor) -> torch.Tensor:
        return x_uint8.float().div_(255)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training split; returns train_loss, train_acc, images_per_s."""
        r, d = self.recipe, self.data
        self.model.train()
        n = len(d.train_y)
        perm = torch.randperm(n, generator=self.gen, device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen, nonfinite = 0, False
        sync_every = 1 if self.device.type == "cpu" else NONFINITE_CHECK_EVERY
        mixing = r.mixup_alpha > 0 or r.cutmix_alpha > 0
        start = time.perf_counter()
        for step in range(self.steps_per_epoch):
            idx = perm[step * r.batch_size:(step + 1) * r.batch_size]
            x, y = self._prepare(d.train_x[idx]), d.train_y[idx]
            if self.augment.cfg.enabled:
                x = self.augment(x, self.gen)
            target = y
            if mixing:
                x, target = mix_batch(x, y, d.num_classes, r.mixup_alpha, r.cutmix_alpha,
                                      self.gen)
            x = self._normalise(x)
            with self.autocast():
                logits = self.forward(x)
                loss = F.cross_entropy(logits.float(), target, label_smoothing=r.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.schedule.after_batch()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if (step + 1) % sync_every == 0 and not _finite(loss_sum / seen):
                nonfinite = True
                break
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        train_loss = loss_sum.item() / max(seen, 1)
        return {"train_loss": train_loss, "train_acc": correct.item() / max(seen, 1),
                "images_per_s": seen / max(elapsed, 1e-9),
                "non_finite": nonfinite or not _finite(train_loss)}

    @torch.no_grad()
    def evaluate(self, split: str) -> tuple[float, float]:
        """(loss, accuracy) on 'val' or 'test', without augmentation."""
        x_all, y_all = getattr(self.data, f"{split}_x"), getattr(self.data, f"{split}_y")
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        for i in range(0, len(y_all), EVAL_BATCH):
            x = self._normalise(self._prepare(x_all[i:i + EVAL_BATCH]))
            y = y_all[i:i + EVAL_BATCH]
            with self.autocast():
                logits = self.forward(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        n = max(len(y_all), 1)
        return loss_sum.item() / n, correct.item() / n

    # -- checkpoint state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly, and to use the model as `pretrained` later."""
        state = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "recipe": self.recipe.to_dict(), "history": self.history,
            "early_stop": {"best": self.early.best, "bad_epochs": self.early.bad_epochs},
            "num_classes": self.data.num_classes, "in_channels": self.data.in_channels,
            "classes": list(self.data.classes), "mean": list(self.data.mean),
            "std": list(self.data.std),
            "rng": {"torch": torch.get_rng_state(), "generator": self.gen.get_state()},
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint. When the checkpoint's recipe differs from this one (a PBT
        exploit: same weights, mutated knobs such as lr), the weights and progress are kept,
        and the optimizer and LR schedule restart under the new knobs, fast-forwarded to the
        same point of the schedule."""
        self.model.load_state_dict(state["model"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.early.best = float(state["early_stop"]["best"])
        self.early.bad_epochs = int(state["early_stop"]["bad_epochs"])
        torch.set_rng_state(state["rng"]["torch"])
        self.gen.set_state(state["rng"]["generator"].to(self.gen.get_state().device))
        if state["recipe"] == self.recipe.to_dict():
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            self.scaler.load_state_dict(state["scaler"])
            return
        with warnings.catch_warnings():  # scheduler steps without optimizer steps, on purpose
            warnings.simplefilter("ignore")
            for past in self.history[:self.epoch]:
                for _ in range(self.steps_per_epoch):
                    self.schedule.after_batch()
                self.schedule.after_epoch(past["val_loss"])

    # -- the epoch ---------------------------------------------------------------------------
    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch, validate, decide whether to stop; the metrics of the epoch."""
        start = time.perf_counter()
        lr = self.optimizer.param_groups[-1]["lr"]
        try:
            m: dict[str, Any] = self.train_epoch()
        except torch.OutOfMemoryError as e:
            r = self.recipe
            raise TrialOutOfMemory(
                f"out of memory on {self.device} at batch_size={r.batch_size} (model "
                f"{r.model}, width {r.width}, image_size {self.data.image_size}, precision "
                f"{self.precision}): try a smaller batch_size, e.g. {max(1, r.batch_size // 2)}"
                f" ({first_line(e, 120)})") from None
        non_finite = m.pop("non_finite")
        val_loss, val_acc = self.evaluate("val")
        self.schedule.after_epoch(val_loss)
        self.epoch += 1
        m.update(epoch=self.epoch, val_loss=val_loss, val_acc=val_acc, lr=lr,
                 precision=self.precision)
        stop = None
        if non_finite or not _finite(val_loss):
            stop = "non_finite_loss"
        elif self.early.update(val_acc):
            stop = "early_stopped"
        elif self.epoch >= self.recipe.epochs:
            stop = "completed"
        if stop:
            m["test_acc"] = self.evaluate("test")[1]
            m["stop_reason"] = stop
        m["epoch_time_s"] = time.perf_counter() - start
        self.history.append(m)
        return m


def train(recipe: Recipe, data: DataSplits | None = None,
          device: str | torch.device | None = None, report: Report | None = None, *,
          resume: dict[str, Any] | None = None) -> TrainResult:
    """Train ``recipe``; call ``report(metrics, state_fn)`` after every epoch.

    ``data`` defaults to loading the recipe's dataset; ``device`` to CUDA when available;
    ``resume`` is a checkpoint dict from ``Trainer.state_dict`` (continues where it stopped).
    """
    if data is None:
        data = load_recipe_data(recipe)
    trainer = Trainer(recipe, data, resolve_device(device))
    if resume is not None:
        trainer.load_state_dict(resume)
    while not (trainer.history and "stop_reason" in trainer.history[-1]):
        metrics = trainer.run_epoch()
        if report is not None:
            report(dict(metrics), trainer.state_dict)
    return TrainResult(history=trainer.history, model=trainer.model)
