"""Ray's OptunaSearch telling Optuna's sampler each trial's constraint values.

Imported only by the ``optuna`` searcher (``tuner.running.searchers``), because importing it
imports Optuna. Optuna's samplers (TPE, NSGA-II, GP) treat a trial whose constraint values are
all <= 0 as feasible and rank infeasible ones below every feasible one, by how far they are
past their bounds. Ray's OptunaSearch knows nothing of constraints: this subclass sets them on
the Optuna trial from the trial's last result (its cost metrics: ``trainables.cost``) just
before Ray tells Optuna the result. Optuna >= 5 reads them from ``Trial.set_constraint``; older
ones through the sampler's ``constraints_func`` (``UserAttrConstraints``), which reads the same
values from the trial's user attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from trainables.constraints import Constraint

__all__ = ["NATIVE", "ConstrainedOptunaSearch", "UserAttrConstraints"]

NATIVE = hasattr(optuna.trial.Trial, "set_constraint")  # Optuna >= 5
_ATTR = "constraint:"  # user attribute prefix before Optuna 5


class UserAttrConstraints:
    """``constraints_func`` for Optuna < 5: the constraint values stored as user attributes (0,
    feasible, for a trial that has none: it errored before measuring). A class, not a lambda,
    so the sampler pickles with Ray's searcher state."""

    def __init__(self, texts: tuple[str, ...]) -> None:
        self.texts = texts

    def __call__(self, trial: Any) -> list[float]:
        return [float(trial.user_attrs.get(_ATTR + t, 0.0)) for t in self.texts]


class ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that sets the constraint values of a completed trial before telling it, and
    starts its study with ``evaluated`` trials: (params, distributions, value) of an earlier
    experiment (warm start: ``tuner.running.warm_start``), added as complete. Ray's
    ``evaluated_rewards`` refuses a define-by-run space, so they go in with
    ``optuna.trial.create_trial`` + ``Study.add_trial``, once: on resume the study comes back
    from Ray's searcher checkpoint with them."""

    def __init__(self, *args: Any, constraints: tuple[Constraint, ...] = (),
                 evaluated: Sequence[tuple[dict, dict, float]] = (), **kwargs: Any) -> None:
        self._evaluated = list(evaluated)  # read by _setup_study, which __init__ calls
        super().__init__(*args, **kwargs)
        self._constraints = tuple(constraints)

    def _setup_study(self, mode: Any) -> None:
        super()._setup_study(mode)
        for params, distributions, value in self._evaluated:
            self._ot_study.add_trial(optuna.trial.create_trial(
                state=optuna.trial.TrialState.COMPLETE, value=value, params=params,
                distributions=distributions))
        self._evaluated = []  # in the study now (and in its checkpoint)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if (self._constraints and result and ot_trial is not None
                and trial_id not in self._completed_trials):
            for c in self._constraints:
                value = result.get(c.metric)
                if value is None:
                    continue
                if NATIVE:
                    ot_trial.set_constraint(c.text, c.violation(value))
                else:
                    ot_trial.set_user_attr(_ATTR + c.text, c.violation(value))
        super().on_trial_complete(trial_id, result, error)
