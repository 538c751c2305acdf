"""cnn-tuner's platform: ``tune`` / ``resume`` over Ray Tune, registries, results and the CLI.

The names are loaded on first use, so that importing the package (the CLI does, first thing)
does not import Ray yet: a local run must set Ray's single-machine mode before Ray is imported
(see ``tuner.running.loopback.prefer_loopback``)."""

from typing import Any

__all__ = ["tune", "resume", "TuneConfig", "Resources", "RunConfig", "SchedulerOptions",
           "TuneResult"]


def __getattr__(name: str) -> Any:
    if name in ("tune", "resume"):
        from tuner.running import api

        return getattr(api, name)
    if name in ("TuneConfig", "Resources", "RunConfig"):
        from tuner.running import config

        return getattr(config, name)
    if name == "SchedulerOptions":
        from tuner.running.schedulers import SchedulerOptions

        return SchedulerOptions
    if name == "TuneResult":
        from tuner.running.results import TuneResult

        return TuneResult
    raise AttributeError(f"module 'tuner' has no attribute {name!r}")
