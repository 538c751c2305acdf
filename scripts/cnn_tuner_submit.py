"""Entry script for ``ray submit cluster.yaml scripts/cnn_tuner_submit.py -- run ...``.

``ray submit`` copies this file to the head node and runs it there as ``python ~/cnn_tuner_submit.py
ARGS``. It runs the ``cnn-tuner`` command line with ARGS, joined to the running cluster:

- ``run`` / ``resume`` get ``--address auto`` (the cluster this head node belongs to) unless
  ARGS name an address;
- ``run`` gets ``--storage $CNN_TUNER_STORAGE`` unless ARGS name a storage: cluster.yaml sets
  that variable on every node to the shared storage (an ``s3://`` bucket or an NFS mount), so
  results and checkpoints of every node land in one place.

Everything else (validation, one-line errors with exit code 2) is the CLI's own.
"""

from __future__ import annotations

import os
import sys

STORAGE_ENV = "CNN_TUNER_STORAGE"


def _has(args: list[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in args)


def cluster_args(argv: list[str], environ: dict[str, str] | None = None) -> list[str]:
    """The CLI arguments for a run on the cluster: ``argv`` plus the cluster's address and
    storage where ``argv`` does not give them."""
    environ = os.environ if environ is None else environ
    args = list(argv)
    command = args[0] if args else ""
    if command in ("run", "resume") and not _has(args, "--address"):
        args += ["--address", "auto"]
    if command == "run" and not _has(args, "--storage") and environ.get(STORAGE_ENV):
        args += ["--storage", environ[STORAGE_ENV]]
    return args


def main(argv: list[str] | None = None) -> int:
    from tuner.cli import main as cli_main

    return cli_main(cluster_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
