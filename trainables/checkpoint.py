"""Checkpoint files: written atomically, read only as plain tensors (weights_only=True).

A checkpoint is a dict of tensors, numbers, strings and lists; it carries the resolved Recipe so
a result can always be traced back to the knobs that made it.
"""

from __future__ import annotations

import os
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


def read_tensors(path: str | Path) -> Any:
    """``torch.load(weights_only=True)``: a file that is not plain tensors and containers (a
    pickle that would run code, text, a truncated file) is refused with one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("checkpoint file not found", where=str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a foreign file
        raise ConfigError(f"refused: not a plain-tensor checkpoint (torch.load weights_only=True "
                          f"rejected it: {_reason(e)})", where=str(path)) from None


def _reason(error: Exception) -> str:
    """The informative line of torch's (long, multi-line) weights_only refusal."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for ln in lines:
        if "Unsupported" in ln or "GLOBAL" in ln:
            return ln[:160]
    return f"{type(error).__name__}: {lines[0][:120]}" if lines else type(error).__name__


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a cnn-tuner checkpoint; anything else (or a pickle that would run code) is refused."""
    state = read_tensors(path)
    if not (isinstance(state, dict) and state.get("format") == FORMAT
            and isinstance(state.get("model"), dict) and isinstance(state.get("recipe"), dict)):
        raise ConfigError(f"not a cnn-tuner checkpoint (expected the dict with format {FORMAT!r}, "
                          "model and recipe that `cnn-tuner train` writes)", where=str(path))
    return state
