"""cnn-tuner's platform: ``tune`` / ``resume`` over Ray Tune, registries, results and the CLI."""

from tuner.running.api import resume, tune
from tuner.running.results import TuneResult

__all__ = ["tune", "resume", "TuneResult"]
