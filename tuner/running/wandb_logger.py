"""The Weights & Biases tracker (``wandb=True``, ``--wandb``): Ray's ``WandbLoggerCallback``,
offline unless ``WANDB_MODE`` says otherwise. Apart from ``trackers`` because Ray's module imports
wandb itself (0.3 s): only a run with W&B on imports this one."""

from __future__ import annotations

import os
from typing import Any

from ray.air.integrations.wandb import WandbLoggerCallback

from tuner.running import storage
from tuner.running.trackers import scoped_environ


def wandb_callback(path: str, name: str) -> WandbLoggerCallback:
    """Ray's W&B callback: project ``$WANDB_PROJECT`` (default cnn-tuner), group = the
    experiment, mode ``$WANDB_MODE`` (default offline), runs in PATH/wandb/ for a local path."""
    kwargs: dict[str, Any] = {"mode": os.environ.get("WANDB_MODE") or "offline"}
    if not storage.is_uri(path):
        kwargs["dir"] = path
    return OfflineWandbCallback(project=os.environ.get("WANDB_PROJECT") or "cnn-tuner",
                                group=name, **kwargs)


class OfflineWandbCallback(WandbLoggerCallback):
    """Ray's WandbLoggerCallback, whose setup asks for an API key unless ``WANDB_MODE`` is
    offline in the driver's environment: here the callback's own mode decides (set in the
    environment for the setup only)."""

    def setup(self, *args: Any, **kwargs: Any) -> None:
        mode = self.kwargs.get("mode")
        if mode not in ("offline", "disabled"):
            super().setup(*args, **kwargs)
            return
        with scoped_environ(WANDB_MODE=mode):
            super().setup(*args, **kwargs)
