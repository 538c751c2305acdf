"""Constraints on a trial's cost: ``params<=200k``, ``latency_ms<5``. Pure: parse and evaluate.

A constraint is ``METRIC OP NUMBER`` with a cost metric of ``trainables.cost`` (``params``,
``params_trainable``, ``flops``, ``latency_ms``, ``train_time_s``), an operator ``<=``, ``<``,
``>=`` or ``>``, and a number in Python notation (``2e5``) or with a ``k`` / ``M`` / ``G`` suffix
(thousand, million, billion: ``200k``, ``1.5M``, ``0.6G``). Spaces are allowed around the parts.

*Static* constraints (params, params_trainable, flops) are known as soon as the model is built,
so a recipe that breaks one never trains; *dynamic* ones are known later (latency_ms once
measured at the start, train_time_s after each epoch). The loop ends a trial that breaks any of
them with ``stop_reason: infeasible`` (``trainables.loop``).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trainables.errors import ConfigError

__all__ = ["DYNAMIC", "INFEASIBLE", "METRICS", "OPERATORS", "STATIC", "Constraint",
           "broken", "parse_constraint", "parse_constraints"]

INFEASIBLE = "infeasible"  # the stop_reason (and results status) of a trial that breaks one
STATIC = ("params", "params_trainable", "flops")  # known from the built model, before training
DYNAMIC = ("latency_ms", "train_time_s")  # measured: at the start, after each epoch
METRICS = (*STATIC, *DYNAMIC)
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
SUFFIXES = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}

# METRIC, then everything up to the number: an operator of comparison characters (or none)
_SHAPE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*([<>=!]*)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Constraint:
    """``metric op bound``, e.g. Constraint('params', '<=', 200000.0, 'params<=200k')."""

    metric: str
    op: str
    bound: float
    text: str  # as the user wrote it: what errors and results quote

    @property
    def static(self) -> bool:
        return self.metric in STATIC

    def holds(self, value: float) -> bool:
        return OPERATORS[self.op](float(value), self.bound)

    def violation(self, value: float) -> float:
        """How far ``value`` is past the bound: > 0 when broken, <= 0 when it holds (Optuna's
        convention for constraint values). A strict operator that is met exactly is broken by
        the smallest positive float."""
        value = float(value)
        over = value - self.bound if self.op in ("<=", "<") else self.bound - value
        if over == 0 and self.op in ("<", ">"):
            return math.ulp(0.0)
        return over

    def describe(self, value: float) -> str:
        """``params 225034 breaks params<=200k``: the value that broke it and the rule."""
        shown = f"{value:.0f}" if value.is_integer() and abs(value) < 1e15 else f"{value:.6g}"
        return f"{self.metric} {shown} breaks {self.text}"


def _number(text: str, whole: str, where: str) -> float:
    scale = SUFFIXES.get(text[-1:], 1.0) if text else 1.0
    digits = text[:-1] if scale != 1.0 else text
    try:
        value = float(digits) * scale
    except ValueError:
        value = math.nan
    if not digits or not math.isfinite(value) or digits.strip() != digits:
        raise ConfigError(f"{where}: {text!r} in {whole!r} is not a number (e.g. 2e5, 200k, "
                          "1.5M, 0.6G)")
    return value


def parse_constraint(text: str, where: str = "constraints") -> Constraint:
    """One constraint from its text; a ConfigError naming ``where`` and the rule otherwise."""
    if not isinstance(text, str):
        raise ConfigError(f"{where}: each constraint must be a string such as 'params<=200k', "
                          f"got {text!r}")
    shape = _SHAPE.match(text)
    if shape is None:
        raise ConfigError(f"{where}: {text!r} is not METRIC OP NUMBER (e.g. 'params<=200k'; "
                          f"metrics: {', '.join(METRICS)})")
    metric, op, number = shape.groups()
    if metric not in METRICS:
        raise ConfigError(f"{where}: unknown metric {metric!r} in {text!r} "
                          f"({', '.join(METRICS)})")
    if op not in OPERATORS:
        got = f"operator {op!r}" if op else "no operator"
        raise ConfigError(f"{where}: {got} in {text!r}; use {', '.join(OPERATORS)}")
    return Constraint(metric, op, _number(number, text, where), text.strip())


def parse_constraints(texts: str | Iterable[str] | None,
                      where: str = "constraints") -> tuple[Constraint, ...]:
    """Every constraint of ``texts`` (one string is one constraint), in order."""
    if texts is None:
        return ()
    if isinstance(texts, str):
        texts = (texts,)
    return tuple(parse_constraint(t, where) for t in texts)


def broken(constraints: Iterable[Constraint], metrics: Mapping[str, Any]) -> list[str]:
    """A line per constraint that ``metrics`` break; constraints on a metric not in ``metrics``
    (not measured yet) are skipped."""
    out = []
    for c in constraints:
        value = metrics.get(c.metric)
        if value is not None and not c.holds(value):
            out.append(c.describe(float(value)))
    return out
