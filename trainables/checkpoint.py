"""Checkpoint files: written atomically, read only as plain tensors (weights_only=True).

A checkpoint is a dict of tensors, numbers, strings and lists; it carries the resolved Recipe so
a result can always be traced back to the knobs that made it.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from trainables.errors import ConfigError

FORMAT = "cnn-tuner/1"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` via a temporary file, so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a cnn-tuner checkpoint; anything else (or a pickle that would run code) is refused."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("checkpoint file not found", where=str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"refused: not a readable plain-tensor checkpoint "
                          f"(torch.load weights_only=True: {first[:160]})",
                          where=str(path)) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise ConfigError(f"not a cnn-tuner checkpoint (expected a dict with format {FORMAT!r} "
                          "and a 'model' state_dict)", where=str(path))
    return state
