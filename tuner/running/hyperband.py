"""Synchronous HyperBand (Li et al., 2018) on Ray Tune's HyperBandScheduler, made to stop trials.

Ray 2.60's ``HyperBandScheduler`` stops no trial when fewer trials run at once than a bracket
holds, which is every run on a laptop (measured: ``cnn-tuner run --scheduler hyperband
--num-samples 12 --max-epochs 9`` ran 108 of 108 trial-epochs). Why, read off its source:

1. A bracket counts as *filled* while it holds ``n`` LIVE trials (``_Bracket.filled``). A trial
   that ends leaves room, so the next trial joins the same bracket again, and every trial of a
   run lands in the first bracket.
2. The first bracket Ray builds is ``s = 0``: ``n = s_max + 1`` trials that all run ``max_t``
   epochs, the bracket that stops nothing. The paper's Algorithm 1 runs ``s = s_max`` first
   (many trials, short first rung) down to ``s = 0``.
3. A bracket halves as soon as its live trials reach the milestone, even while the searcher is
   still adding trials to it (a searcher limited to a few trials at once adds them one by one),
   and keeps ``ceil(n / eta)`` of its NOMINAL size ``n``: an unfilled bracket keeps everyone.

``FilledHyperBand`` fixes the three: a bracket is filled by the trials it was given; brackets
go from ``s_max`` down; a bracket is halved once it is filled or the run's last trial has come
(``num_trials``), keeping ``ceil(trials in it / eta)``. Trials pause at a milestone until their
bracket is decided, so the searcher must keep ``largest_bracket`` trials open at once (the
runner sees to it) and a paused trial resumes from its checkpoint (one per epoch).
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import HyperBandScheduler
from ray.tune.schedulers.hyperband import _Bracket

__all__ = ["FilledHyperBand"]


class _FilledBracket(_Bracket):
    """A bracket filled by the trials it was given, halved only once no more will come."""

    def __init__(self, *args: Any, scheduler: FilledHyperBand, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scheduler = scheduler

    def filled(self) -> bool:
        return len(self._all_trials) >= self._n0

    def cur_iter_done(self) -> bool:
        complete = self.filled() or self._scheduler.all_trials_added()
        return complete and super().cur_iter_done()

    def successive_halving(self, metric: str, metric_op: float) -> tuple[list, list]:
        self._n = min(self._n, len(self._live_trials))  # halve the trials it really holds
        return super().successive_halving(metric, metric_op)


class FilledHyperBand(HyperBandScheduler):
    """Ray's synchronous HyperBand with the three fixes above; same arguments plus
    ``num_trials``, the number of trials the run will add (0: unknown, brackets must fill)."""

    def __init__(self, *args: Any, num_trials: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._num_trials = num_trials
        self._processing = False  # stopping a trial while processing calls back into on_remove
        last = self._s_max_1 - 1
        n0, r0 = self._get_n0, self._get_r0
        # Ray builds bracket k of a band with s = k; the paper's k-th bracket has s = s_max - k
        self._get_n0 = lambda k: n0(last - k)
        self._get_r0 = lambda k: r0(last - k)

    @property
    def largest_bracket(self) -> int:
        """Trials in the first (most aggressive) bracket: the most that wait for each other."""
        return self._get_n0(0)

    def all_trials_added(self) -> bool:
        return 0 < self._num_trials <= len(self._trial_info)

    def _create_bracket(self, k: int) -> _FilledBracket:
        return _FilledBracket(
            time_attr=self._time_attr, max_trials=self._get_n0(k), init_t_attr=self._get_r0(k),
            max_t_attr=self._max_t_attr, eta=self._eta, s=self._s_max_1 - 1 - k,
            stop_last_trials=self._stop_last_trials, scheduler=self)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if trial in self._trial_info:  # retried after a failure: back into its own bracket
            bracket, _ = self._trial_info[trial]
            bracket._live_trials.setdefault(trial, None)  # noqa: SLF001
            return
        super().on_trial_add(tune_controller, trial)
        if trial.status in ("TERMINATED", "ERROR"):
            # a resumed experiment adds its ended trials too (Ray keeps no scheduler state):
            # they fill their bracket as before, but wait at no milestone
            self._trial_info[trial][0].cleanup_trial(trial)
        if self.all_trials_added():
            # brackets whose trials all wait at a milestone for a fill that will not come
            for band in self._hyperbands:
                for bracket in band:
                    if bracket is not None and bracket.current_trials():
                        self._process(tune_controller, bracket)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        # Ray processes a bracket on a removal only before its first halving
        # (``is_being_processed`` stays set), so a trial that ends while the others wait at a
        # milestone would leave them paused for good; process whenever it can decide.
        bracket, _ = self._trial_info[trial]
        bracket.cleanup_trial(trial)
        if not bracket.finished() and bracket.current_trials():
            self._process(tune_controller, bracket)

    def _process(self, tune_controller: Any, bracket: _FilledBracket) -> None:
        if not self._processing and bracket.cur_iter_done():
            self._process_bracket(tune_controller, bracket)

    def _process_bracket(self, tune_controller: Any, bracket: Any) -> str:
        self._processing = True  # on every path: Ray's on_trial_result calls this directly
        try:
            return super()._process_bracket(tune_controller, bracket)
        finally:
            self._processing = False
