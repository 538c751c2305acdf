"""Data-parallel trials: one Tune trial trained by ``workers_per_trial`` Ray Train workers (DDP).

The Ray Train V2 pattern inside Ray Tune: the trial's Tune function (``run_dp_trial``) builds a
``TorchTrainer`` and calls ``fit()``; Ray Train starts N workers, initialises their
torch.distributed group (gloo on CPU, nccl on CUDA), and each worker runs the same pure
``train(...)`` loop as one rank (trainables.distributed: the global batch split over ranks,
sharded data, metrics over the whole split). Workers report with ``ray.train.report`` (a
different function from ``tune.report``, which stays in tuner.running.trial); Ray's
``TuneReportCallback`` forwards rank 0's rows to Tune.

Resources are PER WORKER: each worker reserves ``cpus_per_trial`` CPUs and ``gpus_per_trial``
GPUs, so a trial holds N times that. The Tune function itself only waits on ``fit()`` and
reserves no CPU (Ray's TrainController actor reserves none either): with the default flags,
``--workers-per-trial 2`` fits a 2-core machine (two 1-CPU workers). Rank 0 alone writes
checkpoints; when a worker dies, Ray Train restarts the group (up to ``max_failures`` times)
and every rank resumes from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.constraints import INFEASIBLE, parse_constraints
from trainables.errors import ConfigError
from trainables.loop import train
from trainables.models import check_runnable
from tuner.running.trial import (
    CHECKPOINT_FILE,
    TrialOptions,
    node_name,
    recipe_from_config,
    worst_value,
)

# trial id -> the TrainController of its running fit(), in this (the trial's Tune actor) process
_CONTROLLERS: dict[str, Any] = {}
_ABORTED: set[str] = set()

# What the Tune function of a data-parallel trial reserves: no CPU (it only waits on fit()),
# and one byte of memory because Ray refuses an empty reservation.
DRIVER_BUNDLE = {"CPU": 0, "memory": 1}


def trial_resources() -> Any:
    """The Tune reservation of a data-parallel trial (its workers reserve their own)."""
    return tune.PlacementGroupFactory([dict(DRIVER_BUNDLE)])


def check_fits(workers: int, cpus_per_worker: float, gpus_per_worker: float,
               available: dict[str, float]) -> None:
    """Refuse, before any trial starts, a trial the cluster can never hold: N workers need N x
    the per-worker resources at once (Ray Train places the whole group or nothing)."""
    for key, per_worker, flag in (("CPU", cpus_per_worker, "cpus_per_trial"),
                                  ("GPU", gpus_per_worker, "gpus_per_trial")):
        need, have = workers * per_worker, float(available.get(key, 0))
        if need > have + 1e-9:
            raise ConfigError(
                f"workers_per_trial: {workers} workers x {per_worker:g} {key} ({flag} is per "
                f"worker) need {need:g} {key}s at once, but the cluster has {have:g}; lower "
                f"{flag} or workers_per_trial")


def dp_trial_slots(workers: int, cpus_per_worker: float, gpus_per_worker: float,
                   available: dict[str, float]) -> int:
    """How many data-parallel trials the cluster runs at once (at least 1)."""
    slots = available.get("CPU", 0) / (workers * cpus_per_worker)
    if gpus_per_worker:
        slots = min(slots, available.get("GPU", 0) / (workers * gpus_per_worker))
    return max(1, int(slots + 1e-9))


class AbortOnStop:
    """Mixin of the trial's Tune trainable (``__mixins__``): when Tune stops the trial (ASHA,
    the end of the run) while ``fit()`` runs, abort its TrainController, which shuts the
    workers down and frees their placement group. Without it the controller dies with the
    trial's actor and Ray Train's own PlacementGroupCleaner must free the group; that cleaner
    asks the Ray state API (the dashboard), and without a dashboard, or with two Ray instances
    on the machine, it fails and the CPUs stay reserved: every later trial waits forever."""

    def cleanup(self) -> None:
        try:
            abort_fit(self.trial_id)
        finally:
            super().cleanup()


def abort_fit(trial_id: str, timeout_s: float = 60) -> None:
    controller = _CONTROLLERS.get(trial_id)
    if controller is None:
        return
    _ABORTED.add(trial_id)
    try:
        ray.get(controller.abort.remote(), timeout=timeout_s)
    except Exception:  # the controller exits inside abort(): its death is the expected answer
        pass


def _torch_trainer_cls() -> type:
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.constants import (
        DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE,
        RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR,
        get_env_vars_to_propagate,
    )
    from ray.train.v2._internal.execution.controller import TrainController

    class TrialTorchTrainer(TorchTrainer):
        """A TorchTrainer that keeps its controller's handle (in ``_CONTROLLERS``) so the
        trial can abort it. Mirrors ``DataParallelTrainer._initialize_and_run_controller`` of
        Ray 2.60 (controller on this node, no CPU), keeping the handle."""

        trial_id = ""

        def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
            env_vars = get_env_vars_to_propagate()
            env_vars.setdefault(RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR,
                                DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE)
            node = {ray._raylet.RAY_NODE_ID_KEY: ray.get_runtime_context().get_node_id()}
            cls = ray.remote(num_cpus=0, label_selector=node,
                             runtime_env={"env_vars": env_vars})(TrainController)
            controller = cls.remote(**controller_init_kwargs)
            _CONTROLLERS[self.trial_id] = controller
            try:
                ray.get(controller.run.remote())
                return ray.get(controller.get_result.remote())
            finally:
                _CONTROLLERS.pop(self.trial_id, None)

    return TrialTorchTrainer


def run_dp_trial(config: dict[str, Any], data_ref: list | None = None,
                 options: TrialOptions | None = None, workers: int = 2,
                 cpus_per_worker: float = 1, gpus_per_worker: float = 0,
                 max_failures: int = 2) -> None:
    """Ray Tune function trainable of a data-parallel trial: fit a TorchTrainer of ``workers``.
    ``data_ref`` holds the dataset's ObjectRef (in a list, so Tune passes the reference, not the
    data, and each worker fetches it from the object store)."""
    import ray.train
    from ray.train import FailureConfig, ScalingConfig
    from ray.tune.integration.ray_train import TuneReportCallback

    context = tune.get_context()
    loop_config = {"config": config, "data_ref": data_ref, "options": options or TrialOptions(),
                   "trial_id": context.get_trial_id(), "cpus": cpus_per_worker,
                   "use_gpu": gpus_per_worker > 0}
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    trainer = _torch_trainer_cls()(
        _worker_loop, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name="ray_train", storage_path=context.get_trial_dir(),
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=[TuneReportCallback()]))
    trainer.trial_id = trial_id = context.get_trial_id()
    _free_leaked_group(trial_id)
    try:
        trainer.fit()
    except Exception:
        if trial_id not in _ABORTED:  # a stopped trial's fit() ends in an error: expected
            raise
    finally:
        _ABORTED.discard(trial_id)


def _pg_key(trial_id: str) -> bytes:
    return f"cnn-tuner/dp-placement-group/{trial_id}".encode()


def _free_leaked_group(trial_id: str) -> None:
    """A retried trial (its previous Tune actor died, and the controller with it) frees the
    placement group its previous workers held: Ray Train's own cleaner needs the state API,
    which is not always there (no dashboard), and the retry would wait for those CPUs forever."""
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    pg_hex = _internal_kv_get(_pg_key(trial_id))
    if pg_hex:
        with contextlib.suppress(Exception):  # already removed: nothing to free
            remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_hex.decode())))
        _internal_kv_del(_pg_key(trial_id))


def _worker_loop(cfg: dict[str, Any]) -> None:
    """One Ray Train worker: one rank of the pure training loop. Reports every epoch with
    ``ray.train.report``; rank 0 attaches the checkpoints."""
    import ray.train
    import ray.train.torch

    options: TrialOptions = cfg["options"]
    recipe = recipe_from_config(cfg["config"])
    check_runnable(recipe.model, recipe.pretrained, download=recipe.download, node=node_name())
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    torch.set_num_threads(max(1, math.floor(cfg["cpus"])))
    device = ray.train.torch.get_device() if cfg["use_gpu"] else torch.device("cpu")
    gpu_ids = ",".join(str(g) for g in ray.get_gpu_ids())
    node_id = ray.get_runtime_context().get_node_id()
    data = ray.get(cfg["data_ref"][0]) if cfg["data_ref"] else None
    rank = ray.train.get_context().get_world_rank()
    trial_id = cfg["trial_id"]
    group = ray.util.get_current_placement_group()
    if rank == 0 and group is not None:  # for _free_leaked_group of a retry
        from ray.experimental.internal_kv import _internal_kv_put
        _internal_kv_put(_pg_key(trial_id), group.id.hex().encode(), overwrite=True)
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = load_checkpoint(Path(d) / CHECKPOINT_FILE)
    resumed_from = int(resume["epoch"]) if resume is not None else 0
    resumed_from_trial = str(resume.get("trial_id") or trial_id) if resume is not None else ""
    last = {"at": time.monotonic(), "cost": 0.0}

    def report(metrics: dict[str, Any], state_fn: Any) -> None:
        # Tune overwrites "pid" with its trial actor's; "worker_pid" is rank 0's process
        metrics = {**metrics, "device": str(device), "gpu_ids": gpu_ids, "pid": os.getpid(),
                   "worker_pid": os.getpid(),
                   "node_id": node_id, "resumed_from": resumed_from,
                   "resumed_from_trial": resumed_from_trial}
        if metrics.get("stop_reason") == INFEASIBLE:
            ray.train.report({**metrics, options.metric: worst_value(options.metric,
                                                                     options.mode)})
            return
        due = metrics["epoch"] % options.checkpoint_every == 0 and (
            time.monotonic() - last["at"] >= last["cost"] / options.checkpoint_budget)
        if rank != 0 or (not due and "stop_reason" not in metrics):
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            start = time.monotonic()
            save_checkpoint({**state_fn(), "trial_id": trial_id}, Path(d) / CHECKPOINT_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
            last.update(at=time.monotonic(), cost=time.monotonic() - start)

    train(recipe, data, device, report, resume=resume,
          constraints=parse_constraints(options.constraints))
