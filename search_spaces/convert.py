"""The one converter from a SearchSpace to Ray Tune, hyperopt and Optuna objects, and back to flat
configs.

Three targets, because they represent conditional knobs differently:

- ``to_tune_param_space`` for Ray Tune's BasicVariantGenerator (grid and random search). Each
  conditional knob becomes ``tune.sample_from(ConditionalSample(...))``: Ray resolves grid values
  and plain domains first, then calls the sampler with the partly resolved spec; the sampler
  reads the parent value and returns a draw when the knob is active, else ``None``. So a trial
  config holds EVERY knob of the space, inactive ones as ``None``: drop them (``flatten_config``
  does) before building the Recipe, which then keeps its defaults for them.
- ``to_hyperopt_space`` for hyperopt TPE (native ``hp`` expressions, passed to
  ``HyperOptSearch(space=...)``): a parent with conditional children becomes a nested
  ``hp.choice`` of dicts, one option per parent value holding that value and the children active
  for it, so TPE models each branch separately and never sees an inactive knob. Samples come back
  nested: ``{"lr_schedule": {"lr_schedule": "step", "step_size": 4}, ...}``; ``flatten_config``
  turns them flat. Fixed knobs are NOT in the hyperopt space (hyperopt cannot hold constants):
  give them to the Tuner as ``param_space=space.fixed`` (Ray merges the searcher's suggestion
  over it) or add them with ``merge_fixed``.
- ``to_optuna_space`` for Optuna (Ray's ``OptunaSearch(space=...)``): a define-by-run function
  that suggests each tuned knob, under its own name, only when its parent took one of its
  values, and returns the flat config with the fixed knobs.

Earlier trials go the other way for a warm start: ``to_hyperopt_point`` (a flat config as
hyperopt's per-label values) and ``optuna_distributions`` (the distributions to add it to a
study with).

All three reproduce ``space.sample``'s semantics: same values, same ranges (integer ends inclusive),
same active knobs.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from search_spaces.distributions import (
    Choice,
    Distribution,
    Grid,
    LogUniform,
    QRandInt,
    RandInt,
    Uniform,
    _same,
)
from search_spaces.space import SearchSpace, _plain
from trainables.errors import ConfigError

__all__ = ["ClipToSpace", "ConditionalSample", "OptunaSpace", "flatten_config", "merge_fixed",
           "optuna_distributions", "pbt_mutations", "to_hyperopt_point", "to_hyperopt_space",
           "to_optuna_space", "to_tune_param_space"]

# hyperopt's quniform rounds uniform(low, high) / q; widening by just under half a step gives
# every integer the same mass and never rounds outside [low, high]
_HALF_STEP = 0.4999


# -- Ray Tune -----------------------------------------------------------------------------------
def to_tune_param_space(space: SearchSpace, seed: int | None = None) -> dict[str, Any]:
    """A Ray Tune ``param_space`` for BasicVariantGenerator (random and grid search).

    Fixed knobs stay constants; choice/uniform/loguniform/randint/qrandint/grid map to the
    ``tune`` domain of the same name (``randint``'s inclusive high becomes Ray's exclusive
    ``high + 1``). Conditional knobs are ``tune.sample_from(ConditionalSample)``, seeded from
    ``seed``; seed the plain domains too with ``BasicVariantGenerator(random_state=seed)``.
    Build a fresh param space per run: the conditional samplers carry their draw count.
    Inactive knobs resolve to ``None`` in the trial config (see ``flatten_config``).
    """
    from ray import tune

    if seed is None:
        seed = int(np.random.SeedSequence().entropy % 2**63)  # unseeded: fresh entropy
    out: dict[str, Any] = dict(space.fixed)
    drawn: list[str] = []
    for knob, dist in space.tuned.items():
        parent = dist.parent
        if parent is None or parent in space.fixed:
            out[knob] = _tune_domain(dist)
        else:
            out[knob] = tune.sample_from(ConditionalSample(
                knob=knob, dist=dist, ancestors=_ancestors(space, knob), seed=seed,
                context=tuple(drawn)))
        drawn.append(knob)
    return out


def _tune_domain(dist: Distribution) -> Any:
    from ray import tune

    kind = type(dist)
    if kind is Choice:
        return tune.choice(list(dist.values))
    if kind is Grid:
        return tune.grid_search(list(dist.values))
    if kind is Uniform:
        return tune.uniform(dist.low, dist.high)
    if kind is LogUniform:
        return tune.loguniform(dist.low, dist.high)
    if kind is RandInt or (kind is QRandInt and dist.q == 1):
        return tune.randint(dist.low, dist.high + 1)  # Ray's upper bound is exclusive
    if kind is QRandInt:
        return tune.qrandint(dist.low, dist.high, dist.q)  # inclusive for q > 1
    raise AssertionError(f"no Ray Tune domain for {dist!r}")


def _ancestors(space: SearchSpace, knob: str) -> tuple[tuple[str, tuple], ...]:
    """(parent, values) pairs from ``knob``'s parent up to its root, tuned parents only."""
    chain = []
    tuned = space.tuned
    parent = tuned[knob].parent
    while parent in tuned:
        chain.append((parent, tuned[knob].when[parent]))
        knob, parent = parent, tuned[parent].parent
    return tuple(chain)


class ConditionalSample:
    """A picklable ``tune.sample_from`` callable for one conditional knob (no lambdas).

    Called by Ray's variant generator with the spec being resolved (``{"config": {...}}`` inside
    a Tuner, the param space itself under ``generate_variants``). Returns a draw of ``dist`` when
    every ancestor condition holds, else ``None``. A parent not resolved yet raises Ray's
    ``RecursiveDependencyError`` so Ray retries after resolving it.

    Seeding: Ray does not pass its random state to ``sample_from`` functions, so each draw uses a
    numpy Generator derived from (seed, knob, the already resolved values of the knobs drawn
    before it, the number of draws so far). Ray deep-copies the param space for every trial; the
    copies share this object (``__deepcopy__``) so the draw count runs across trials, and two
    trials with the same discrete values still get different draws.
    """

    def __init__(self, *, knob: str, dist: Distribution,
                 ancestors: tuple[tuple[str, tuple], ...], seed: int,
                 context: tuple[str, ...]) -> None:
        self.knob = knob
        self.dist = dist
        self.ancestors = ancestors
        self.seed = seed
        self.context = context
        self.draws = 0

    def __call__(self, config: Mapping[str, Any]) -> Any:
        config = _trial_config(config, self.ancestors[0][0])
        for parent, values in self.ancestors:
            value = _resolved(config, parent)
            if value is None or not any(_same(_plain(value), v) for v in values):
                return None
        seen = [(k, _plain(config[k])) for k in self.context
                if k in config and not _unresolved(config[k])]
        entropy = [self.seed % 2**63, zlib.crc32(self.knob.encode()),
                   zlib.crc32(repr(seen).encode()), self.draws]
        self.draws += 1
        return self.dist.sample(np.random.default_rng(entropy))

    def __deepcopy__(self, memo: dict) -> ConditionalSample:
        return self

    def __repr__(self) -> str:
        return f"ConditionalSample({self.knob!r}, {self.dist.to_dict()!r})"


def _trial_config(spec: Mapping[str, Any], parent: str) -> Mapping[str, Any]:
    """The config inside a Tuner's experiment spec, or the spec itself (generate_variants)."""
    if parent not in spec and isinstance(spec.get("config"), Mapping):
        return spec["config"]
    return spec


def _unresolved(value: Any) -> bool:
    from ray.tune.search.sample import Domain

    return isinstance(value, Domain) or (isinstance(value, Mapping) and (
        "grid_search" in value or "eval" in value) and len(value) == 1)


def _resolved(config: Mapping[str, Any], parent: str) -> Any:
    from ray.tune.search.variant_generator import RecursiveDependencyError

    value = config.get(parent)
    if _unresolved(value):
        raise RecursiveDependencyError(f"{parent!r} is not resolved yet")
    return value


# -- hyperopt -----------------------------------------------------------------------------------
def to_hyperopt_space(space: SearchSpace) -> dict[str, Any]:
    """A native hyperopt space over the TUNED knobs (fixed ones are not included).

    Labels are knob names, and for knobs inside a nested choice the knob plus the branch path,
    e.g. ``gamma[lr_schedule=step]``, so a child active under two parent values gets two labels
    (hyperopt needs unique labels; TPE then learns each branch's value separately).
    """
    tuned = space.tuned
    return {k: _hp_node(space, k, ()) for k, d in tuned.items()
            if d.parent is None or d.parent in space.fixed}


def _hp_node(space: SearchSpace, knob: str, path: tuple[tuple[str, Any], ...]) -> Any:
    from hyperopt import hp

    dist = space.tuned[knob]
    label = _hp_label(knob, path)
    children = space.children(knob)
    if not children:
        return _hp_leaf(dist, label)
    options = []
    for value in dist.values:  # a parent is a choice or a grid (checked by the space)
        option = {knob: value}
        for child in children:
            if any(_same(value, v) for v in space.tuned[child].when[knob]):
                option[child] = _hp_node(space, child, (*path, (knob, value)))
        options.append(option)
    return hp.choice(label, options)


def _hp_label(knob: str, path: tuple[tuple[str, Any], ...]) -> str:
    return knob + (f"[{','.join(f'{p}={v}' for p, v in path)}]" if path else "")


def to_hyperopt_point(space: SearchSpace, flat: Mapping[str, Any]) -> dict[str, list]:
    """A flat config of ``space`` (an earlier trial's knobs) as hyperopt stores a trial's values
    (``misc["vals"]``): every label of ``to_hyperopt_space(space)`` -> ``[value]`` where the
    config takes that node (a choice as the index of its value, an integer as the float
    ``quniform`` draws) or ``[]`` on a branch it does not take. With it a finished trial is added
    to hyperopt's ``Trials`` as already evaluated (``tuner.running.warm_start``); Ray's
    ``points_to_evaluate`` cannot express nested choices of dicts."""
    vals: dict[str, list] = {}
    for knob, dist in space.tuned.items():
        if dist.parent is None or dist.parent in space.fixed:
            _hp_point(space, knob, (), flat, True, vals)
    return vals


def _hp_point(space: SearchSpace, knob: str, path: tuple[tuple[str, Any], ...],
              flat: Mapping[str, Any], taken: bool, vals: dict[str, list]) -> None:
    dist = space.tuned[knob]
    label = _hp_label(knob, path)
    if taken and knob not in flat:
        raise ConfigError(f"knob {knob!r}: active in this config but missing from it")
    value = _plain(flat[knob]) if taken else None
    if not isinstance(dist, (Choice, Grid)):
        vals[label] = [float(value)] if taken else []
        return
    index = next((i for i, v in enumerate(dist.values) if _same(v, value)), None)
    if taken and index is None:
        raise ConfigError(f"knob {knob!r}: {value!r} is not one of {list(dist.values)}")
    vals[label] = [index] if taken else []
    for i, v in enumerate(dist.values):
        for child in space.children(knob):
            if any(_same(v, w) for w in space.tuned[child].when[knob]):
                _hp_point(space, child, (*path, (knob, v)), flat, taken and i == index, vals)


def _hp_leaf(dist: Distribution, label: str) -> Any:
    from hyperopt import hp
    from hyperopt.pyll import scope

    kind = type(dist)
    if kind in (Choice, Grid):
        return hp.choice(label, list(dist.values))
    if kind is Uniform:
        return hp.uniform(label, dist.low, dist.high)
    if kind is LogUniform:
        return hp.loguniform(label, math.log(dist.low), math.log(dist.high))  # log bounds
    if kind in (RandInt, QRandInt):
        q = getattr(dist, "q", 1)
        return scope.int(hp.quniform(label, dist.low - _HALF_STEP * q,
                                     dist.high + _HALF_STEP * q, q))
    raise AssertionError(f"no hyperopt expression for {dist!r}")


# -- Optuna -------------------------------------------------------------------------------------
def to_optuna_space(space: SearchSpace) -> OptunaSpace:
    """A define-by-run function for Optuna: ``to_optuna_space(space)(trial)`` is a flat config."""
    if any(isinstance(d, Grid) for d in space.tuned.values()):
        raise ConfigError("searcher 'optuna': grid values need --searcher grid (or use choice)")
    return OptunaSpace(space)


class OptunaSpace:
    """Suggests every active tuned knob of ``space`` on an Optuna trial (``suggest_categorical``,
    ``suggest_float`` with ``log`` for loguniform, ``suggest_int`` with ``step`` for qrandint;
    integer ends inclusive) and returns the flat config, fixed knobs included. One name per knob:
    a knob has one distribution, active under its parent's listed values. A picklable class, so
    Ray can save the searcher with the experiment and resume it."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: Any) -> dict[str, Any]:
        return self.space.resolve(lambda knob, dist: _optuna_suggest(trial, knob, dist))


def optuna_distributions(space: SearchSpace, flat: Mapping[str, Any]) -> dict[str, Any]:
    """The Optuna distribution of every tuned knob active in ``flat``, equal to the one
    ``OptunaSpace`` suggests it from: with them an earlier trial joins a study as already
    evaluated (``optuna.trial.create_trial``; Ray's ``evaluated_rewards`` refuses a
    define-by-run space)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    merged = {**space.fixed, **flat}
    for knob, dist in space.tuned.items():
        if not space.is_active(knob, merged):
            continue
        kind = type(dist)
        if kind is Choice:
            out[knob] = CategoricalDistribution(list(dist.values))
        elif kind in (Uniform, LogUniform):
            out[knob] = FloatDistribution(dist.low, dist.high, log=kind is LogUniform)
        elif kind in (RandInt, QRandInt):
            out[knob] = IntDistribution(dist.low, dist.high, step=getattr(dist, "q", 1))
        else:
            raise AssertionError(f"no Optuna distribution for {dist!r}")
    return out


def _optuna_suggest(trial: Any, knob: str, dist: Distribution) -> Any:
    kind = type(dist)
    if kind is Choice:
        return trial.suggest_categorical(knob, list(dist.values))
    if kind is Uniform:
        return trial.suggest_float(knob, dist.low, dist.high)
    if kind is LogUniform:
        return trial.suggest_float(knob, dist.low, dist.high, log=True)
    if kind in (RandInt, QRandInt):
        return trial.suggest_int(knob, dist.low, dist.high, step=getattr(dist, "q", 1))
    raise AssertionError(f"no Optuna suggestion for {dist!r}")


# -- back to flat Recipe configs ----------------------------------------------------------------
def flatten_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A flat dict of Recipe knobs from a trial config or a hyperopt sample.

    Nested branch dicts (hyperopt, ``HyperOptSearch``) are merged into the top level, ``None``
    values (inactive knobs of a Ray param space) are dropped, numpy scalars become Python values.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            items = flatten_config(value).items()
        elif value is None:
            continue
        else:
            items = ((key, _plain(value)),)
        for k, v in items:
            if k in flat and not _same(flat[k], v):
                raise ConfigError(f"knob {k!r}: two values in one config ({flat[k]!r} and "
                                  f"{v!r})")
            flat[k] = v
    return flat


def merge_fixed(space: SearchSpace, flat: Mapping[str, Any]) -> dict[str, Any]:
    """``flat`` plus the space's fixed values (a drawn value wins; there should be none)."""
    return {**space.fixed, **flat}


# -- Population Based Training --------------------------------------------------------------------
# Knobs PBT may change between epochs of a running trial: they take effect on the next batch
# without rebuilding the model's parameters (a trial resumed under new values keeps its weights).
PBT_MUTABLE = frozenset({
    "lr", "momentum", "weight_decay", "label_smoothing", "dropout", "aug_hflip", "aug_vflip",
    "aug_rotation", "aug_color_jitter", "aug_random_erasing", "aug_crop_padding",
    "aug_crop_scale_min", "mixup_alpha", "cutmix_alpha",
})


def pbt_mutations(space: SearchSpace) -> dict[str, Any]:
    """``hyperparam_mutations`` for Ray's PopulationBasedTraining: the space's unconditional
    tuned knobs that PBT can change mid-training, as Ray Tune domains."""
    return {knob: _tune_domain(dist) for knob, dist in space.tuned.items()
            if knob in PBT_MUTABLE and dist.parent is None and type(dist) is not Grid}


class ClipToSpace:
    """PBT's explore step, after Ray's: keeps every mutated knob inside its range in ``space``.

    Ray's PopulationBasedTraining perturbs a value by x0.8 or x1.2 without looking at its
    range (ray/tune/schedulers/pbt.py ``_explore``, Ray 2.60): lr drifts out of the space, and a
    momentum of 0.95 becomes 1.14, which the Recipe refuses, so the trial errors. Passed as
    ``custom_explore_fn``; a class, not a lambda, so the scheduler pickles with the experiment.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.bounds = {knob: (dist.low, dist.high) for knob, dist in space.tuned.items()
                       if knob in PBT_MUTABLE and hasattr(dist, "low")}

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        out = dict(config)
        for knob, (low, high) in self.bounds.items():
            if out.get(knob) is not None:
                out[knob] = type(low)(min(max(out[knob], low), high))  # int: already rounded
        return out
