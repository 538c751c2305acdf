"""Searchers by name: grid, random, tpe (hyperopt), optuna (when installed), each returning flat
Recipe configs.

* ``grid`` and ``random`` use Ray Tune's BasicVariantGenerator over the converted param space
  (inactive conditional knobs come back as None, which the trainable drops).
* ``tpe`` uses Ray's HyperOptSearch over a native hyperopt space with nested choices, so TPE
  learns the conditional structure; its nested suggestions are flattened to Recipe knobs here,
  so every searcher hands trials the same flat config.
* ``optuna`` uses Ray's OptunaSearch over a define-by-run function (conditional knobs suggested
  only when active) with Optuna's TPE sampler: multivariate over the knobs that occur together,
  and a constant liar so concurrent trials are not all suggested the same point. Optuna is an
  optional dependency (``pip install 'cnn-tuner[optuna]'``).

Constraints on a trial's cost (``trainables.constraints``): an infeasible trial's last result
carries the worst value of the metric (``tuner.running.trial``), which is all ``tpe`` learns
(hyperopt has no notion of constraints); ``optuna`` also gets each trial's constraint values
(``tuner.running.constrained_optuna``), so its TPE ranks infeasible trials below all feasible
ones; ``grid`` and ``random`` learn nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ray.tune.search import BasicVariantGenerator, Searcher
from ray.tune.search.hyperopt import HyperOptSearch

from search_spaces import (
    Grid,
    SearchSpace,
    flatten_config,
    to_hyperopt_space,
    to_optuna_space,
    to_tune_param_space,
)
from trainables.constraints import Constraint, parse_constraints
from trainables.errors import ConfigError


@dataclass(frozen=True)
class SearchPlan:
    """What Tuner needs from a searcher: the search_alg and the param_space it samples from."""

    search_alg: Searcher | None
    param_space: dict[str, Any]
    max_concurrent_trials: int | None  # for TuneConfig (None: the search_alg limits itself)


class FlatHyperOptSearch(HyperOptSearch):
    """HyperOptSearch whose suggestions are flat Recipe knobs plus the space's fixed values."""

    def __init__(self, *args: Any, fixed: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fixed = dict(fixed)

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if config is None or config is Searcher.FINISHED:
            return config
        return {**self._fixed, **flatten_config(config)}


def _variants(space: SearchSpace, seed: int, num_samples: int, metric: str, mode: str,
              max_concurrent: int, constraints: tuple[Constraint, ...] = ()) -> SearchPlan:
    # the concurrency limit goes into the generator: Ray ignores TuneConfig's for a ready-made one
    return SearchPlan(BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent),
                      to_tune_param_space(space, seed), max_concurrent_trials=None)


def _tpe(space: SearchSpace, seed: int, num_samples: int, metric: str, mode: str,
         max_concurrent: int, constraints: tuple[Constraint, ...] = ()) -> SearchPlan:
    if any(isinstance(d, Grid) for d in space.tuned.values()):
        raise ConfigError("searcher 'tpe': grid values need --searcher grid (or use choice)")
    if not space.tuned:  # nothing to learn: every trial is the same fixed recipe
        return _variants(space, seed, num_samples, metric, mode, max_concurrent, constraints)
    alg = FlatHyperOptSearch(space=to_hyperopt_space(space), fixed=space.fixed, metric=metric,
                             mode=mode, n_initial_points=startup_points(num_samples),
                             random_state_seed=seed)
    # Without an explicit limit Ray keeps one pending trial for a non-random searcher, so short
    # trials would run one at a time: allow as many as the cluster has trial slots.
    return SearchPlan(alg, {}, max_concurrent_trials=max_concurrent)


def startup_points(num_samples: int) -> int:
    """A quarter of the budget as random start-up points (hyperopt's default is 20, Optuna's 10:
    too many for small budgets), at least 4 so TPE's density estimates have something to fit."""
    return max(4, num_samples // 4)


def _optuna(space: SearchSpace, seed: int, num_samples: int, metric: str, mode: str,
            max_concurrent: int, constraints: tuple[Constraint, ...] = ()) -> SearchPlan:
    define_by_run = to_optuna_space(space)  # refuses grid values before the import
    try:
        import optuna

        from tuner.running.constrained_optuna import (
            NATIVE,
            ConstrainedOptunaSearch,
            UserAttrConstraints,
        )
    except ImportError as err:
        raise ConfigError(f"searcher 'optuna' needs Optuna ({err}); install it with pip install "
                          "'cnn-tuner[optuna]', or use --searcher tpe") from None
    if not space.tuned:
        return _variants(space, seed, num_samples, metric, mode, max_concurrent, constraints)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per trial
    with warnings.catch_warnings():  # multivariate/group/constant_liar: "experimental" in 3.x
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Optuna >= 5 reads constraints off the trial; older ones through constraints_func
        old = {"constraints_func": UserAttrConstraints(tuple(c.text for c in constraints))} \
            if constraints and not NATIVE else {}
        sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=startup_points(num_samples), multivariate=True,
            group=True, constant_liar=True, **old)
    alg = ConstrainedOptunaSearch(space=define_by_run, metric=metric, mode=mode, sampler=sampler,
                                  constraints=constraints)
    return SearchPlan(alg, {}, max_concurrent_trials=max_concurrent)


SEARCHERS: dict[str, Callable[[SearchSpace, int, int, str, str, int, tuple[Constraint, ...]],
                               SearchPlan]] = {
    "grid": _variants, "random": _variants, "tpe": _tpe, "optuna": _optuna,
}


def build_search(name: str, space: SearchSpace, *, seed: int, num_samples: int,
                 metric: str = "val_acc", mode: str = "max", max_concurrent: int = 0,
                 constraints: Sequence[str] = ()) -> SearchPlan:
    """The search plan for searcher ``name``; unknown names list the valid ones.
    ``max_concurrent``: trials at once (0: as many as Ray can place); ``constraints``: their
    text (``trainables.constraints``), for the searchers that use them."""
    if name not in SEARCHERS:
        raise ConfigError(f"searcher: unknown searcher {name!r}; valid: {', '.join(SEARCHERS)}")
    sampled = [k for k, d in space.tuned.items() if not isinstance(d, Grid)]
    if name == "grid" and sampled:
        raise ConfigError(f"searcher 'grid': every tuned knob must be a grid, but {sampled[0]!r} "
                          "is sampled (use --searcher random, or give it grid: [...])")
    return SEARCHERS[name](space, seed, num_samples, metric, mode, max_concurrent,
                           parse_constraints(constraints))
