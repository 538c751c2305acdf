"""SearchSpace: fixed values and distributions over Recipe knobs, validated before anything runs.

A space is plain data, a mapping of knob -> fixed value or distribution (Python objects from
``search_spaces.distributions`` or their YAML form)::

    dataset: digits                                  # a scalar: a fixed value
    lr: {loguniform: [1.0e-3, 1.0]}                  # uniform | loguniform: [low, high]
    width: {qrandint: [16, 48, 8]}                   # randint: [low, high]; qrandint: + q
    lr_schedule: {choice: [step, cosine, onecycle]}  # choice | grid: [values...]
    step_size: {randint: [2, 8], when: {lr_schedule: [step]}}   # conditional on one parent

Knobs not mentioned keep the Recipe's defaults. Everything is checked when the space is built,
so a typo or an impossible combination costs one line of error, not a cluster start:

- per knob: the knob exists, a data knob is only fixed (data is loaded once per run and shared by
  every trial), the distribution's kind fits the knob's type, and every value and range end is
  valid for the knob (``KnobSpec.coerce``: the same messages as a Recipe's);
- conditions: ``when`` names one parent that is fixed, a choice or a grid of this space, with
  values valid for it, no knob depends on itself (directly or through a cycle), no grid is
  conditional;
- across knobs: configs the space can produce are built into Recipes (see ``_combinations``).

``sample`` draws one flat config (inactive conditional knobs absent), the reference semantics
every converter in ``convert`` must reproduce.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from search_spaces._combinations import check_combinations
from search_spaces.distributions import Choice, Distribution, Grid, Rng, _same
from trainables.errors import ConfigError, did_you_mean
from trainables.recipe import DATA_KNOBS, KNOBS, KnobSpec, load_yaml_mapping

__all__ = ["SearchSpace", "SpaceError", "active_knobs", "sample"]

# distribution kinds that draw numbers of each knob type; choice and grid fit every type
_NUMERIC_KINDS = {float: ("uniform", "loguniform"), int: ("randint", "qrandint")}


class SpaceError(ConfigError):
    """A ConfigError that remembers the knob it is about (to point at its line in a file)."""

    def __init__(self, message: str, *, knob: str | None = None) -> None:
        self.knob = knob
        super().__init__(message)


def _knob_error(knob: str, error: ConfigError | str) -> SpaceError:
    msg = str(error)
    prefix = f"knob {knob!r}"
    return SpaceError(msg if msg.startswith(prefix) else f"{prefix}: {msg}", knob=knob)


def _suggest(name: str) -> str:
    return did_you_mean(name, KNOBS)


def _check_known(name: Any, what: str) -> KnobSpec:
    if not isinstance(name, str) or name not in KNOBS:
        raise SpaceError(f"{what} {name!r}{_suggest(str(name))}; valid knobs: "
                         f"{', '.join(KNOBS)}", knob=name if isinstance(name, str) else None)
    return KNOBS[name]


def _fit(spec: KnobSpec, dist: Distribution) -> Distribution:
    """The distribution with its values coerced to the knob's type, or a ConfigError."""
    if spec.name in DATA_KNOBS:
        raise ConfigError(f"a data knob can only be fixed in a search space (the data is loaded "
                          f"once per run and shared by all trials), got {dist.to_dict()}")
    if isinstance(dist, (Choice, Grid)):
        return dataclasses.replace(dist, values=tuple(_coerce_values(spec, dist)))
    fitting = _NUMERIC_KINDS.get(spec.type, ())
    if dist.kind not in fitting:
        kinds = ", ".join((*fitting, "choice", "grid"))
        raise ConfigError(f"{dist.kind} draws {'integers' if 'randint' in dist.kind else 'floats'}"
                          f" but the knob is {spec.type.__name__} ({spec.range_text()}): use "
                          f"{kinds}")
    args = dist.args()
    for name, value in zip(dist.arg_names, args, strict=True):
        if name in ("low", "high"):
            _coerce_in_context(spec, value, f"the {name} end of {dist.kind} {args}")
    return dist


def _coerce_values(spec: KnobSpec, dist: Distribution) -> list:
    values = [_coerce_in_context(spec, v, f"a value of {dist.kind} {dist.args()}")
              for v in dist.args()]
    for i, v in enumerate(values):
        if any(_same(v, w) for w in values[:i]):
            raise ConfigError(f"{dist.kind} values must be distinct, got {v!r} twice in "
                              f"{dist.args()} (as {spec.type.__name__})")
    return values


def _coerce_in_context(spec: KnobSpec, value: Any, context: str) -> Any:
    try:
        return spec.coerce(value)
    except ConfigError as e:
        raise ConfigError(f"{e} ({context})") from None


class SearchSpace:
    """A validated search space: ``fixed`` values, ``tuned`` distributions and conditions.

    Build from a mapping (Python dict of knob -> value or distribution, or a parsed YAML file)
    with ``SearchSpace(d)`` / ``SearchSpace.from_dict(d)``, or from a file with ``from_yaml``.
    Knobs the space does not mention keep the Recipe's defaults.
    """

    def __init__(self, entries: Mapping[str, Any]) -> None:
        if isinstance(entries, SearchSpace):
            entries = entries.to_dict()
        if not isinstance(entries, Mapping):
            raise ConfigError(f"a search space must be a mapping of knob: value or distribution,"
                              f" got {type(entries).__name__}")
        self._fixed: dict[str, Any] = {}
        self._tuned: dict[str, Distribution] = {}
        self._keys: list[str] = []
        for knob, raw in entries.items():
            spec = _check_known(knob, "unknown knob")
            try:
                if isinstance(raw, Distribution):
                    self._tuned[knob] = _fit(spec, raw)
                elif isinstance(raw, Mapping):
                    self._tuned[knob] = _fit(spec, Distribution.from_dict(raw))
                else:
                    self._fixed[knob] = spec.coerce(raw)
            except ConfigError as e:
                raise _knob_error(knob, e) from None
            self._keys.append(knob)
        self._check_conditions()
        self._order = self._topological_order()
        check_combinations(self)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, entries: Mapping[str, Any]) -> SearchSpace:
        return cls(entries)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        """Read a YAML space (safe_load); errors name the file and the line of the knob."""
        data = load_yaml_mapping(path, what="search space")
        try:
            return cls(data)
        except ConfigError as e:
            line = _key_line(Path(path), getattr(e, "knob", None))
            raise e.at(f"{path}:{line}" if line else str(path)) from None

    def _check_conditions(self) -> None:
        for knob, dist in self._tuned.items():
            if dist.when is None:
                continue
            parent, values = dist.parent, dist.when[dist.parent]
            if isinstance(dist, Grid):
                raise SpaceError(f"knob {knob!r}: a grid cannot be conditional (every trial "
                                 f"runs every grid value, a conditional knob exists only in "
                                 f"some): use choice", knob=knob)
            if parent == knob:
                raise SpaceError(f"knob {knob!r}: `when` makes it conditional on itself",
                                 knob=knob)
            if parent not in KNOBS:
                raise SpaceError(f"knob {knob!r}: `when` names unknown knob {parent!r}"
                                 f"{_suggest(parent)}", knob=knob)
            possible = self._parent_values(knob, parent)
            spec = KNOBS[parent]
            coerced = []
            for v in values:
                try:
                    coerced.append(spec.coerce(v))
                except ConfigError:
                    raise SpaceError(f"knob {knob!r}: `when` value {v!r} is not valid for "
                                     f"{parent!r} ({spec.range_text()})", knob=knob) from None
            if not any(_same(v, p) for v in coerced for p in possible):
                raise SpaceError(f"knob {knob!r}: never drawn: `when` needs {parent} in "
                                 f"{coerced}, but {parent} only takes {list(possible)} in this "
                                 f"space", knob=knob)
            self._tuned[knob] = dataclasses.replace(dist, when={parent: tuple(coerced)})
        for knob in self._tuned:
            chain = [knob]
            while (parent := self._tuned[chain[-1]].parent) in self._tuned:
                if parent in chain:
                    cycle = " -> ".join(chain[chain.index(parent):] + [parent])
                    raise SpaceError(f"knob {knob!r}: `when` conditions form a cycle: {cycle}",
                                     knob=knob)
                chain.append(parent)

    def _parent_values(self, knob: str, parent: str) -> tuple:
        if parent in self._fixed:
            return (self._fixed[parent],)
        dist = self._tuned.get(parent)
        if dist is None:
            raise SpaceError(f"knob {knob!r}: `when` names {parent!r}, which is not in this "
                             f"space: add it as a fixed value, a choice or a grid", knob=knob)
        if not isinstance(dist, (Choice, Grid)):
            raise SpaceError(f"knob {knob!r}: `when` parent {parent!r} must be fixed, a choice "
                             f"or a grid, but it is {dist.kind} {dist.args()}", knob=knob)
        return dist.values

    def _topological_order(self) -> tuple[str, ...]:
        order: list[str] = []

        def visit(knob: str) -> None:
            if knob in order:
                return
            parent = self._tuned[knob].parent
            if parent in self._tuned:
                visit(parent)
            order.append(knob)

        for knob in self._tuned:
            visit(knob)
        return tuple(order)

    # -- views ----------------------------------------------------------------------------------
    @property
    def fixed(self) -> dict[str, Any]:
        """Knob -> fixed value (typed by the knob)."""
        return dict(self._fixed)

    @property
    def tuned(self) -> dict[str, Distribution]:
        """Knob -> distribution, parents before their conditional children."""
        return {k: self._tuned[k] for k in self._order}

    @property
    def conditions(self) -> dict[str, tuple[str, tuple]]:
        """Conditional knob -> (parent knob, parent values for which it is drawn)."""
        return {k: (d.parent, d.when[d.parent]) for k, d in self.tuned.items() if d.when}

    def children(self, parent: str) -> tuple[str, ...]:
        """Tuned knobs conditional on ``parent``, in draw order."""
        return tuple(k for k, d in self.tuned.items() if d.parent == parent)

    def is_active(self, knob: str, config: Mapping[str, Any]) -> bool:
        """Whether ``knob`` is drawn in a config with these parent values."""
        if knob in self._fixed:
            return True
        dist = self._tuned[knob]
        parent = dist.parent
        if parent is None or parent in self._fixed:
            return True  # a fixed parent always takes one of the values (else refused)
        if parent not in config or not self.is_active(parent, config):
            return False
        return any(_same(_plain(config[parent]), v) for v in dist.when[parent])

    def resolve(self, pick: Callable[[str, Distribution], Any]) -> dict[str, Any]:
        """A flat config: fixed values plus ``pick(knob, dist)`` for every active tuned knob."""
        config = dict(self._fixed)
        for knob in self._order:
            if self.is_active(knob, config):
                config[knob] = pick(knob, self._tuned[knob])
        return config

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The YAML form, in the order the knobs were given."""
        return {k: self._fixed[k] if k in self._fixed else self._tuned[k].to_dict()
                for k in self._keys}

    def to_yaml(self, path: str | Path | None = None) -> str:
        data = {k: _Flow(v) if isinstance(v, dict) else v for k, v in self.to_dict().items()}
        text = yaml.dump(data, Dumper=_SpaceDumper, sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SearchSpace({self.to_dict()!r})"


class _Flow(dict):
    """A distribution's mapping, written on one line: ``lr: {loguniform: [0.001, 1.0]}``."""


class _SpaceDumper(yaml.SafeDumper):
    pass


def _represent_flow(dumper: yaml.SafeDumper, data: _Flow) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True)


_SpaceDumper.add_representer(_Flow, _represent_flow)


def _plain(value: Any) -> Any:
    """numpy scalars (from samplers) as Python values."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _key_line(path: Path, knob: str | None) -> int | None:
    """1-based line of ``knob``'s key in a YAML mapping file, if found."""
    if knob is None:
        return None
    try:
        node = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    if not isinstance(node, yaml.MappingNode):
        return None
    for key, _ in node.value:
        if getattr(key, "value", None) == knob:
            return key.start_mark.line + 1
    return None


def sample(space: SearchSpace, rng: Rng) -> dict[str, Any]:
    """One flat config of Recipe knobs: fixed values and a draw for every active tuned knob;
    inactive conditional knobs are absent (the Recipe keeps their defaults)."""

    def draw(knob: str, dist: Distribution) -> Any:
        return dist.sample(rng)

    return space.resolve(draw)


def active_knobs(space: SearchSpace, config: Mapping[str, Any]) -> set[str]:
    """The knobs of ``space`` that a config with these values uses (fixed ones included)."""
    merged = {**space.fixed, **config}
    return {k for k in (*space.fixed, *space.tuned) if space.is_active(k, merged)}
