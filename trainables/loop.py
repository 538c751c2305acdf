"""The pure training loop: ``train(recipe, data, device, report)``. No Ray in here.

Data lives on the training device as uint8 tensors; each batch is sliced, augmented per image
and normalised there, so there is no DataLoader and no per-image Python. Host syncs happen once
per epoch (metrics) and, for the non-finite-loss guard, every step on CPU (free there) and every
``NONFINITE_CHECK_EVERY`` steps on CUDA.

``report(metrics, state)`` is called once per epoch with the epoch's metrics and a zero-argument
function returning the checkpoint dict (called only if the caller wants a checkpoint). The last
epoch's metrics also carry ``test_acc`` (held-out split, used nowhere else) and ``stop_reason``:
completed | early_stopped | non_finite_loss | infeasible.

Every row carries the model's cost (``trainables.cost``: params, params_trainable, flops,
latency_ms, latency_device), measured once when training starts, and ``train_time_s``, the
seconds spent training and validating so far. Constraints on them (``trainables.constraints``)
are checked as soon as they are known: a recipe that breaks one when the model is built or its
latency measured reports one row (epoch 0 for a new run, ``stop_reason: infeasible``, no
training metrics) and trains nothing; one that breaks ``train_time_s`` ends infeasible after
that epoch (no ``test_acc``). The row names the broken constraint in ``broken_constraint``.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from trainables import distributed
from trainables.augment import AugmentConfig, Augmenter, mix_batch
from trainables.constraints import INFEASIBLE, Constraint, broken
from trainables.cost import device_name, measure_cost
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
    constraints: tuple[Constraint, ...] = ()
    precision: str = field(init=False)

    def __post_init__(self) -> None:
        r, dev = self.recipe, self.device
        r.check_device(dev.type)
        # One rank of a data-parallel run when the caller initialised a process group
        # (trainables.distributed); world 1 otherwise, and then nothing below is collective.
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.local_batch = distributed.local_batch(r.batch_size, self.world_size)
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
        n, b = len(self.data.train_y) // self.world_size, self.local_batch  # smallest shard
        self.steps_per_epoch = max(1, n // b + (n % b >= 2))
        self.schedule = LRSchedule(r, self.optimizer, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.forward = torch.compile(self.model) if r.compile else self.model
        self.eval_forward = None  # data-parallel: the bare model, evaluation has no DDP sync
        if self.world_size > 1:
            ddp = distributed.wrap_model(self.model, dev, sync_bn=r.sync_bn)
            self.eval_forward = self.forward
            self.forward = torch.compile(ddp) if r.compile else ddp
        self.augment = Augmenter(AugmentConfig.from_recipe(r))
        self.mean = torch.tensor(self.data.mean, device=dev).view(1, -1, 1, 1)
        self.std = torch.tensor(self.data.std, device=dev).view(1, -1, 1, 1)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.early = _EarlyStop(r.early_stop_patience, r.early_stop_min_delta)
        self.cost: dict[str, Any] = {}  # measure_cost() fills it before the first epoch
        self.train_time_s = 0.0  # seconds in train_epoch + validation, over every epoch so far

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
        n, b = len(d.train_y), self.local_batch
        if self.world_size == 1:
            perm = torch.randperm(n, generator=self.gen, device=self.device)
        else:  # the same order on every rank, this rank's slice; own augmentation stream
            self._seed_rank_epoch()
            perm = distributed.shard(distributed.epoch_permutation(n, r.seed, self.epoch,
                                                                   self.device),
                                     self.rank, self.world_size)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen, nonfinite = 0, False
        sync_every = 1 if self.device.type == "cpu" else NONFINITE_CHECK_EVERY
        mixing = r.mixup_alpha > 0 or r.cutmix_alpha > 0
        start = time.perf_counter()
        for step in range(self.steps_per_epoch):
            idx = perm[step * b:(step + 1) * b]
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
            if (step + 1) % sync_every == 0 and \
                    distributed.any_rank(not _finite(loss_sum / seen), self.device):
                nonfinite = True
                break
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = distributed.all_reduce_max(time.perf_counter() - start, self.device)
        if self.world_size > 1:  # metrics of the global batch, the same on every rank
            count = torch.tensor(float(seen), device=self.device, dtype=torch.float64)
            totals = torch.stack([loss_sum.double(), correct.double(), count])
            loss_sum, correct, seen = distributed.all_reduce_sum(totals)
            seen = int(seen.item())
        train_loss = loss_sum.item() / max(seen, 1)
        return {"train_loss": train_loss, "train_acc": correct.item() / max(seen, 1),
                "images_per_s": seen / max(elapsed, 1e-9),
                "non_finite": nonfinite or not _finite(train_loss)}

    @torch.no_grad()
    def evaluate(self, split: str) -> tuple[float, float]:
        """(loss, accuracy) on 'val' or 'test', without augmentation. Data-parallel: over the
        whole split, each rank evaluating its shard with rank 0's weights and buffers."""
        x_all, y_all = getattr(self.data, f"{split}_x"), getattr(self.data, f"{split}_y")
        distributed.broadcast_buffers(self.model)
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        forward = self.forward if self.eval_forward is None else self.eval_forward
        lo, hi = distributed.shard_bounds(len(y_all), self.rank, self.world_size)
        for i in range(lo, hi, EVAL_BATCH):
            end = min(i + EVAL_BATCH, hi)
            x = self._normalise(self._prepare(x_all[i:end]))
            y = y_all[i:end]
            with self.autocast():
                logits = forward(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        if self.world_size > 1:
            loss_sum, correct = distributed.all_reduce_sum(torch.stack([loss_sum, correct]))
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
        self.train_time_s = float(self.history[-1].get("train_time_s", 0.0)) if self.history \
            else 0.0
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

    @property
    def ended(self) -> bool:
        """The last row has a stop_reason: nothing left to train."""
        return bool(self.history) and "stop_reason" in self.history[-1]

    # -- cost and constraints ----------------------------------------------------------------
    def measure_cost(self) -> dict[str, Any]:
        """Measure the model's cost (trainables.cost) on one image of the data's shape. A resumed
        run recounts params and FLOPs (exact, milliseconds) but keeps the latency its history
        measured on a device of the same name: a retry is not re-judged on a noisy re-measure,
        and its rows keep one latency. On another device it measures again."""
        before = self.history[-1] if self.history else {}
        keep = "latency_ms" in before and before.get("latency_device") == device_name(self.device)
        example = torch.zeros(1, *self.data.train_x.shape[1:], device=self.device)
        example = example.contiguous(memory_format=self.memory_format)
        self.cost = measure_cost(self.model, example, autocast=self.autocast(), latency=not keep)
        if keep:
            self.cost.update(latency_ms=before["latency_ms"],
                             latency_device=before["latency_device"])
        self.cost = distributed.broadcast_object(self.cost)  # ranks judge one latency
        return self.cost

    def _seed_rank_epoch(self) -> None:
        """Data-parallel: this rank's augmentation and dropout streams for this epoch, derived
        from (seed, rank, epoch): distinct per rank, replayed exactly on resume."""
        seed = self.recipe.seed
        self.gen.manual_seed(distributed.stream_seed(seed, "augment", self.rank, self.epoch))
        torch.manual_seed(distributed.stream_seed(seed, "torch", self.rank, self.epoch))

    def check_start(self) -> dict[str, Any] | None:
        """Before training: measure the cost and check the constraints on it (static ones and
        latency). Broken: the run's one infeasible row (also appended to the history), else
        None."""
        why = broken(self.constraints, self.measure_cost())
        if not why:
            return None
        row = {"epoch": self.epoch, **self.cost, "train_time_s": self.train_time_s,
               "precision": self.precision, "world_size": self.world_size,
               "stop_reason": INFEASIBLE,
               "broken_constraint": "; ".join(why)}
        self.history.append(row)
        return row

    # -- the epoch ---------------------------------------------------------------------------
    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch, validate, decide whether to stop; the metrics of the epoch."""
        if not self.cost:  # driven without train(): measure before the first epoch all the same
            self.measure_cost()
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
        self.train_time_s += distributed.all_reduce_max(time.perf_counter() - start, self.device)
        m.update(epoch=self.epoch, val_loss=val_loss, val_acc=val_acc, lr=lr,
                 precision=self.precision, world_size=self.world_size, **self.cost,
                 train_time_s=self.train_time_s)
        # one decision on every rank (a rank alone in a collective would wait forever)
        non_finite = distributed.any_rank(non_finite or not _finite(val_loss), self.device)
        stop = None
        why = broken(self.constraints, m)
        if why:  # first: an infeasible run is no result, whatever else happened
            stop = INFEASIBLE
            m["broken_constraint"] = "; ".join(why)
        elif non_finite:
            stop = "non_finite_loss"
        elif self.early.update(val_acc):
            stop = "early_stopped"
        elif self.epoch >= self.recipe.epochs:
            stop = "completed"
        if stop:
            if stop != INFEASIBLE:
                m["test_acc"] = self.evaluate("test")[1]
            m["stop_reason"] = stop
        m["epoch_time_s"] = time.perf_counter() - start
        self.history.append(m)
        return m


def train(recipe: Recipe, data: DataSplits | None = None,
          device: str | torch.device | None = None, report: Report | None = None, *,
          resume: dict[str, Any] | None = None,
          constraints: Sequence[Constraint] = ()) -> TrainResult:
    """Train ``recipe``; call ``report(metrics, state_fn)`` after every epoch.

    ``data`` defaults to loading the recipe's dataset; ``device`` to CUDA when available;
    ``resume`` is a checkpoint dict from ``Trainer.state_dict`` (continues where it stopped);
    ``constraints`` (``trainables.constraints.parse_constraints``) end the run ``infeasible``
    when broken: before any training for the model's size, FLOPs and latency.
    """
    if data is None:
        data = load_recipe_data(recipe)
    trainer = Trainer(recipe, data, resolve_device(device), constraints=tuple(constraints))
    if resume is not None:
        trainer.load_state_dict(resume)
    infeasible = None if trainer.ended else trainer.check_start()
    if infeasible is not None and report is not None:
        report(dict(infeasible), trainer.state_dict)
    while not trainer.ended:
        metrics = trainer.run_epoch()
        if report is not None:
            report(dict(metrics), trainer.state_dict)
    return TrainResult(history=trainer.history, model=trainer.model)
