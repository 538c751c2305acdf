"""Trial schedulers by name: fifo, asha (default), hyperband, median, pbt; with several
objectives, fifo and asha (the multi-objective ASHA of tuner.running.mo_asha).

All count time in epochs (``training_iteration`` = one reported epoch), so ``max_t`` is the
recipe's epoch budget and ``grace_period`` is the fewest epochs a trial gets before it may be
stopped.

A trial that breaks a constraint ends ``infeasible`` (``trainables.constraints``) with one last
result that carries the worst value of the metric for the searcher; a statically infeasible one
reports only that, at epoch 0 but as ``training_iteration`` 1. No scheduler sees that result
(``SkipsInfeasible``): it would sit in ASHA's rung 1, the median rule's medians or PBT's
population as a trial that trained one epoch to the worst score, lowering every cut-off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import (
    AsyncHyperBandScheduler,
    FIFOScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
    TrialScheduler,
)

from search_spaces import ClipToSpace, SearchSpace, pbt_mutations
from trainables.constraints import INFEASIBLE
from trainables.errors import ConfigError
from tuner.running.hyperband import FilledHyperBand
from tuner.running.results import tie_break

if TYPE_CHECKING:
    from tuner.running.pareto import Objective

TIME_ATTR = "training_iteration"
# ASHA's default first rung (Ray's default too). At epoch 2 instead, the quick preset's default
# run used 81 trial-epochs against 63 at epoch 1 (8 seeds side by side), search_efficiency 0.397
# of the budget against 0.283, with picks testing as well (BENCHMARKS.md sections 3 and 10).
ASHA_GRACE = 1
OTHER_GRACE = 2  # the median rule and the multi-objective ASHA: not measured at 1


@dataclass(frozen=True)
class SchedulerOptions:
    """Knobs of the early-stopping schedulers; defaults suit 10-30 epoch budgets."""

    grace_period: int | None = None  # None: ASHA_GRACE for asha, else OTHER_GRACE; at most
    # max_epochs
    reduction_factor: float = 3.0
    perturbation_interval: int = 4  # pbt: epochs between exploit/explore steps

    def grace(self, max_epochs: int, default: int = OTHER_GRACE) -> int:
        """The grace period given, else ``default`` epochs (at most max_epochs)."""
        return min(default, max_epochs) if self.grace_period is None else self.grace_period

    def check(self, max_epochs: int) -> None:
        if self.grace_period is not None and self.grace_period < 1:
            raise ConfigError(f"grace_period: must be >= 1 epoch, got {self.grace_period}")
        if self.grace(max_epochs) > max_epochs:
            raise ConfigError(f"grace_period: must be <= max epochs ({max_epochs}), got "
                              f"{self.grace_period}")
        if self.reduction_factor <= 1:
            raise ConfigError(f"reduction_factor: must be > 1, got {self.reduction_factor}")
        if self.perturbation_interval < 1:
            raise ConfigError("perturbation_interval: must be >= 1 epoch, got "
                              f"{self.perturbation_interval}")


class SkipsInfeasible:
    """Scheduler mixin (first base): the result that ends a trial infeasible is not one; the
    scheduler only learns that the trial is gone (``on_trial_remove``)."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get("stop_reason") == INFEASIBLE:
            return TrialScheduler.CONTINUE  # the trial returns by itself after this result
        return super().on_trial_result(tune_controller, trial, result)  # type: ignore[misc]

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if result and result.get("stop_reason") == INFEASIBLE:
            self.on_trial_remove(tune_controller, trial)  # type: ignore[attr-defined]
            return
        super().on_trial_complete(tune_controller, trial, result)  # type: ignore[misc]


TIE_BREAK_WEIGHT = 1e-9  # of the paired metric, clipped to +-TIE_BREAK_CLIP: below 1/n_val
TIE_BREAK_CLIP = 100.0  # for any validation split under 10 million images


def tie_broken(result: dict, metric: str, mode: str) -> dict:
    """``result`` with ``metric`` nudged by its pair (``results.tie_break``: val_acc by
    val_loss) by less than one validation image is worth, so trials tied on ``metric`` rank
    by the pair and no others change order. The original is not modified."""
    pair = tie_break(metric) if metric else None
    value, other = result.get(metric), result.get(pair[0]) if pair else None
    if pair is None or not isinstance(value, Real) or not isinstance(other, Real) \
            or not math.isfinite(other):
        return result
    same_way = (pair[1] == "min") == (mode == "min")
    nudge = TIE_BREAK_WEIGHT * max(-TIE_BREAK_CLIP, min(TIE_BREAK_CLIP, float(other)))
    return {**result, metric: value + nudge if same_way else value - nudge}


class BreaksTies:
    """Scheduler mixin (after ``SkipsInfeasible``): every result it judges carries the metric
    tie-broken by its pair (``tie_broken``), so trials tied on the metric rank as the final
    pick ranks them; the result Tune records is not changed."""

    _metric: str | None
    _mode: str | None

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        nudged = tie_broken(result, self._metric, self._mode)
        return super().on_trial_result(tune_controller, trial, nudged)  # type: ignore[misc]

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        nudged = tie_broken(result, self._metric, self._mode) if result else result
        super().on_trial_complete(tune_controller, trial, nudged)  # type: ignore[misc]


class ASHA(SkipsInfeasible, BreaksTies, AsyncHyperBandScheduler):
    """Ray's AsyncHyperBandScheduler, blind to infeasible results, whose rungs break ties on
    the metric by its pair, as the final pick does (``BreaksTies``).

    Ray continues a trial unless its value is below the rung's cut-off, a percentile of the
    values recorded there; when most trials reach val_acc 1.0 of 144 validation images, the
    cut-off is 1.0 and every one of them went on. Ranked by val_loss, only the rung's best
    fraction does. On search_efficiency (24 samples, 12 epochs, 5 seeds, a Zen 3): 0.497 and
    0.475 of the budget without, 0.464 and 0.458 with it (BENCHMARKS.md section 3).

    Measured and not kept: the ASHA paper's and Optuna's stricter rung rule (the best
    ``max(1, n // rf)`` of the ``n`` at a rung go on) reached 0.418 and 0.428, but the default
    run's pick tested 0.9833, 0.9777, 0.9916: at epoch 2 a digits trial's val_acc is too
    noisy to be that strict with 16 trials."""


class HyperBand(SkipsInfeasible, BreaksTies, FilledHyperBand):
    """FilledHyperBand (tuner.running.hyperband), blind to infeasible results; a bracket's
    halving keeps, among trials tied on the metric, those its pair ranks first
    (``BreaksTies``), where Ray's sort kept the ones added last."""


def _fifo(max_epochs: int, opts: SchedulerOptions, space: SearchSpace,
          num_trials: int) -> TrialScheduler:
    return FIFOScheduler()


def _asha(max_epochs: int, opts: SchedulerOptions, space: SearchSpace,
          num_trials: int) -> TrialScheduler:
    return ASHA(time_attr=TIME_ATTR, max_t=max_epochs,
                grace_period=opts.grace(max_epochs, ASHA_GRACE),
                reduction_factor=opts.reduction_factor)


def _hyperband(max_epochs: int, opts: SchedulerOptions, space: SearchSpace,
               num_trials: int) -> TrialScheduler:
    return HyperBand(time_attr=TIME_ATTR, max_t=max_epochs,
                     reduction_factor=opts.reduction_factor, num_trials=num_trials)


class StepMedianStoppingRule(SkipsInfeasible, MedianStoppingRule):
    """Stops a trial whose best metric so far is worse than the median of the other trials'
    metric AT the same epoch (Optuna's MedianPruner rule), after the grace period and once three
    others have reached that epoch.

    Ray's rule compares with the median of the others' RUNNING AVERAGES up to that epoch; on
    accuracy curves an average trails the values, so a weak trial's best still beats it and
    almost nothing stops (measured in the contract suite: 55 of 72 trial-epochs used, trials
    ending at 0.76 val_acc beside ones at 0.97 ran to the end). This overrides the private
    ``_running_mean`` of Ray 2.60's MedianStoppingRule (the hook its rule reads).

    Ties are not broken (no ``BreaksTies``): a trial stops only when its best is strictly
    worse than the others' median, so tied trials go on; ranking them by val_loss at every
    epoch after the grace period would stop half of a saturated field each epoch, a different
    rule that nothing here has measured.
    """

    def _running_mean(self, trial: Any, time: float) -> float:
        reached = [r for r in self._results[trial] if r[self._time_attr] <= time]
        return float(reached[-1][self._metric]) if reached else float("nan")


def _median(max_epochs: int, opts: SchedulerOptions, space: SearchSpace,
            num_trials: int) -> TrialScheduler:
    return StepMedianStoppingRule(time_attr=TIME_ATTR, grace_period=opts.grace(max_epochs),
                                  min_samples_required=3)


class LastEpochKeptPBT(SkipsInfeasible, PopulationBasedTraining):
    """Ray's PopulationBasedTraining, without a perturbation at a trial's last epoch.

    Ray perturbs whenever ``perturbation_interval`` epochs have passed, also on the final
    result: a trial in the lower quantile then restarts from the cloned trial's final checkpoint
    with nothing left to train and ends as a copy of it, its own result gone (measured: with
    ``--max-epochs 4`` and the default interval of 4, three of six trials ended with another
    trial's metrics and trial id in results.csv). Nothing is gained by exploiting then.

    ``max_running`` (set for data-parallel trials): how many trials train at once. Ray's PBT
    pauses a trial at a perturbation step while others are PENDING, so the population takes
    turns; a data-parallel trial's Tune actor reserves no CPU, so every open trial is RUNNING,
    most of them waiting for their worker group, and none would pause: it pauses too while more
    trials run than ``max_running``.

    A clone source always has a checkpoint: Ray records one for a trial only when that trial
    was itself in the upper quantile at its own last perturbation, so a trial that rose there
    since could be chosen and the exploit skipped ("no checkpoint for trial ...": the data-parallel
    contract test saw no exploit at all in one run of 4 trials x 3 epochs). Its latest
    checkpoint is used instead (unless it is the trial's final one, see above), as Ray does for
    a paused source; trials under PBT checkpoint at every report (the runner's
    ``checkpoint_budget=1.0``), so that is the state of its latest score.
    """

    max_running: int | None = None

    def __init__(self, *args: Any, max_t: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_t = max_t

    def _checkpoint_or_exploit(self, trial: Any, tune_controller: Any, upper_quantile: list,
                               lower_quantile: list) -> None:
        for top in upper_quantile:
            state, latest = self._trial_state[top], top.latest_checkpoint_result
            if top is not trial and not state.last_checkpoint and latest and latest.checkpoint \
                    and latest.metrics.get(self._time_attr, 0) < self._max_t:  # not its last
                state.last_checkpoint = latest.checkpoint
        super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile, lower_quantile)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self._max_t:
            return TrialScheduler.CONTINUE  # the trial ends by itself with this result
        decision = super().on_trial_result(tune_controller, trial, result)
        perturbed = self._trial_state[trial].last_perturbation_time == result.get(
            self._time_attr)
        if decision == TrialScheduler.CONTINUE and perturbed and self.max_running and sum(
                t.status == "RUNNING" for t in tune_controller.get_trials()) > self.max_running:
            return TrialScheduler.PAUSE
        return decision


def _pbt(max_epochs: int, opts: SchedulerOptions, space: SearchSpace,
         num_trials: int) -> TrialScheduler:
    mutations = pbt_mutations(space)
    if not mutations:
        raise ConfigError("scheduler 'pbt': the space tunes no knob PBT can change during "
                          "training (e.g. lr, weight_decay, dropout, aug_*)")
    return LastEpochKeptPBT(time_attr=TIME_ATTR, max_t=max_epochs,
                            perturbation_interval=opts.perturbation_interval,
                            hyperparam_mutations=mutations, custom_explore_fn=ClipToSpace(space))


SCHEDULERS: dict[str, Callable[[int, SchedulerOptions, SearchSpace, int], TrialScheduler]] = {
    "fifo": _fifo, "asha": _asha, "hyperband": _hyperband, "median": _median, "pbt": _pbt,
}

# Searcher x scheduler pairs refused before Ray starts, and why (the contract suite, the CLI and
# the README read this; every other pair of SEARCHERS x SCHEDULERS is accepted and proven).
_PBT_OWN_SEARCH = ("PBT explores by mutating the configs of running trials itself, so a "
                   "model-based searcher's suggestions would be overwritten and its model fed "
                   "mutated results")
REFUSED_PAIRS: dict[tuple[str, str], str] = {
    ("tpe", "pbt"): _PBT_OWN_SEARCH,
    ("optuna", "pbt"): _PBT_OWN_SEARCH,
    ("grid", "pbt"): "PBT mutates sampled knobs between epochs, and a grid space has none",
}


def check_pairing(searcher: str, scheduler: str) -> None:
    """Refuse a searcher/scheduler pair listed in REFUSED_PAIRS, in one line."""
    why = REFUSED_PAIRS.get((searcher, scheduler))
    if why:
        raise ConfigError(f"scheduler: {scheduler!r} does not work with searcher {searcher!r}: "
                          f"{why}; use searcher 'random'")


# Schedulers that PAUSE trials and resume them later from their last checkpoint (Ray restores a
# paused function trainable from the checkpoint of its last report): they need a checkpoint at
# every report, and a paused trial still counts as live for the searcher's concurrency limit.
# median is one: while fewer than three other trials have reached a trial's epoch and trials are
# pending, Ray's MedianStoppingRule pauses it to let them catch up (``_on_insufficient_samples``,
# "Yielding time to other trials"); a periodic checkpoint skipped before that pause made the
# trial repeat an epoch (caught by the contract suite's check (f), random + median).
PAUSING = frozenset({"hyperband", "median", "pbt"})


# Schedulers that work with several objectives (``RunSettings.objectives``): FIFO stops nothing,
# and asha becomes the multi-objective ASHA (tuner.running.mo_asha); the others rank trials by one
# number. The contract suite runs each of these with objectives and refuses the rest.
MULTI_OBJECTIVE = frozenset({"fifo", "asha"})


def check_multi_objective_scheduler(name: str) -> None:
    """Refuse, in one line, a scheduler that cannot weigh several objectives."""
    if name in SCHEDULERS and name not in MULTI_OBJECTIVE:
        raise ConfigError(f"scheduler: {name!r} ranks trials by one metric, so it cannot work "
                          f"with several objectives; use {' or '.join(sorted(MULTI_OBJECTIVE))} "
                          "(asha: multi-objective ASHA)")


def build_scheduler(name: str, max_epochs: int, options: SchedulerOptions | None = None,
                    space: SearchSpace | None = None, num_trials: int = 0,
                    objectives: Sequence[Objective] = ()) -> TrialScheduler:
    """The scheduler called ``name``; unknown names list the valid ones. ``num_trials``: how
    many trials the run will have (HyperBand halves an unfilled last bracket once all came).
    With ``objectives``, asha is the multi-objective ASHA (tuner.running.mo_asha)."""
    if name not in SCHEDULERS:
        raise ConfigError(f"scheduler: unknown scheduler {name!r}; valid: "
                          f"{', '.join(SCHEDULERS)}")
    opts = options or SchedulerOptions()
    opts.check(max_epochs)
    if objectives:
        check_multi_objective_scheduler(name)
        if name == "asha":
            from tuner.running.mo_asha import MultiObjectiveASHA

            return MultiObjectiveASHA(objectives=objectives, time_attr=TIME_ATTR,
                                      max_t=max_epochs, grace_period=opts.grace(max_epochs),
                                      reduction_factor=opts.reduction_factor)
    return SCHEDULERS[name](max_epochs, opts, space or SearchSpace.from_dict({}), num_trials)


def min_open_trials(scheduler: TrialScheduler, num_trials: int) -> tuple[int, str]:
    """The fewest trials the searcher must keep open (running, pending or paused: Ray's
    concurrency limits count paused trials) for ``scheduler`` to work, and why. A synchronous
    HyperBand bracket pauses its trials at each milestone until all of them reach it. PBT pauses
    a trial at each perturbation step while others are pending, so the population takes turns
    on the CPUs; with only the running trials open its population is just those, and the trials
    it picks to clone rarely have a checkpoint yet (measured: 0 exploits in 10 trials)."""
    if isinstance(scheduler, FilledHyperBand):
        return scheduler.largest_bracket, "its largest bracket waits at each milestone"
    if isinstance(scheduler, PopulationBasedTraining):
        return num_trials, "its population is every trial of the run"
    return 1, ""
