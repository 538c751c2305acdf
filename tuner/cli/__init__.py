"""The ``cnn-tuner`` command line: its flags and one-line errors (``parser``), the commands
mapping them onto the Python API (``commands``), ``--set`` overrides, the knob table, and
single-recipe training (``train_run``).

``main`` is the entry point: it keeps a local run's Ray on loopback, which Ray decides when it
is imported, so it does that before importing the commands (they import Ray)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    from tuner.running.loopback import prefer_loopback

    joins = any(a == "--address" or a.startswith("--address=") for a in args)
    prefer_loopback("a cluster" if joins else None)  # before anything imports Ray
    from tuner.cli.parser import main as run

    return run(argv)


def build_parser() -> argparse.ArgumentParser:
    from tuner.cli.parser import build_parser as build

    return build()
