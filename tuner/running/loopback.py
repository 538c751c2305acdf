"""Keep a local run's Ray on loopback. A module of its own that imports nothing heavy, because
it must run before anything imports Ray (the CLI calls it first)."""

from __future__ import annotations

import os
import sys


def prefer_loopback(address: str | None) -> None:
    """A local run (no ``address``) keeps every Ray socket on 127.0.0.1.

    Ray 2.60 on Linux binds its GCS, raylet and worker ports to all interfaces even when told
    the node address is 127.0.0.1, unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (its
    single-machine mode) is set before Ray is imported. A run that joins a cluster must not
    set it (the driver's address must be the node's)."""
    if not address and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
