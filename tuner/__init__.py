"""cnn-tuner's platform: ``tune`` / ``resume`` over Ray Tune, registries, results and the CLI."""

from tuner.api import resume, tune
from tuner.results import TuneResult

__all__ = ["tune", "resume", "TuneResult"]
