"""The ``cnn-tuner`` command line: flags mapped onto the Python API (``commands``), ``--set``
overrides, the knob table, and single-recipe training (``train_run``)."""

from tuner.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
