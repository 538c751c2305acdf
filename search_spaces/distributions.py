"""Distributions of a search space: immutable value objects with a YAML round-trip.

Modelled on ``optuna.distributions``: each distribution is plain data (no callables, no lambdas),
checks its own shape when built (``low < high``, a non-empty list of values...), and converts to
and from the one-key mapping a YAML file holds, e.g. ``{loguniform: [1.0e-3, 1.0]}``. Whether a
distribution fits a particular knob (type, valid range) is the space's business: a distribution
does not know which knob it will be given to.

Integer bounds are inclusive at both ends, as in Optuna (``randint(2, 8)`` can draw 8); the
converter to Ray Tune, whose ``randint`` excludes its upper bound, adjusts for it.

``when`` makes a knob conditional: ``{parent_knob: [values]}`` means the knob is drawn only in
configs whose parent takes one of those values, and is absent otherwise.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from trainables.errors import ConfigError

__all__ = [
    "KINDS", "Choice", "Distribution", "Grid", "LogUniform", "QRandInt", "RandInt", "Rng",
    "Uniform", "choice", "grid", "loguniform", "qrandint", "randint", "uniform",
]

Rng = random.Random | np.random.Generator
"""A seeded source of randomness; both the standard library's and numpy's are accepted."""


def _normalise_when(when: Any) -> dict[str, tuple] | None:
    """``{parent: value}`` or ``{parent: [values]}`` -> ``{parent: (values,)}`` (one parent)."""
    if when is None:
        return None
    if not isinstance(when, Mapping):
        raise ConfigError(f"`when` must be a mapping {{parent_knob: [values]}}, got "
                          f"{type(when).__name__} {when!r}")
    if len(when) != 1:
        raise ConfigError(f"`when` must name exactly one parent knob (conditions form a tree, "
                          f"like hyperopt's nested choices), got {dict(when)!r}")
    parent, values = next(iter(when.items()))
    if not isinstance(parent, str):
        raise ConfigError(f"`when` must be keyed by a knob name, got {parent!r}")
    values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    if not values:
        raise ConfigError(f"`when` lists no values of {parent!r}: the knob would never be drawn")
    return {parent: values}


def _sample_index(rng: Rng, n: int) -> int:
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(n))
    if isinstance(rng, random.Random):
        return rng.randrange(n)
    raise TypeError(f"rng must be random.Random or numpy.random.Generator, got {type(rng)}")


def _sample_uniform(rng: Rng, low: float, high: float) -> float:
    if not isinstance(rng, (np.random.Generator, random.Random)):
        raise TypeError(f"rng must be random.Random or numpy.random.Generator, got {type(rng)}")
    return float(rng.uniform(low, high))


@dataclass(frozen=True)
class Distribution:
    """Base class: a kind name, its YAML arguments and an optional ``when`` condition."""

    kind: ClassVar[str]
    arg_names: ClassVar[tuple[str, ...]]  # empty: one argument, a list of values
    when: dict[str, tuple] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "when", _normalise_when(self.when))

    @property
    def parent(self) -> str | None:
        """The knob this one is conditional on, or None."""
        return next(iter(self.when)) if self.when else None

    def args(self) -> list:
        """The YAML arguments: ``[low, high]``, ``[low, high, q]`` or the list of values."""
        return [getattr(self, name) for name in self.arg_names]

    def edges(self) -> tuple:
        """The extreme values it can draw (the cross-knob check tries them)."""
        raise NotImplementedError

    def sample(self, rng: Rng) -> Any:
        """One value drawn with ``rng`` (Python types, never numpy scalars)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {self.kind: list(self.args())}
        if self.when:
            out["when"] = {p: list(v) for p, v in self.when.items()}
        return out

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Distribution:
        """Parse the YAML form ``{kind: args, when: {...}}``; errors name the rule broken."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a distribution must be a mapping like {{uniform: [0.0, 0.5]}}, "
                              f"got {type(data).__name__} {data!r}")
        kinds = [k for k in data if k != "when"]
        if len(kinds) != 1 or kinds[0] not in KINDS:
            raise ConfigError(f"a distribution is one of {', '.join(KINDS)} (plus an optional "
                              f"`when`), got keys {list(map(str, data))}")
        cls = KINDS[kinds[0]]
        args = data[kinds[0]]
        return cls.from_args(args, when=data.get("when"))

    @classmethod
    def from_args(cls, args: Any, *, when: Any = None) -> Distribution:
        if not isinstance(args, (list, tuple)):
            raise ConfigError(f"{cls.kind} takes a list {cls._arity_text()}, got "
                              f"{type(args).__name__} {args!r}")
        if len(args) != len(cls.arg_names):
            raise ConfigError(f"{cls.kind} takes {len(cls.arg_names)} numbers "
                              f"{cls._arity_text()}, got {len(args)}: {list(args)!r}")
        return cls(*(_yaml_number(a) for a in args), when=when)

    @classmethod
    def _arity_text(cls) -> str:
        return f"[{', '.join(cls.arg_names)}]"


def _yaml_number(x: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as text; read such text as the number it spells."""
    if isinstance(x, str):
        try:
            return int(x)
        except ValueError:
            try:
                return float(x)
            except ValueError:
                return x
    return x


def _real(kind: str, name: str, x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise ConfigError(f"{kind} {name} must be a number, got {type(x).__name__} {x!r}")
    x = float(x)
    if not math.isfinite(x):
        raise ConfigError(f"{kind} {name} must be finite, got {x!r}")
    return x


def _integer(kind: str, name: str, x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or (
            not isinstance(x, numbers.Integral) and not float(x).is_integer()):
        raise ConfigError(f"{kind} {name} must be an integer, got {type(x).__name__} {x!r}")
    return int(x)


# -- discrete: a list of values -----------------------------------------------------------------
@dataclass(frozen=True)
class _Values(Distribution):
    values: tuple
    arg_names: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.values, (list, tuple)):
            raise ConfigError(f"{self.kind} takes a list of values, got "
                              f"{type(self.values).__name__} {self.values!r}")
        values = tuple(v.item() if isinstance(v, np.generic) else v for v in self.values)
        if not values:
            raise ConfigError(f"{self.kind} needs at least one value, got []")
        for v in values:
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise ConfigError(f"{self.kind} values must be plain scalars (bool, number, "
                                  f"text), got {type(v).__name__} {v!r}")
        for i, v in enumerate(values):
            if any(_same(v, w) for w in values[:i]):
                raise ConfigError(f"{self.kind} values must be distinct, got {v!r} twice in "
                                  f"{list(values)!r}")
        object.__setattr__(self, "values", values)

    def args(self) -> list:
        return list(self.values)

    @classmethod
    def from_args(cls, args: Any, *, when: Any = None) -> Distribution:
        if not isinstance(args, (list, tuple)):
            raise ConfigError(f"{cls.kind} takes a list of values, got {type(args).__name__} "
                              f"{args!r}")
        return cls(tuple(args), when=when)

    def edges(self) -> tuple:
        return self.values

    def sample(self, rng: Rng) -> Any:
        return self.values[_sample_index(rng, len(self.values))]


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same kind (``1 == True`` in Python, but not as choice values)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


@dataclass(frozen=True)
class Choice(_Values):
    """One of ``values``, drawn uniformly; the only kind that may be a ``when`` parent besides
    ``grid`` and fixed values, because a condition needs a value to compare to."""

    kind: ClassVar[str] = "choice"


@dataclass(frozen=True)
class Grid(_Values):
    """Every one of ``values``, once per grid point (Ray's ``grid_search``). Searchers that
    cannot enumerate (hyperopt) treat it as a choice. Never conditional: use choice."""

    kind: ClassVar[str] = "grid"


# -- numeric ranges -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Uniform(Distribution):
    """A float uniform in [low, high]; ``low < high`` (a point is a fixed value, not a range)."""

    low: float
    high: float
    kind: ClassVar[str] = "uniform"
    arg_names: ClassVar[tuple[str, ...]] = ("low", "high")

    def __post_init__(self) -> None:
        super().__post_init__()
        low, high = _real(self.kind, "low", self.low), _real(self.kind, "high", self.high)
        if not low < high:
            raise ConfigError(f"{self.kind}: `low < high` must hold, got low={low!r}, "
                              f"high={high!r}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def edges(self) -> tuple:
        return (self.low, self.high)

    def sample(self, rng: Rng) -> float:
        return min(max(_sample_uniform(rng, self.low, self.high), self.low), self.high)


@dataclass(frozen=True)
class LogUniform(Uniform):
    """A float whose log is uniform: for scales (lr, weight decay). ``0 < low < high``."""

    kind: ClassVar[str] = "loguniform"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.low > 0:
            raise ConfigError(f"{self.kind}: `low > 0` must hold (log scale), got "
                              f"low={self.low!r}")

    def sample(self, rng: Rng) -> float:
        x = math.exp(_sample_uniform(rng, math.log(self.low), math.log(self.high)))
        return min(max(x, self.low), self.high)


@dataclass(frozen=True)
class RandInt(Distribution):
    """An integer uniform in [low, high], both ends inclusive (as Optuna's)."""

    low: int
    high: int
    kind: ClassVar[str] = "randint"
    arg_names: ClassVar[tuple[str, ...]] = ("low", "high")

    def __post_init__(self) -> None:
        super().__post_init__()
        low, high = _integer(self.kind, "low", self.low), _integer(self.kind, "high", self.high)
        if not low <= high:
            raise ConfigError(f"{self.kind}: `low <= high` must hold, got low={low}, "
                              f"high={high}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def edges(self) -> tuple:
        return (self.low, self.high)

    def sample(self, rng: Rng) -> int:
        return self.low + _sample_index(rng, self.high - self.low + 1)


@dataclass(frozen=True)
class QRandInt(RandInt):
    """An integer in {low, low+q, ..., high}, both ends inclusive. ``low`` and ``high`` must be
    multiples of ``q``, so Optuna's reading (steps from low) and Ray's (multiples of q) agree."""

    q: int = 1
    kind: ClassVar[str] = "qrandint"
    arg_names: ClassVar[tuple[str, ...]] = ("low", "high", "q")

    def __post_init__(self) -> None:
        super().__post_init__()
        q = _integer(self.kind, "q", self.q)
        if q < 1:
            raise ConfigError(f"{self.kind}: `q >= 1` must hold, got q={q}")
        if self.low % q or self.high % q:
            raise ConfigError(f"{self.kind}: low and high must be multiples of q, got "
                              f"low={self.low}, high={self.high}, q={q}")
        object.__setattr__(self, "q", q)

    def sample(self, rng: Rng) -> int:
        return self.low + self.q * _sample_index(rng, (self.high - self.low) // self.q + 1)


KINDS: dict[str, type[Distribution]] = {
    cls.kind: cls for cls in (Choice, Grid, Uniform, LogUniform, RandInt, QRandInt)}
"""Distribution kinds by their YAML name."""


# -- the helper constructors users import -------------------------------------------------------
def choice(values: Sequence[Any], *, when: Mapping[str, Any] | None = None) -> Choice:
    """One of ``values``; e.g. ``choice(["step", "cosine"])``."""
    return Choice(values, when=when)  # type: ignore[arg-type]


def grid(values: Sequence[Any], *, when: Mapping[str, Any] | None = None) -> Grid:
    """Every one of ``values`` (grid search); ``when`` is refused by the space: use choice."""
    return Grid(values, when=when)  # type: ignore[arg-type]


def uniform(low: float, high: float, *, when: Mapping[str, Any] | None = None) -> Uniform:
    """A float uniform in [low, high]."""
    return Uniform(low, high, when=when)  # type: ignore[arg-type]


def loguniform(low: float, high: float, *, when: Mapping[str, Any] | None = None) -> LogUniform:
    """A float log-uniform in [low, high], ``low > 0``."""
    return LogUniform(low, high, when=when)  # type: ignore[arg-type]


def randint(low: int, high: int, *, when: Mapping[str, Any] | None = None) -> RandInt:
    """An integer in [low, high], both inclusive; e.g. ``randint(2, 8, when={"lr_schedule":
    "step"})``."""
    return RandInt(low, high, when=when)  # type: ignore[arg-type]


def qrandint(low: int, high: int, q: int = 1, *,
             when: Mapping[str, Any] | None = None) -> QRandInt:
    """An integer in {low, low+q, ..., high}, both inclusive; low and high multiples of q."""
    return QRandInt(low, high, q, when=when)  # type: ignore[arg-type]
