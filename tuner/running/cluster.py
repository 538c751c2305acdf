"""Shared storage on a multi-node Ray cluster: refuse results that would stay on one node.

Ray Tune (since 2.7) writes every trial's results and checkpoints straight from the node the
trial runs on to ``storage_path``. A plain local path on a multi-node cluster is therefore a
different folder on every node: results are scattered, and a trial retried on another node
cannot find its checkpoint. Ray does not refuse that; this module does, before any trial starts.

Storage counts as shared when it is

- a URI Ray reaches through pyarrow (``s3://``, ``gs://``, ``abfs://``, ``hdfs://``, ...);
- a path on a network file system (NFS, CIFS/SMB, Lustre, GPFS, CephFS, GlusterFS, BeeGFS,
  or a FUSE mount such as s3fs / gcsfuse / JuiceFS), as ``/proc/mounts`` reports it;
- a path the user declares shared: ``tune(..., shared_storage=True)`` or the environment
  variable ``CNN_TUNER_SHARED_STORAGE=1`` (a file system this check does not recognise, or
  several Ray nodes on one machine).

A run is multi-node when the cluster has more than one alive node, or when one trial does not
fit on the driver's node (e.g. GPU trials submitted to a CPU-only head): the autoscaler will
then start worker nodes for the trials, even if none is up yet.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainables.errors import ConfigError
from tuner.running import storage as storage_paths

SHARED_STORAGE_ENV = "CNN_TUNER_SHARED_STORAGE"
# /proc/mounts file system types whose files every node that mounts them sees
NETWORK_FS_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "ceph", "glusterfs", "beegfs",
    "fuse",
})
_FALSE = ("", "0", "false", "no", "off")


def is_remote_uri(storage: str) -> bool:
    """A URI other than ``file://`` (which names a path on this node)."""
    return storage_paths.is_uri(storage) and not storage.startswith("file://")


def local_path(storage: str) -> str:
    """The path of a ``file://`` URI or a plain path, absolute."""
    if storage.startswith("file://"):
        storage = storage[len("file://"):]
    return os.path.abspath(os.path.expanduser(storage))


def parse_mounts(text: str) -> list[tuple[str, str]]:
    """``(mount point, fs type)`` pairs from the text of ``/proc/mounts`` (octal escapes
    such as ``\\040`` for a space decoded)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
            mounts.append((point, fields[2]))
    return mounts


def _read_mounts() -> list[tuple[str, str]]:
    try:
        return parse_mounts(Path("/proc/mounts").read_text())
    except OSError:  # not Linux: nothing is recognised, the user can declare it shared
        return []


def mount_fs_type(path: str, mounts: Iterable[tuple[str, str]] | None = None) -> str | None:
    """The file system type of the mount that holds ``path`` (the longest mount point that
    is a prefix of it), or None when unknown."""
    path = os.path.realpath(path)
    best, fs_type = "", None
    for point, kind in (_read_mounts() if mounts is None else mounts):
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fs_type = point, kind
    return fs_type


def is_network_fs(fs_type: str | None) -> bool:
    return fs_type is not None and (fs_type in NETWORK_FS_TYPES
                                    or fs_type.startswith("fuse."))


def declared_shared(shared_storage: bool = False) -> bool:
    return shared_storage or os.environ.get(SHARED_STORAGE_ENV, "").lower() not in _FALSE


def storage_is_shared(storage: str, *, shared_storage: bool = False,
                      mounts: Iterable[tuple[str, str]] | None = None) -> bool:
    """True when every node sees ``storage``: a remote URI, a network file system, or
    declared shared by the user."""
    if is_remote_uri(storage) or declared_shared(shared_storage):
        return True
    return is_network_fs(mount_fs_type(local_path(storage), mounts))


def multi_node_reason(nodes: list[dict[str, Any]], driver_node_id: str | None,
                      trial_resources: dict[str, float]) -> str | None:
    """Why trials may run on more than one node (None when they all run on the driver's):
    ``nodes`` as ``ray.nodes()`` returns them."""
    alive = [n for n in nodes if n.get("Alive")]
    if len(alive) > 1:
        return f"the Ray cluster has {len(alive)} alive nodes"
    own = next((n for n in alive if n.get("NodeID") == driver_node_id), None)
    if own is None:
        return None
    have = own.get("Resources", {})
    short = [f"{v:g} {k} (this node has {have.get(k, 0):g})"
             for k, v in trial_resources.items() if v > have.get(k, 0)]
    if short:
        return (f"a trial needs {', '.join(short)}, so it runs on other nodes the cluster "
                "starts")
    return None


def check_shared_storage(storage: str, *, trial_resources: dict[str, float],
                         shared_storage: bool = False) -> None:
    """Refuse (ConfigError) a node-local storage path when trials may run on several nodes.

    Call with Ray connected, before any trial starts.
    """
    import ray

    reason = multi_node_reason(ray.nodes(), ray.get_runtime_context().get_node_id(),
                               trial_resources)
    if reason is None or storage_is_shared(storage, shared_storage=shared_storage):
        return
    fs_type = mount_fs_type(local_path(storage)) or "unknown"
    raise ConfigError(
        f"--storage: {reason}, but {storage} is a node-local path (file system {fs_type}): "
        "each node would keep its own results and checkpoints, and a trial retried on "
        "another node could not resume. Use shared storage: an s3:// (or gs://) URI, a path "
        f"on NFS, or set {SHARED_STORAGE_ENV}=1 if every node sees this path")
