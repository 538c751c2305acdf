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

Warm start (``tuner.running.warm_start``): ``tpe`` and ``optuna`` take an earlier experiment's
finished trials as already evaluated (hyperopt trials marked done, Optuna trials added to the
study), so they are never run again, do not count in ``num_samples`` and count toward the random
start-up; ``grid`` and ``random`` learn nothing, so a warm start with them is refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray.tune.search import BasicVariantGenerator, Searcher
from ray.tune.search.hyperopt import HyperOptSearch

from search_spaces import (
    Grid,
    SearchSpace,
    flatten_config,
    optuna_distributions,
    to_hyperopt_point,
    to_hyperopt_space,
    to_optuna_space,
    to_tune_param_space,
)
from trainables.constraints import Constraint, parse_constraints
from trainables.errors import ConfigError

if TYPE_CHECKING:
    from tuner.running.warm_start import WarmStart

WARM_START_SEARCHERS = ("tpe", "optuna")  # the searchers that learn from finished trials


@dataclass(frozen=True)
class SearchPlan:
    """What Tuner needs from a searcher: the search_alg and the param_space it samples from."""

    search_alg: Searcher | None
    param_space: dict[str, Any]
    max_concurrent_trials: int | None  # for TuneConfig (None: the search_alg limits itself)


class FlatHyperOptSearch(HyperOptSearch):
    """HyperOptSearch whose suggestions are flat Recipe knobs plus the space's fixed values,
    optionally warm-started with an earlier experiment's trials (``warm_start`` over
    ``space_of``, the SearchSpace the hyperopt space was converted from)."""

    def __init__(self, *args: Any, fixed: dict[str, Any], space_of: SearchSpace | None = None,
                 warm_start: WarmStart | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fixed = dict(fixed)
        if warm_start is not None and space_of is not None:
            self._add_evaluated(space_of, warm_start)

    def _add_evaluated(self, space: SearchSpace, warm: WarmStart) -> None:
        """The earlier trials as hyperopt trials already done (loss = the reward, negated for
        mode max as Ray does), with the first tids: TPE counts them toward its start-up and Ray
        never suggests them. Ray's points_to_evaluate would run them again, and cannot express
        our nested choices of dicts."""
        import hyperopt as hpo

        labels = list(self.domain.params)
        now = hpo.utils.coarse_utcnow()
        docs = []
        for tid, (point, reward) in enumerate(zip(warm.points, warm.rewards, strict=True)):
            point_vals = to_hyperopt_point(space, point)
            vals = {label: point_vals.get(label, []) for label in labels}
            docs.append({
                "state": hpo.base.JOB_STATE_DONE, "tid": tid, "spec": None,
                "result": {"loss": self.metric_op * reward, "status": hpo.STATUS_OK},
                "misc": {"tid": tid, "cmd": ("domain_attachment", "FMinIter_Domain"),
                         "workdir": None, "idxs": {k: [tid] if v else [] for k, v in vals.items()},
                         "vals": vals},
                "exp_key": None, "owner": None, "version": 0, "book_time": now,
                "refresh_time": now})
        self._hpopt_trials.insert_trial_docs(docs)
        self._hpopt_trials.refresh()

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if config is None or config is Searcher.FINISHED:
            return config
        return {**self._fixed, **flatten_config(config)}


def _variants(space: SearchSpace, seed: int, num_samples: int, metric: str, mode: str,
              max_concurrent: int, constraints: tuple[Constraint, ...] = (),
              warm_start: WarmStart | None = None) -> SearchPlan:
    # the concurrency limit goes into the generator: Ray ignores TuneConfig's for a ready-made one
    return SearchPlan(BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent),
                      to_tune_param_space(space, seed), max_concurrent_trials=None)


def _tpe(space: SearchSpace, seed: int, num_samples: int, metric: str, mode: str,
         max_concurrent: int, constraints: tuple[Constraint, ...] = (),
         warm_start: WarmStart | None = None) -> SearchPlan:
    if any(isinstance(d, Grid) for d in space.tuned.values()):
        raise ConfigError("searcher 'tpe': grid values need --searcher grid (or use choice)")
    if not space.tuned:  # nothing to learn: every trial is the same fixed recipe
        return _variants(space, seed, num_samples, metric, mode, max_concurrent, constraints)
    alg = FlatHyperOptSearch(space=to_hyperopt_space(space), fixed=space.fixed, metric=metric,
                             mode=mode, n_initial_points=startup_points(num_samples),
                             random_state_seed=seed, space_of=space, warm_start=warm_start)
    # Without an explicit limit Ray keeps one pending trial for a non-random searcher, so short
    # trials would run one at a time: allow as many as the cluster has trial slots.
    return SearchPlan(alg, {}, max_concurrent_trials=max_concurrent)


def startup_points(num_samples: int) -> int:
    """A quarter of the budget as random start-up points (hyperopt's default is 20, Optuna's 10:
    too many for small budgets), at least 4 so TPE's density estimates have something to fit."""
    return max(4, num_samples // 4)


def _optuna(space: SearchSpace, seed: int, num_samples: int, metric: str, mode: str,
            max_concurrent: int, constraints: tuple[Constraint, ...] = (),
            warm_start: WarmStart | None = None) -> SearchPlan:
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
    evaluated = [(point, optuna_distributions(space, point), reward) for point, reward in
                 zip(warm_start.points, warm_start.rewards, strict=True)] if warm_start else []
    alg = ConstrainedOptunaSearch(space=define_by_run, metric=metric, mode=mode, sampler=sampler,
                                  constraints=constraints, evaluated=evaluated)
    return SearchPlan(alg, {}, max_concurrent_trials=max_concurrent)


SEARCHERS: dict[str, Callable[[SearchSpace, int, int, str, str, int, tuple[Constraint, ...],
                                WarmStart | None], SearchPlan]] = {
    "grid": _variants, "random": _variants, "tpe": _tpe, "optuna": _optuna,
}


# Searchers that search several objectives at once (``RunSettings.objectives``), and why the
# others cannot; the contract suite runs every searcher here with objectives and refuses the rest.
MULTI_OBJECTIVE = frozenset({"grid", "random", "optuna"})
SINGLE_OBJECTIVE_ONLY = {"tpe": "hyperopt's TPE optimises one number"}


def check_multi_objective_searcher(name: str) -> None:
    """Refuse, in one line, a searcher that cannot search several objectives."""
    if name in SEARCHERS and name not in MULTI_OBJECTIVE:
        why = SINGLE_OBJECTIVE_ONLY.get(name, "it is single-objective")
        raise ConfigError(f"searcher: {name!r} cannot search several objectives ({why}); use "
                          f"{', '.join(sorted(MULTI_OBJECTIVE))} (optuna: multi-objective TPE)")


def build_search(name: str, space: SearchSpace, *, seed: int, num_samples: int,
                 metric: str | list[str] = "val_acc", mode: str | list[str] = "max",
                 max_concurrent: int = 0, constraints: Sequence[str] = (),
                 warm_start: WarmStart | None = None) -> SearchPlan:
    """The search plan for searcher ``name``; unknown names list the valid ones.
    ``max_concurrent``: trials at once (0: as many as Ray can place); ``constraints``: their
    text (``trainables.constraints``), for the searchers that use them. ``metric`` and ``mode``
    are lists for a multi-objective search (``MULTI_OBJECTIVE`` searchers only).
    ``warm_start``: an earlier experiment's trials, already evaluated
    (``tuner.running.warm_start``; ``WARM_START_SEARCHERS`` only)."""
    if name not in SEARCHERS:
        raise ConfigError(f"searcher: unknown searcher {name!r}; valid: {', '.join(SEARCHERS)}")
    sampled = [k for k, d in space.tuned.items() if not isinstance(d, Grid)]
    if name == "grid" and sampled:
        raise ConfigError(f"searcher 'grid': every tuned knob must be a grid, but {sampled[0]!r} "
                          "is sampled (use --searcher random, or give it grid: [...])")
    if isinstance(metric, list):
        check_multi_objective_searcher(name)
    if warm_start is not None:
        check_warm_start_searcher(name)
    return SEARCHERS[name](space, seed, num_samples, metric, mode, max_concurrent,
                           parse_constraints(constraints), warm_start)


def check_warm_start_searcher(name: str) -> None:
    """Refuse, in one line, a warm start for a searcher that learns nothing from trials."""
    if name in SEARCHERS and name not in WARM_START_SEARCHERS:
        raise ConfigError(f"warm_start: searcher {name!r} learns nothing from earlier trials; "
                          f"use searcher {' or '.join(map(repr, WARM_START_SEARCHERS))}")
