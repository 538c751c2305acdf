"""torch.distributed helpers for a data-parallel run of the training loop. No Ray in here.

The loop runs as one rank of a process group when the caller (a test with
``torch.multiprocessing``, Ray Train's TorchTrainer, ``torchrun``) has initialised one; it never
initialises one itself. Without a process group every helper is the identity on one process
(rank 0 of world 1), so the single-process path issues no collective at all.

Conventions the loop relies on:

- ``batch_size`` is the GLOBAL batch: each rank trains on ``batch_size // world_size`` images
  per step (``local_batch`` refuses a batch size the world size does not divide).
- Every rank computes the same per-epoch permutation of the training split and takes its own
  contiguous slice (``shard``): the shards are disjoint and together cover the split.
- Random streams are derived from ``(seed, purpose, rank, epoch)`` (``stream_seed``), so they
  differ per rank, need no state in the checkpoint and replay exactly on resume.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.distributed as dist

from trainables.errors import ConfigError


def is_distributed() -> bool:
    """A process group is initialised (by the caller) and spans more than this process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def backend_for(device: torch.device | str) -> str:
    """gloo on CPU, nccl on CUDA: what a caller passes to ``init_process_group``."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def local_batch(batch_size: int, world: int) -> int:
    """Images per rank per step; the global ``batch_size`` must split evenly."""
    if batch_size % world:
        raise ConfigError(f"batch_size {batch_size} is the global batch of {world} data-parallel "
                          f"workers and must be divisible by the world size {world} (e.g. "
                          f"{max(world, batch_size // world * world)})", where="batch_size")
    return batch_size // world


def stream_seed(seed: int, *keys: Any) -> int:
    """A 63-bit seed for the random stream named by ``keys`` (purpose, rank, epoch, ...)."""
    text = ":".join(str(k) for k in (seed, *keys)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def shard_bounds(n: int, rank_: int, world: int) -> tuple[int, int]:
    """[lo, hi) of this rank's contiguous slice of ``n`` items; the first ``n % world`` ranks
    hold one more (``torch.tensor_split``'s rule)."""
    size, extra = divmod(n, world)
    lo = rank_ * size + min(rank_, extra)
    return lo, lo + size + (rank_ < extra)


def shard(indices: torch.Tensor, rank_: int, world: int) -> torch.Tensor:
    """This rank's contiguous slice of ``indices``: disjoint across ranks, covering them all."""
    lo, hi = shard_bounds(len(indices), rank_, world)
    return indices[lo:hi]


def epoch_permutation(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The training order of ``epoch``: the same on every rank (seeded by recipe seed and epoch)."""
    gen = torch.Generator().manual_seed(stream_seed(seed, "shuffle", epoch))
    return torch.randperm(n, generator=gen).to(device)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (in place, returned); the identity on one process."""
    if is_distributed():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_max(value: float, device: torch.device) -> float:
    """The largest ``value`` over ranks (e.g. wall time: the slowest rank sets the pace)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is True on any: one decision, so no rank waits alone in a
    collective (non-finite loss, stopping)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. a measured latency, so constraints agree)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP broadcasts them before
    each training forward, but each rank's last forward then updates its own copy; evaluation and
    the checkpoint need one model."""
    if not is_distributed():
        return
    with torch.no_grad():
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def wrap_model(model: torch.nn.Module, device: torch.device, *, sync_bn: bool) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` (SyncBatchNorm first when asked). The caller
    keeps ``model`` for evaluation and checkpoints (its state_dict keys carry no ``module.``)."""
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        if device.type != "cuda":
            raise ConfigError("sync_bn: true needs CUDA workers (torch's SyncBatchNorm has no "
                              f"CPU kernel), got device {device.type}; set sync_bn: false",
                              where="sync_bn")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
