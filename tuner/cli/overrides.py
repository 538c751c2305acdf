"""``--set knob=value`` parsing, shared by every CLI command that takes a recipe or a space."""

from __future__ import annotations

from typing import Any

import yaml

from trainables.errors import ConfigError


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``["lr=0.1", "batch_norm=false"]`` -> ``{"lr": 0.1, "batch_norm": False}`` (YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected knob=value (e.g. --set lr=0.1)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = value
    return out
