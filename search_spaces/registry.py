"""Preset search spaces shipped as YAML files in ``search_spaces/presets``, keyed by name.

A preset is an ordinary space file: ``cnn-tuner run --space quick`` and ``--space my.yaml``
take the same path through ``load_space``. Unknown names list the presets.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from search_spaces.space import SearchSpace
from trainables.errors import ConfigError

__all__ = ["list_presets", "load_space", "preset_path"]

_SUFFIX = ".yaml"


def _presets_dir() -> Path:
    return Path(str(resources.files("search_spaces") / "presets"))


def list_presets() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.name[:-len(_SUFFIX)] for p in _presets_dir().glob(f"*{_SUFFIX}"))


def preset_path(name: str) -> Path:
    """The YAML file of preset ``name``; ConfigError listing the presets if there is none."""
    path = _presets_dir() / f"{name}{_SUFFIX}"
    if not path.is_file():
        raise ConfigError(f"unknown search space preset {name!r}; presets: "
                          f"{', '.join(list_presets())} (or give a path to a YAML file)",
                          where="space")
    return path


def load_space(spec: str | Path | Mapping[str, Any] | SearchSpace) -> SearchSpace:
    """A validated space from a preset name, a YAML path, a mapping or a SearchSpace."""
    if isinstance(spec, SearchSpace):
        return spec
    if isinstance(spec, Mapping):
        return SearchSpace(spec)
    path = Path(spec)
    if path.is_file() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return SearchSpace.from_yaml(path)
    return SearchSpace.from_yaml(preset_path(str(spec)))
