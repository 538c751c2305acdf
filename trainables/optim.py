"""Optimizers and learning-rate schedules, built from a Recipe with torch.optim.

The schedule is one object with two hooks, ``after_batch()`` and ``after_epoch(val_loss)``, so
the loop does not care whether a torch scheduler steps per batch (cosine, onecycle, warm-up) or
per epoch (step, exponential, plateau). Warm-up is a chained ``LinearLR`` from lr/10; the main
schedule starts when warm-up ends, so ``step_size`` counts epochs after warm-up.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim import lr_scheduler

from trainables.recipe import LR_REFERENCE_BATCH, Recipe

WARMUP_START_FACTOR = 0.1


def effective_lr(recipe: Recipe) -> float:
    """The peak LR used for this batch size: ``lr`` is per 128 images (linear rule for SGD,
    square-root rule for AdamW), so lr and batch_size can be tuned independently."""
    ratio = recipe.batch_size / LR_REFERENCE_BATCH
    return recipe.lr * (math.sqrt(ratio) if recipe.optimizer == "adamw" else ratio)


def build_optimizer(recipe: Recipe, param_groups: list[dict]) -> torch.optim.Optimizer:
    """SGD (optionally Nesterov) or AdamW over groups that already carry lr and weight_decay."""
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=effective_lr(recipe))
    return torch.optim.SGD(param_groups, lr=effective_lr(recipe), momentum=recipe.momentum,
                           nesterov=recipe.optimizer == "nesterov")


class LRSchedule:
    """Drives the torch scheduler(s) of a recipe; ``state_dict`` makes it resumable."""

    def __init__(self, recipe: Recipe, optimizer: torch.optim.Optimizer,
                 steps_per_epoch: int) -> None:
        self.kind = recipe.lr_schedule
        self.steps_per_epoch = steps_per_epoch
        total = recipe.epochs * steps_per_epoch
        self.warmup_steps = 0 if self.kind == "onecycle" else round(
            recipe.warmup_epochs * steps_per_epoch)
        self.batches = 0
        self.main: Any = _main_scheduler(recipe, optimizer, total, self.warmup_steps)
        self.warmup = (lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_START_FACTOR,
                                             total_iters=self.warmup_steps)
                       if self.warmup_steps else None)

    @property
    def per_batch(self) -> bool:
        return self.kind in ("cosine", "onecycle")

    def after_batch(self) -> None:
        self.batches += 1
        if self.batches <= self.warmup_steps:
            self.warmup.step()
        elif self.per_batch and self.main is not None:
            self.main.step()

    def after_epoch(self, val_loss: float) -> None:
        if self.per_batch or self.main is None or self.batches <= self.warmup_steps:
            return
        if isinstance(self.main, lr_scheduler.ReduceLROnPlateau):
            self.main.step(val_loss)
        else:
            self.main.step()

    def state_dict(self) -> dict:
        return {"batches": self.batches,
                "main": self.main.state_dict() if self.main is not None else None,
                "warmup": self.warmup.state_dict() if self.warmup is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.batches = state["batches"]
        if self.main is not None:
            self.main.load_state_dict(state["main"])
        if self.warmup is not None:
            self.warmup.load_state_dict(state["warmup"])


def _main_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer, total_steps: int,
                    warmup_steps: int) -> Any:
    kind = recipe.lr_schedule
    if kind == "constant":
        return None
    if kind == "step":
        return lr_scheduler.StepLR(optimizer, step_size=recipe.step_size, gamma=recipe.gamma)
    if kind == "exponential":
        return lr_scheduler.ExponentialLR(optimizer, gamma=recipe.gamma)
    if kind == "plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, mode="min",
                                              factor=recipe.plateau_factor,
                                              patience=recipe.plateau_patience)
    if kind == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    if kind == "onecycle":
        # momentum is its own knob, so onecycle does not cycle it
        pct = recipe.warmup_epochs / recipe.epochs if recipe.warmup_epochs > 0 else 0.3
        max_lrs = [g["lr"] for g in optimizer.param_groups]
        return lr_scheduler.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=total_steps,
                                       pct_start=pct, cycle_momentum=False)
    raise AssertionError(f"unhandled lr_schedule {kind!r}")
