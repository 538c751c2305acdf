"""Data-parallel trials: one Tune trial trained by ``workers_per_trial`` Ray Train workers (DDP).

The Ray Train V2 pattern inside Ray Tune: the trial's Tune function (``run_dp_trial``) builds a
``TorchTrainer`` and calls ``fit()``; Ray Train starts N workers, initialises their
torch.distributed group (gloo on CPU, nccl on CUDA), and each worker runs the same pure
``train(...)`` loop as one rank (trainables.distributed: the global batch split over ranks,
sharded data, metrics over the whole split). Workers report with ``ray.train.report``; a
callback of the controller (``_forward_reports``) hands rank 0's row and checkpoint of every
epoch to the Tune function, which reports them to Tune (``forward_report`` in
tuner.running.trial, where ``tune.report`` stays): the trial keeps Tune checkpoints, so PBT
clones it and HyperBand pauses and resumes it, its group starting from ``tune.get_checkpoint()``.

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
import threading
import time
import uuid
from collections.abc import Iterator
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
    checkpoint_due,
    forward_report,
    infeasible_values,
    node_name,
    quiet_termination,
    recipe_from_config,
)

# trial id -> the TrainController of its running fit(), in this (the trial's Tune actor) process
_CONTROLLERS: dict[str, Any] = {}
_ABORTED: set[str] = set()

# What the Tune function of a data-parallel trial reserves: no CPU (it only waits on fit()),
# and one byte of memory because Ray refuses an empty reservation.
DRIVER_BUNDLE = {"CPU": 0, "memory": 1}

# How often the controller polls its workers (Ray Train's RAY_TRAIN_HEALTH_CHECK_INTERVAL_S,
# 2 s by default). Each step of a fit (group started, epochs running, group done) waits for a
# poll, so at 2 s a short trial idles seconds between them: the data-parallel fifo contract
# test (4 trials of 3 epochs, 2 CPUs) took 164 s at 0.5 against 186 s at 2 (BENCHMARKS.md,
# section 7). A user's own setting, exported before Ray starts, wins.
HEALTH_CHECK_INTERVAL_S = 0.5


def controller_env(env_vars: dict[str, str]) -> dict[str, str]:
    """The environment of a trial's TrainController: Ray Train's propagated variables
    (``env_vars``) with our defaults where the user set nothing."""
    from ray.train.v2._internal.constants import (
        DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE,
        ENABLE_PREEMPTION_WATCHER_ENV_VAR,
        HEALTH_CHECK_INTERVAL_S_ENV_VAR,
        RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR,
    )

    env = dict(env_vars)
    env.setdefault(RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR,
                   DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE)
    # no preemption watcher (an actor per fit, and an error line on the console at every
    # start): a preempted node is a failed worker, resumed from the checkpoint
    env.setdefault(ENABLE_PREEMPTION_WATCHER_ENV_VAR, "0")
    env.setdefault(HEALTH_CHECK_INTERVAL_S_ENV_VAR, str(HEALTH_CHECK_INTERVAL_S))
    return env


def trial_resources() -> Any:
    """The Tune reservation of a data-parallel trial (its workers reserve their own)."""
    return tune.PlacementGroupFactory([dict(DRIVER_BUNDLE)])


def check_fits(workers: int, cpus_per_worker: float, gpus_per_worker: float,
               available: dict[str, float], placement: str = "pack",
               nodes: list[dict[str, float]] | None = None) -> None:
    """Refuse, before any trial starts, a trial the cluster can never hold: N workers need N x
    the per-worker resources at once (Ray Train places the whole group or nothing); with
    ``nodes`` (each node's resources), a strict placement needs one node holding the whole
    group (strict_pack) or N nodes holding a worker each (strict_spread)."""
    per = {"CPU": cpus_per_worker, "GPU": gpus_per_worker}
    for key, flag in (("CPU", "cpus_per_trial"), ("GPU", "gpus_per_trial")):
        per_worker = per[key]
        need, have = workers * per_worker, float(available.get(key, 0))
        if need > have + 1e-9:
            raise ConfigError(
                f"workers_per_trial: {workers} workers x {per_worker:g} {key} ({flag} is per "
                f"worker) need {need:g} {key}s at once, but the cluster has {have:g}; lower "
                f"{flag} or workers_per_trial")
    if nodes is None or placement not in ("strict_pack", "strict_spread"):
        return

    def holds(node: dict[str, float], count: int) -> bool:
        return all(float(node.get(k, 0)) + 1e-9 >= count * v for k, v in per.items() if v)

    if placement == "strict_pack" and not any(holds(n, workers) for n in nodes):
        raise ConfigError(
            f"worker_placement: strict_pack needs one node with {workers} x {cpus_per_worker:g} "
            f"CPU{f' and {workers} x {gpus_per_worker:g} GPU' if gpus_per_worker else ''}, but "
            f"no node of the cluster's {len(nodes)} has that; use pack or fewer workers")
    fit = sum(holds(n, 1) for n in nodes)
    if placement == "strict_spread" and fit < workers:
        raise ConfigError(
            f"worker_placement: strict_spread needs {workers} nodes with room for a worker "
            f"each, but the cluster has {fit}; use spread or fewer workers")


def check_fits_cluster(workers: int, cpus_per_worker: float, gpus_per_worker: float,
                       placement: str) -> None:
    """``check_fits`` against the Ray this process is connected to: its totals, and each live
    node's resources (what a strict placement can count on)."""
    nodes = [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    check_fits(workers, cpus_per_worker, gpus_per_worker, ray.cluster_resources(), placement,
               nodes)


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
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback,
    )
    from ray.train.v2._internal.constants import get_env_vars_to_propagate
    from ray.train.v2._internal.execution.controller import TrainController

    class TrialTorchTrainer(TorchTrainer):
        """A TorchTrainer that keeps its controller's handle (in ``_CONTROLLERS``) so the
        trial can abort it. Mirrors ``DataParallelTrainer._initialize_and_run_controller`` of
        Ray 2.60 (controller on this node, no CPU), keeping the handle."""

        trial_id = ""

        def _create_default_callbacks(self) -> list:
            # Ray Train's PlacementGroupCleaner asks the state API (the dashboard), and with none
            # or two Rays on the machine it prints a traceback per fit; AbortOnStop and
            # _free_leaked_group free the group instead
            return [c for c in super()._create_default_callbacks()
                    if not isinstance(c, PlacementGroupCleanerCallback)]

        def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
            env_vars = controller_env(get_env_vars_to_propagate())
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
                 max_failures: int = 2, placement: str = "pack") -> None:
    """Ray Tune function trainable of a data-parallel trial: fit a TorchTrainer of ``workers``.
    ``data_ref`` holds the dataset's ObjectRef (in a list, so Tune passes the reference, not the
    data, and each worker fetches it from the object store).

    The group starts from the trial's Tune checkpoint (``tune.get_checkpoint()``: its own after
    a pause or a retry, another trial's after a PBT exploit), and rank 0's row of every epoch,
    with rank 0's checkpoint, becomes the trial's Tune result and Tune checkpoint
    (``forward_report``), so PBT and HyperBand pause, resume and clone it like any trial."""
    quiet_termination()
    context = tune.get_context()
    trial_id = context.get_trial_id()
    loop_config = {"config": config, "data_ref": data_ref, "options": options or TrialOptions(),
                   "trial_id": trial_id, "cpus": cpus_per_worker,
                   "use_gpu": gpus_per_worker > 0, "checkpoint": tune.get_checkpoint()}
    _free_leaked_group(trial_id)
    # one line per checkpoint from Ray's storage logger, as in run_trial
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    for row, checkpoint in fit_group(loop_config, workers, cpus_per_worker, gpus_per_worker,
                                     max_failures=max_failures, placement=placement,
                                     storage_path=context.get_trial_dir(), key=trial_id):
        forward_report(row, checkpoint)


def fit_group(loop_config: dict[str, Any], workers: int, cpus_per_worker: float,
              gpus_per_worker: float, *, max_failures: int, storage_path: str,
              key: str, placement: str = "pack") -> Iterator[tuple[dict[str, Any], Any]]:
    """Fit a TorchTrainer of ``workers`` ranks of ``_worker_loop`` and yield, per epoch, rank
    0's row (with every rank's node id and pid) and the checkpoint reported with it (None when
    none was). ``key`` names the fit in ``_CONTROLLERS`` (the trial id) for ``abort_fit``;
    ``placement`` is Ray Train's placement strategy, lower case (settings.WORKER_PLACEMENTS).

    ``fit()`` runs in a thread; ``ForwardReports`` (a Ray Train callback, run by the controller)
    hands each epoch through a Ray queue of one item, so training waits for a slow consumer.
    Each fit gets a Ray Train run folder of its own: Ray Train resumes a run whose folder holds
    a snapshot, and a PBT clone must start from the checkpoint it was given, not its own."""
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, ScalingConfig
    from ray.util.queue import Queue

    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    trainer = _torch_trainer_cls()(
        _worker_loop, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker=resources,
                                     placement_strategy=placement.upper()),
        run_config=ray.train.RunConfig(
            name=f"ray_train_{time.strftime('%Y%m%d-%H%M%S')}_{uuid.uuid4().hex[:6]}",
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
            # 3: the consumer copies checkpoint N while N+1 waits in the queue; Ray Train
            # deletes N only after it registered N+3, by when the copy is done
            checkpoint_config=CheckpointConfig(num_to_keep=3),
            callbacks=[_forward_reports(queue)],
            # the group's start, checkpoint and report lines tell a CLI user nothing
            logging_config=LoggingConfig(log_level="WARNING")))
    trainer.trial_id = key
    outcome: dict[str, BaseException] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # noqa: BLE001 - raised again in the consumer's thread
            outcome["error"] = e
        finally:  # the queue is gone when Tune stopped the trial: nobody waits any more
            with contextlib.suppress(Exception):
                queue.put(_DONE)

    thread = threading.Thread(target=fit, name=f"fit-{key}", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) != _DONE:
            yield item
        thread.join()
        if "error" in outcome and key not in _ABORTED:  # a stopped trial's fit() errs: expected
            raise outcome["error"]
    finally:
        _ABORTED.discard(key)


_DONE = "cnn-tuner/fit-done"


def _forward_reports(queue: Any) -> Any:
    """A Ray Train callback that puts (rank 0's row, checkpoint) of every epoch on ``queue``."""
    from ray.train.v2.api.callback import UserCallback

    class ForwardReports(UserCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                         checkpoint: Any) -> None:
            row = {**metrics[0],
                   "worker_node_ids": ",".join(str(m.get("node_id")) for m in metrics),
                   "worker_pids": ",".join(str(m.get("worker_pid")) for m in metrics)}
            queue.put((row, checkpoint))

    return ForwardReports()


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

    quiet_termination()
    options: TrialOptions = cfg["options"]
    recipe = recipe_from_config(cfg["config"])
    check_runnable(recipe.model, recipe.pretrained, download=recipe.download, node=node_name())
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    # "Reporting training result N: TrainingReport(...)" per rank and epoch: a logger named by
    # its file's path, so LoggingConfig's level (ray.train.*) does not reach it
    from ray.train.v2._internal.execution import context as train_context
    train_context.logger.setLevel(logging.WARNING)
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
    # Ray Train's latest after a worker died in this fit, else the one the fit started from
    checkpoint = ray.train.get_checkpoint() or cfg.get("checkpoint")
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
            ray.train.report({**metrics, **infeasible_values(options, metrics)})
            return
        due = checkpoint_due(metrics["epoch"], options, time.monotonic() - last["at"],
                             last["cost"])
        if rank != 0 or (not due and "stop_reason" not in metrics):
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            start = time.monotonic()
            save_checkpoint({**state_fn(), "trial_id": trial_id}, Path(d) / CHECKPOINT_FILE)
            cost = time.monotonic() - start  # the save: report() also waits for the consumer
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
            last.update(at=time.monotonic(), cost=cost)

    train(recipe, data, device, report, resume=resume,
          constraints=parse_constraints(options.constraints))
