"""The one Ray Tune adapter: trial config -> Recipe -> ``train(...)`` with ``tune.report``.

Everything Ray-specific of a trial lives here: threads from the trial's CPUs, the device from
the GPUs Ray assigned, checkpoints every ``checkpoint_every`` epochs (and at the end), and
resuming from ``tune.get_checkpoint()`` after a retry or a PBT exploit.

A trial that breaks one of the run's constraints (``trainables.constraints``; the loop checks
them) ends ``infeasible``; its last result carries the WORST value of the run's metric
(``worst_value``), which is what the searcher learns from, and no checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.constraints import INFEASIBLE, parse_constraints
from trainables.cost import COST_KEYS
from trainables.data import DataSplits
from trainables.loop import train
from trainables.models import check_runnable
from trainables.recipe import Recipe

CHECKPOINT_FILE = "checkpoint.pt"
_warned_no_cuda = False


@dataclass(frozen=True)
class TrialOptions:
    """How trials run, beyond the Recipe: checkpoint cadence, and the run's ``constraints``
    (their text, checked on the driver) with the ``metric`` and ``mode`` an infeasible trial
    reports the worst value of.

    A checkpoint is written every ``checkpoint_every`` epochs and at the end, but a periodic one
    is skipped while the time since the last checkpoint is under ``1 / checkpoint_budget`` times
    what saving the last one took: saving may cost at most that share of training time (a
    90 MB ResNet-18 checkpoint on a fast GPU would otherwise cost ~10% of every epoch; a small
    model's few-millisecond save still happens every epoch). Schedulers that pause trials (PBT,
    HyperBand, median: ``schedulers.PAUSING``) need the exact cadence: the runner gives them
    ``checkpoint_budget=1.0``, which turns the rule off (``checkpoint_due``).
    """

    checkpoint_every: int = 1
    checkpoint_budget: float = 0.05
    constraints: tuple[str, ...] = ()
    metric: str = "val_acc"
    mode: str = "max"
    objectives: tuple[str, ...] = ()  # 'metric:mode' texts of a multi-objective run


def checkpoint_due(epoch: int, options: TrialOptions, since_last_s: float,
                   last_cost_s: float) -> bool:
    """Whether epoch ``epoch``'s report carries a periodic checkpoint (TrialOptions' rule):
    every ``checkpoint_every`` epochs, unless saving the last one took over ``checkpoint_budget``
    of the time since; a budget of 1.0 or more never skips one (a pausing scheduler resumes a
    trial from its last checkpoint: a skipped one would repeat epochs, and under load a tiny
    model's epoch can take less time than its save)."""
    if epoch % options.checkpoint_every:
        return False
    return options.checkpoint_budget >= 1.0 or since_last_s * options.checkpoint_budget >= \
        last_cost_s


def worst_value(metric: str, mode: str) -> float:
    """The worst value ``metric`` can take under ``mode``: 0 (max) or 1 (min) for an accuracy
    (``*_acc``), else -inf (max) or inf (min). An infeasible trial tells its searcher this."""
    if metric.endswith("_acc"):
        return 0.0 if mode == "max" else 1.0
    return -math.inf if mode == "max" else math.inf


def infeasible_values(options: TrialOptions, metrics: dict[str, Any]) -> dict[str, float]:
    """What an infeasible trial's last result tells the searcher: the worst value of the run's
    metric and of each objective, except a cost objective it measured (a trial over the params
    bound still has its params)."""
    from tuner.running.pareto import parse_objectives

    pairs = [(o.metric, o.mode) for o in parse_objectives(options.objectives)] \
        if options.objectives else []
    out = {options.metric: worst_value(options.metric, options.mode)}
    for metric, mode in pairs:
        if metric not in (*COST_KEYS, "train_time_s") or metric not in metrics:
            out[metric] = worst_value(metric, mode)
    return out


def recipe_from_config(config: dict[str, Any]) -> Recipe:
    """A trial config is flat Recipe knobs; None marks an inactive conditional knob (dropped).
    Recipe warnings (e.g. step_size >= epochs) were shown once when the space was validated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Recipe.from_dict({k: v for k, v in config.items() if v is not None})


def trial_device() -> tuple[torch.device, str]:
    """The device of this trial and the GPU ids Ray assigned it (CUDA_VISIBLE_DEVICES is set by
    Ray, so the first visible CUDA device is the trial's own)."""
    global _warned_no_cuda
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    if gpu_ids and torch.cuda.is_available():
        return torch.device("cuda", 0), ",".join(gpu_ids)
    if gpu_ids and not _warned_no_cuda:
        print(f"cnn-tuner: Ray assigned GPU id(s) {','.join(gpu_ids)} to this trial but CUDA is "
              "not available here; training on the CPU", file=sys.stderr)
        _warned_no_cuda = True
    return torch.device("cpu"), ",".join(gpu_ids)


def _trial_cpus() -> int:
    try:
        resources = tune.get_context().get_trial_resources().required_resources
        return max(1, int(resources.get("CPU", 1)))
    except Exception:  # outside a Tune session (direct call in a test): keep torch's default
        return torch.get_num_threads()


def node_name() -> str:
    """This machine as a cluster user knows it: hostname, and node IP once Ray runs here."""
    host = socket.gethostname()
    return f"{host} ({ray.util.get_node_ip_address()})" if ray.is_initialized() else host


def forward_report(metrics: dict[str, Any], checkpoint: Any = None) -> None:
    """Report a data-parallel trial's epoch (rank 0's row, forwarded from its Ray Train group by
    tuner.running.dp_trial) to Tune; ``checkpoint`` (Ray Train's copy of rank 0's) becomes the
    trial's Tune checkpoint, which PBT clones and a paused or retried trial resumes from."""
    if checkpoint is not None:  # Ray Train's class; Tune warns unless given its own
        checkpoint = tune.Checkpoint(checkpoint.path, filesystem=checkpoint.filesystem)
    tune.report(metrics, checkpoint=checkpoint)


def quiet_termination() -> None:
    """Ray ends a worker process it no longer needs (a trial's actor) with SIGTERM, whose handler
    raises SystemExit wherever the process is. Inside a finalizer (a weakref callback, a
    ``__del__``) Python cannot raise it and prints "Exception ignored in ..." and a traceback,
    which Ray forwards to the user's console in the middle of a run (seen once in two default
    runs). Nothing is wrong then; this drops that one case and leaves every other unraisable
    exception to the hook that was there."""
    if getattr(sys.unraisablehook, "cnn_tuner", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, SystemExit):
            previous(unraisable)

    hook.cnn_tuner = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def run_trial(config: dict[str, Any], data: DataSplits | None = None,
              options: TrialOptions = TrialOptions()) -> None:
    """Ray Tune function trainable. ``data`` comes from the object store via with_parameters."""
    quiet_termination()
    recipe = recipe_from_config(config)
    # the driver checked the head; a worker whose cache or file system differs names itself
    check_runnable(recipe.model, recipe.pretrained, download=recipe.download, node=node_name())
    # one line per checkpoint from Ray Train's storage logger drowns the progress table
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    torch.set_num_threads(_trial_cpus())
    device, gpu_ids = trial_device()
    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = load_checkpoint(Path(d) / CHECKPOINT_FILE)
    trial_id = tune.get_context().get_trial_id()

    last = {"at": time.monotonic(), "cost": 0.0}  # the last checkpoint: when, seconds to save
    # the epoch of the checkpoint this process started from (0: from scratch); Ray can drop
    # result.json rows of a killed worker, so this, not the rows, tells where a retry resumed
    resumed_from = int(resume["epoch"]) if resume is not None else 0
    # the trial that wrote that checkpoint: another one after a PBT exploit (its weights cloned)
    resumed_from_trial = str(resume.get("trial_id") or trial_id) if resume is not None else ""

    def report(metrics: dict[str, Any], state_fn: Any) -> None:
        metrics = {**metrics, "device": str(device), "gpu_ids": gpu_ids, "pid": os.getpid(),
                   "node_id": node_id, "resumed_from": resumed_from,
                   "resumed_from_trial": resumed_from_trial}
        if metrics.get("stop_reason") == INFEASIBLE:
            # no result: never best, never resumed or cloned, so no checkpoint either
            tune.report({**metrics, **infeasible_values(options, metrics)})
            return
        due = checkpoint_due(metrics["epoch"], options, time.monotonic() - last["at"],
                             last["cost"])
        if not due and "stop_reason" not in metrics:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            start = time.monotonic()
            save_checkpoint({**state_fn(), "trial_id": trial_id}, Path(d) / CHECKPOINT_FILE)
            checkpoint = tune.Checkpoint.from_directory(d)
            tune.report(metrics, checkpoint=checkpoint)
            last.update(at=time.monotonic(), cost=time.monotonic() - start)

    train(recipe, data, device, report, resume=resume,
          constraints=parse_constraints(options.constraints))
