"""The groups of ``tune()``'s arguments, shaped the way Ray Tune users know them.

- ``TuneConfig``: what to search and how (searcher, scheduler, trial count, budget, metric);
- ``Resources``: what one trial gets (Ray's ``tune.with_resources``);
- ``RunConfig``: where and how the run goes (storage, name, cluster, failures, checkpoints,
  resume, verbosity).

``tune(space, num_samples=8, max_epochs=4)`` needs none of them. Field names are unique across
the groups, and errors name the field (``num_samples: must be >= 1``); the command line shows its
flag instead. The checks themselves live with the run settings (``settings.RunSettings``), which
is what a run saves and ``resume`` reads back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from trainables.errors import ConfigError
from tuner.running.schedulers import SchedulerOptions


@dataclass(frozen=True)
class TuneConfig:
    """How to search: ``searcher`` and ``scheduler`` by registry name, ``num_samples`` trials
    (16 by default; grid search runs each grid point once and refuses a count), ``max_epochs``
    per trial (the budget ASHA counts in; the space's ``epochs`` when unset), the ``metric`` and
    ``mode`` they optimise, at most ``max_concurrent`` trials at once (None: as many as the
    resources allow), the searcher's ``seed``, the scheduler's options, and ``constraints`` on
    each trial's cost such as ``("params<=200k", "latency_ms<5")`` (docs/constraints.md): a
    trial that breaks one ends ``infeasible`` and never counts as best; ``objectives`` such as
    ``("val_acc:max", "params:min")`` (2 or 3) make the run multi-objective: it searches the
    trade-off and writes the Pareto front (docs/multi-objective.md), ranking by the first.
    ``confirm_top`` (None: off) retrains the best K trials after the search with
    ``confirm_seeds`` new seeds each and makes the best by mean the best recipe
    (docs/confirm.md). ``warm_start``: the folder (or URI) of a finished experiment whose trials
    seed the searcher, already evaluated (tpe and optuna; docs/warm-start.md)."""

    searcher: str = "tpe"
    scheduler: str = "asha"
    num_samples: int | None = None
    max_epochs: int | None = None
    metric: str = "val_acc"
    mode: str = "max"
    max_concurrent: int | None = None
    seed: int = 0
    scheduler_options: SchedulerOptions = field(default_factory=SchedulerOptions)
    constraints: tuple[str, ...] = ()
    objectives: tuple[str, ...] = ()
    confirm_top: int | None = None
    confirm_seeds: int = 3
    warm_start: str | Path | None = None


@dataclass(frozen=True)
class Resources:
    """What one trial reserves: CPUs (> 0) and GPUs (fractions below one pack several trials
    on a GPU), and ``workers_per_trial``: above 1, the trial trains data-parallel over that many
    Ray Train workers (docs/data-parallel.md) and the CPUs and GPUs are PER WORKER;
    ``worker_placement`` says where they go: "pack" (on as few nodes as the group fits, the
    default), "spread" (each worker on another node where one is free), "strict_pack" or
    "strict_spread" (those, or the group waits)."""

    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    workers_per_trial: int = 1
    worker_placement: str = "pack"


@dataclass(frozen=True)
class RunConfig:
    """Where and how a run goes: ``storage`` (a folder or URI; ``./cnn-tuner-results`` by
    default) and ``name`` (DATASET-SEARCHER-SCHEDULER-TIME by default), the Ray cluster's
    ``address`` (None: a local Ray), ``shared_storage`` (a path every node sees), retries per
    trial, checkpoint interval, ``resume`` an interrupted run of that name, Ray's verbosity, and
    the trackers every trial is logged to (docs/tracking.md): ``mlflow`` (True: MLflow's default
    tracking store, or a tracking URI) and ``wandb`` (Weights & Biases, offline unless
    ``WANDB_MODE`` says otherwise); TensorBoard event files are always written."""

    storage: str | Path | None = None
    name: str | None = None
    address: str | None = None
    shared_storage: bool = False
    max_failures: int = 2
    checkpoint_every: int = 1
    resume: bool = False
    verbose: int = 1
    mlflow: bool | str = False
    wandb: bool = False


def with_shortcuts(config: TuneConfig | None, **given: int | None) -> TuneConfig:
    """``tune()``'s own ``num_samples``/``max_epochs`` on top of ``config``; a value given in both
    places is refused rather than one silently winning."""
    config = config or TuneConfig()
    for key, value in given.items():
        if value is None:
            continue
        if getattr(config, key) is not None:
            raise ConfigError(f"{key}: given both to tune() and in its TuneConfig; give it once")
        config = replace(config, **{key: value})
    return config
