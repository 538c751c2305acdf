"""Multi-objective ASHA: asynchronous successive halving that ranks trials by Pareto fronts.

After Schmucker et al. (2021), "Multi-objective Asynchronous Successive Halving": Ray's
AsyncHyperBandScheduler (one bracket), except that a trial's standing at a rung comes from
non-dominated sorting with a crowding-distance tie-break (``pareto.rank_order``) over the
objective vectors recorded at that rung, instead of a quantile of one metric.

Rungs, as in Ray 2.60's ASHA: ``grace_period * reduction_factor**k`` for k = 0, 1, ... while
``log(max_t / grace_period) / log(reduction_factor) + 1 > k`` (Ray's formula, so the top rung
may equal ``max_t``). A result at or past a rung the trial has not been recorded at yet records
its objective vector there and decides:

    m = the number of trials recorded at the rung before this one
    continue  iff  m == 0  or  position < floor((m - 1) / reduction_factor) + 1

where ``position`` is the trial's place (0 = best) in ``rank_order`` of the m + 1 vectors, the
new trial ranked first among exact ties (as ASHA keeps a trial that equals its cut-off).

Why this rule: Ray's cut-off is ``np.nanpercentile`` of the m earlier values at
``(1 - 1/rf) * 100``, a number interpolated between two recorded values; a trial continues when
its value is >= the cut-off. With several objectives there is nothing to interpolate, so the
cut-off is rounded to the better of the two records: with ONE objective this rule continues a
trial exactly when its value is >= that upper record. So it never continues a trial ASHA
stops, and it stops one ASHA continues only when the trial falls between the two records that
ASHA interpolates between (then exactly floor((m-1)/rf) + 1 earlier ones beat it). The first
trial at a rung always continues, the second only if it is not beaten.

Departures from Ray, on purpose:

- A result with ``stop_reason: infeasible`` (``trainables.constraints``) is not a result: the
  trial ends by itself; it is not recorded (also not at ``on_trial_complete``).
- A result that lacks ``time_attr`` continues, as in Ray. One that lacks an objective, or has a
  NaN or non-numeric one, is fine between rungs; at a rung it stops the trial, unrecorded (Ray
  skips results without its metric and keeps a NaN trial running, as ``NaN < cutoff`` is
  False; a trial without a comparable vector cannot be ranked and is most likely diverged).
- A result at or past ``max_t`` stops the trial whether or not it has the objectives.
- ``set_search_properties`` accepts any metric/mode and returns True: the objectives rule.
  ``metric`` stays None so that Ray does not require it in every result.

State is plain Python (trial ids -> tuples of floats), so the scheduler pickles; ``save`` /
``restore`` write and read exactly that state. Ray 2.60 itself never calls them: it pickles the
scheduler into ``tuner.pkl`` when the run starts and unpickles that on ``Tuner.restore``, so a
resumed run starts with empty rungs, as Ray's own ASHA does.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from trainables.constraints import INFEASIBLE
from trainables.errors import ConfigError
from tuner.running.pareto import Objective, rank_order

__all__ = ["MultiObjectiveASHA"]

STATE_VERSION = 1


class MultiObjectiveASHA(TrialScheduler):
    """Asynchronous successive halving over several objectives (see the module docstring).
    One objective is allowed (then it is ASHA with the cut-off rounded up, see above)."""

    def __init__(self, *, objectives: Sequence[Objective], time_attr: str = "training_iteration",
                 max_t: int = 100, grace_period: int = 1, reduction_factor: float = 4) -> None:
        objectives = tuple(objectives)
        if not objectives or not all(isinstance(o, Objective) for o in objectives):
            raise ConfigError(f"objectives: one or more Objective, got {objectives!r}")
        if len({o.metric for o in objectives}) != len(objectives):
            raise ConfigError(f"objectives: a metric given twice in "
                              f"{[o.text for o in objectives]}")
        if grace_period <= 0:
            raise ConfigError(f"grace_period: must be > 0, got {grace_period}")
        if max_t < grace_period:
            raise ConfigError(f"max_t: must be >= grace_period ({grace_period}), got {max_t}")
        if reduction_factor <= 1:
            raise ConfigError(f"reduction_factor: must be > 1, got {reduction_factor}")
        super().__init__()
        self._objectives = objectives
        self._time_attr = time_attr
        self._max_t = max_t
        self._grace_period = grace_period
        self._reduction_factor = reduction_factor
        count = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)  # Ray's formula
        # (milestone, {trial_id: objective vector}), highest milestone first, as Ray's _Bracket
        self._rungs: list[tuple[float, dict[str, tuple[float, ...]]]] = [
            (grace_period * reduction_factor**k, {}) for k in reversed(range(count))]
        self._num_stopped = 0

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return self._objectives

    @property
    def milestones(self) -> list[float]:
        """The rungs' milestones, lowest first."""
        return [milestone for milestone, _ in reversed(self._rungs)]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Accepted whatever they are (the Tuner passes None, or the first objective): the
        objectives decide, and ``metric`` stays None so Ray does not demand it in every
        result."""
        return True

    # --- the rung logic -----------------------------------------------------------------------

    def _vector(self, result: dict) -> tuple[float, ...] | None:
        """The result's objective vector, or None when one is missing, not a number or NaN."""
        out = []
        for o in self._objectives:
            value = result.get(o.metric)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                return None
            if math.isnan(value):
                return None
            out.append(float(value))
        return tuple(out)

    def _rung_for(self, trial_id: str, t: float) -> dict[str, tuple[float, ...]] | None:
        """The records of the rung this result decides at, or None: Ray's _Bracket loop (the
        highest milestone reached that the trial has no record at, skipping recorded ones)."""
        for milestone, recorded in self._rungs:
            if t < milestone or trial_id in recorded:
                continue
            return recorded
        return None

    def _passes(self, recorded: dict[str, tuple[float, ...]], vector: tuple[float, ...]) -> bool:
        earlier = list(recorded.values())
        if not earlier:
            return True
        order = rank_order(np.array([vector, *earlier]), self._objectives)
        position = int(np.flatnonzero(order == 0)[0])
        return position < math.floor((len(earlier) - 1) / self._reduction_factor) + 1

    def _record(self, trial: Trial, result: dict) -> str:
        """Record ``result`` at its rung if it reaches a new one; CONTINUE or STOP."""
        recorded = self._rung_for(trial.trial_id, result[self._time_attr])
        if recorded is None:
            return TrialScheduler.CONTINUE
        vector = self._vector(result)
        if vector is None:
            return TrialScheduler.STOP
        action = TrialScheduler.CONTINUE if self._passes(recorded, vector) \
            else TrialScheduler.STOP
        recorded[trial.trial_id] = vector
        return action

    # --- TrialScheduler -----------------------------------------------------------------------

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        pass

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        pass

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        if result.get("stop_reason") == INFEASIBLE or self._time_attr not in result:
            return TrialScheduler.CONTINUE
        if result[self._time_attr] >= self._max_t:
            action = TrialScheduler.STOP
        else:
            action = self._record(trial, result)
        if action == TrialScheduler.STOP:
            self._num_stopped += 1
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        """Record the last result at its rung (as Ray's ASHA does); the decision is moot."""
        if not result or result.get("stop_reason") == INFEASIBLE \
                or self._time_attr not in result:
            return
        self._record(trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        pass

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        """As Ray's FIFOScheduler: the first PENDING trial, else the first PAUSED one."""
        for status in (Trial.PENDING, Trial.PAUSED):
            for trial in tune_controller.get_trials():
                if trial.status == status:
                    return trial
        return None

    def debug_string(self) -> str:
        rungs = " | ".join(f"Iter {milestone:g}: {len(recorded)} recorded"
                           for milestone, recorded in reversed(self._rungs))
        return (f"Using MultiObjectiveASHA ({', '.join(o.text for o in self._objectives)}): "
                f"num_stopped={self._num_stopped}\nRungs: {rungs}")

    # --- experiment resume --------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        return {"objectives": [o.text for o in self._objectives], "time_attr": self._time_attr,
                "max_t": self._max_t, "grace_period": self._grace_period,
                "reduction_factor": self._reduction_factor}

    def save(self, checkpoint_path: str) -> None:
        """Pickle the settings and the rung records (plain Python) to ``checkpoint_path``."""
        state = {"version": STATE_VERSION, "settings": self._settings(),
                 "rungs": [(milestone, dict(recorded)) for milestone, recorded in self._rungs],
                 "num_stopped": self._num_stopped}
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        """Load what ``save`` wrote; a scheduler built with other settings is a ValueError
        (its rungs would not match)."""
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        if state.get("version") != STATE_VERSION or state.get("settings") != self._settings():
            raise ValueError(f"MultiObjectiveASHA.restore: {checkpoint_path} holds the state of "
                             f"a scheduler with {state.get('settings')}, this one has "
                             f"{self._settings()}")
        self._rungs = [(milestone, dict(recorded)) for milestone, recorded in state["rungs"]]
        self._num_stopped = int(state["num_stopped"])
