"""One recipe trained data-parallel, without a search (``cnn-tuner train --workers N``).

The same Ray Train group as a data-parallel trial (``dp_trial.fit_group``: a TorchTrainer of N
ranks of ``_worker_loop``, gloo on CPU, nccl on CUDA), fitted from the driver instead of a Tune
trial: rank 0's row of every epoch comes back to the caller, and the checkpoint rank 0 writes
with the last one is the run's final state. Ray is joined when this process already runs one,
else a local Ray is started for the run and shut down after it.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from trainables.checkpoint import load_checkpoint
from trainables.data import load_recipe_data
from trainables.distributed import local_batch
from trainables.errors import ConfigError
from trainables.recipe import Recipe
from tuner.running.dp_trial import check_fits_cluster, fit_group
from tuner.running.runner import ray_session
from tuner.running.settings import check_placement
from tuner.running.trial import CHECKPOINT_FILE, TrialOptions

# what each rank adds to the loop's metrics for Tune (tuner.running.dp_trial._worker_loop): not
# part of a training result
RANK_KEYS = ("device", "gpu_ids", "pid", "worker_pid", "node_id", "resumed_from",
             "resumed_from_trial", "worker_node_ids", "worker_pids")


def check_group(recipe: Recipe, workers: int, cpus_per_worker: float,
                gpus_per_worker: float, placement: str = "pack") -> None:
    """What a data-parallel run of ``recipe`` cannot do, refused before Ray starts."""
    check_placement(placement)
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: must be a whole number >= 1, got {workers!r}")
    if cpus_per_worker <= 0:
        raise ConfigError(f"cpus_per_worker: must be > 0, got {cpus_per_worker}")
    local_batch(recipe.batch_size, workers)
    if recipe.sync_bn and not gpus_per_worker:
        raise ConfigError("sync_bn: true needs CUDA workers (SyncBatchNorm has no CPU kernel); "
                          "set sync_bn: false or train on cuda", where="sync_bn")


def train_data_parallel(recipe: Recipe, workers: int, *, cpus_per_worker: float = 1,
                        gpus_per_worker: float = 0, max_failures: int = 2,
                        placement: str = "pack",
                        on_epoch: Callable[[dict[str, Any]], None] | None = None,
                        ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train ``recipe`` over ``workers`` Ray Train workers, each reserving ``cpus_per_worker``
    CPUs and ``gpus_per_worker`` GPUs, placed by ``placement`` (settings.WORKER_PLACEMENTS);
    returns the epoch rows (rank 0's, with the rank keys
    removed) and the final checkpoint state. ``on_epoch`` sees each row as it arrives."""
    check_group(recipe, workers, cpus_per_worker, gpus_per_worker, placement)
    data = load_recipe_data(recipe)  # missing data fails here, before Ray starts
    history: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    with ray_session(None), tempfile.TemporaryDirectory(prefix="cnn-tuner-train-") as storage:
        check_fits_cluster(workers, cpus_per_worker, gpus_per_worker, placement)
        key = f"train-{uuid.uuid4().hex[:8]}"
        loop_config = {"config": recipe.to_dict(), "data_ref": [ray.put(data)],
                       "options": TrialOptions(), "trial_id": key, "cpus": cpus_per_worker,
                       "use_gpu": gpus_per_worker > 0, "checkpoint": None}
        for row, checkpoint in fit_group(loop_config, workers, cpus_per_worker,
                                         gpus_per_worker, max_failures=max_failures,
                                         placement=placement,
                                         storage_path=storage, key=key):
            row = {k: v for k, v in row.items() if k not in RANK_KEYS}
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            if "stop_reason" in row and checkpoint is not None:
                with checkpoint.as_directory() as d:
                    final = load_checkpoint(Path(d) / CHECKPOINT_FILE)
    if not final:
        raise RuntimeError("the data-parallel run ended without a final checkpoint")
    return history, {k: v for k, v in final.items() if k not in ("format", "trial_id")}
