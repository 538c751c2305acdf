"""Trial schedulers by name: fifo, asha (default), hyperband, median, pbt.

All count time in epochs (``training_iteration`` = one reported epoch), so ``max_t`` is the
recipe's epoch budget and ``grace_period`` is the fewest epochs a trial gets before it may be
stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray.tune.schedulers import (
    AsyncHyperBandScheduler,
    FIFOScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
    TrialScheduler,
)

from trainables.errors import ConfigError
from tuner.hyperband import FilledHyperBand

TIME_ATTR = "training_iteration"


@dataclass(frozen=True)
class SchedulerOptions:
    """Knobs of the early-stopping schedulers; defaults suit 10-30 epoch budgets."""

    grace_period: int | None = None  # None: 2 epochs, or max_epochs if that is smaller
    reduction_factor: float = 3.0
    perturbation_interval: int = 4  # pbt: epochs between exploit/explore steps

    def grace(self, max_epochs: int) -> int:
        return min(2, max_epochs) if self.grace_period is None else self.grace_period

    def check(self, max_epochs: int) -> None:
        if self.grace_period is not None and self.grace_period < 1:
            raise ConfigError(f"--grace-period: must be >= 1 epoch, got {self.grace_period}")
        if self.grace(max_epochs) > max_epochs:
            raise ConfigError(f"--grace-period: must be <= max epochs ({max_epochs}), got "
                              f"{self.grace_period}")
        if self.reduction_factor <= 1:
            raise ConfigError(f"--reduction-factor: must be > 1, got {self.reduction_factor}")
        if self.perturbation_interval < 1:
            raise ConfigError("--perturbation-interval: must be >= 1 epoch, got "
                              f"{self.perturbation_interval}")


def _fifo(max_epochs: int, opts: SchedulerOptions, mutations: dict,
          num_trials: int) -> TrialScheduler:
    return FIFOScheduler()


def _asha(max_epochs: int, opts: SchedulerOptions, mutations: dict,
          num_trials: int) -> TrialScheduler:
    return AsyncHyperBandScheduler(time_attr=TIME_ATTR, max_t=max_epochs,
                                   grace_period=opts.grace(max_epochs),
                                   reduction_factor=opts.reduction_factor)


def _hyperband(max_epochs: int, opts: SchedulerOptions, mutations: dict,
               num_trials: int) -> TrialScheduler:
    return FilledHyperBand(time_attr=TIME_ATTR, max_t=max_epochs,
                           reduction_factor=opts.reduction_factor, num_trials=num_trials)


def _median(max_epochs: int, opts: SchedulerOptions, mutations: dict,
            num_trials: int) -> TrialScheduler:
    return MedianStoppingRule(time_attr=TIME_ATTR, grace_period=opts.grace(max_epochs),
                              min_samples_required=3)


def _pbt(max_epochs: int, opts: SchedulerOptions, mutations: dict,
         num_trials: int) -> TrialScheduler:
    if not mutations:
        raise ConfigError("scheduler 'pbt': the space tunes no knob PBT can change during "
                          "training (e.g. lr, weight_decay, dropout, aug_*)")
    return PopulationBasedTraining(time_attr=TIME_ATTR,
                                   perturbation_interval=opts.perturbation_interval,
                                   hyperparam_mutations=mutations)


SCHEDULERS: dict[str, Callable[[int, SchedulerOptions, dict, int], TrialScheduler]] = {
    "fifo": _fifo, "asha": _asha, "hyperband": _hyperband, "median": _median, "pbt": _pbt,
}

# Schedulers that PAUSE trials and resume them later from their last checkpoint (Ray restores a
# paused function trainable from the checkpoint of its last report): they need a checkpoint at
# every report, and a paused trial still counts as live for the searcher's concurrency limit.
PAUSING = frozenset({"hyperband", "pbt"})


def build_scheduler(name: str, max_epochs: int, options: SchedulerOptions | None = None,
                    mutations: dict[str, Any] | None = None,
                    num_trials: int = 0) -> TrialScheduler:
    """The scheduler called ``name``; unknown names list the valid ones. ``num_trials``: how
    many trials the run will have (HyperBand halves an unfilled last bracket once all came)."""
    if name not in SCHEDULERS:
        raise ConfigError(f"--scheduler: unknown scheduler {name!r}; valid: "
                          f"{', '.join(SCHEDULERS)}")
    opts = options or SchedulerOptions()
    opts.check(max_epochs)
    return SCHEDULERS[name](max_epochs, opts, mutations or {}, num_trials)


def min_open_trials(scheduler: TrialScheduler) -> int:
    """The fewest trials the searcher must keep open (running, pending or paused) for
    ``scheduler`` to make progress: a synchronous HyperBand bracket pauses its trials at each
    milestone until all of the bracket's trials reach it, so the largest bracket must fit."""
    return scheduler.largest_bracket if isinstance(scheduler, FilledHyperBand) else 1
