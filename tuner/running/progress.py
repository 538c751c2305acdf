"""The live console view of a run at the default verbosity: a Ray Tune ``ProgressReporter``.

Ray's own table (``CLIReporter``, kept for ``verbose >= 2``) prints 15 columns up to ~300
characters wide every 10 s. This view fits the terminal (down to 80 columns) and shows what a
tuning run is about: how much of the epoch budget is spent, when it will end, the best trial.

- On a terminal it redraws in place (rich ``Live``) at most every ``TTY_EVERY_S`` seconds.
- Otherwise (CI logs, ``ray submit``) it prints one plain line every ``PLAIN_EVERY_S`` seconds
  and whenever a trial ends: no colours, no cursor movement, no control characters.

The budget is ``trials x max_epochs`` trial-epochs. Early stopping frees part of it, so the ETA
assumes every unfinished trial uses the share of its budget the finished ones used (see
``RunStats``). Ray calls ``setup`` once, then ``should_report``/``report`` after every step of
its loop, and ``report(done=True)`` at the end. The reporter is pickled into the experiment's
``tuner.pkl`` (a resumed run uses it again), so the live state is made in ``setup``, never
pickled.
"""

from __future__ import annotations

import atexit
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ray.tune import ProgressReporter
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tuner.running.results import tie_break
from tuner.running.settings import RunSettings

TTY_EVERY_S = 2.0  # redraws on a terminal, at most
PLAIN_EVERY_S = 30.0  # status lines in a log, at most (plus one per trial that ends)
BEST_KNOBS = 4  # knobs of the best trial shown
STATUSES = ("RUNNING", "PENDING", "PAUSED", "TERMINATED", "ERROR")
FINISHED = ("TERMINATED", "ERROR")


def _epochs(trial: Any) -> int:
    """Epochs a trial has trained: the recipe's ``epoch`` count (a resumed or PBT-cloned trial
    carries its checkpoint's), else Ray's ``training_iteration`` (one report per epoch)."""
    result = getattr(trial, "last_result", None) or {}
    return int(result.get("epoch") or result.get("training_iteration") or 0)


def _metric(trial: Any, metric: str) -> float | None:
    value = (getattr(trial, "last_result", None) or {}).get(metric)
    return float(value) if isinstance(value, int | float) else None


def fmt(value: Any) -> str:
    """A knob value for the view: numbers with 3 significant digits (0.0005, 0.123, 64)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.3g}"


def fmt_metric(value: float | None) -> str:
    """A metric: 3 significant digits, trailing zeros kept so columns line up (0.900)."""
    return "--" if value is None else f"{value:#.3g}"


def fmt_duration(seconds: float | None) -> str:
    """1:02:03 / 2:05; '--' when unknown."""
    if seconds is None:
        return "--"
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


@dataclass(frozen=True)
class RunStats:
    """Where a run stands, from its trials; pure, so it is tested without Ray.

    ``used``: trial-epochs trained. ``freed``: budget finished trials left unused (stopped early
    by the scheduler, their own patience, or an error). ``expected``: the trial-epochs the whole
    run is expected to train: finished trials count what they used, every other trial (created
    or not yet suggested) the share of ``max_epochs`` the trials that terminated used on average
    (all of it until one has), but never less than it has already trained. ``rate``: trial-epochs
    per second trained since the view started, so a resumed run's earlier epochs do not inflate
    it. ``eta_s``: (expected - used) / rate.
    """

    budget: int
    used: int
    freed: int
    expected: float
    elapsed_s: float
    rate: float | None
    eta_s: float | None
    counts: dict[str, int]
    best: Any  # the trial with the best metric so far, or None
    running: list[Any]  # running trials, best metric first

    @property
    def done_fraction(self) -> float:
        """Share of the budget resolved: trained, or freed by trials that ended early."""
        return min(1.0, (self.used + self.freed) / self.budget) if self.budget else 0.0


def run_stats(trials: Sequence[Any], *, total_trials: int, max_epochs: int, metric: str,
              mode: str, elapsed_s: float, used_at_start: int = 0) -> RunStats:
    """The ``RunStats`` of ``trials`` (Ray ``Trial`` objects or anything with ``trial_id``,
    ``status``, ``last_result`` and ``config``) of a run of ``total_trials`` trials."""
    total_trials = max(total_trials, len(trials))
    epochs = {id(t): _epochs(t) for t in trials}
    used = sum(epochs.values())
    finished = [t for t in trials if t.status in FINISHED]
    freed = sum(max(0, max_epochs - epochs[id(t)]) for t in finished)
    terminated = [t for t in trials if t.status == "TERMINATED"]
    share = (sum(epochs[id(t)] for t in terminated) / len(terminated)) if terminated \
        else float(max_epochs)
    open_trials = [t for t in trials if t.status not in FINISHED]
    expected = (sum(epochs[id(t)] for t in finished)
                + sum(max(share, epochs[id(t)]) for t in open_trials)
                + share * (total_trials - len(trials)))
    trained = used - used_at_start
    rate = trained / elapsed_s if trained > 0 and elapsed_s > 0 else None
    remaining = max(0.0, expected - used)
    eta = remaining / rate if rate else (0.0 if remaining == 0 else None)
    counts = {s: sum(t.status == s for t in trials) for s in STATUSES}
    counts["PENDING"] += total_trials - len(trials)  # not yet suggested by the searcher
    rank = _rank(metric, mode)
    scored = [t for t in trials if _metric(t, metric) is not None]
    best = min(scored, key=rank) if scored else None
    running = sorted((t for t in trials if t.status == "RUNNING"), key=rank)
    return RunStats(budget=total_trials * max_epochs, used=used, freed=freed, expected=expected,
                    elapsed_s=elapsed_s, rate=rate, eta_s=eta, counts=counts, best=best,
                    running=running)


def _rank(metric: str, mode: str) -> Callable[[Any], tuple[bool, float, float]]:
    """A sort key, best trial first: by ``metric``, ties by its pair as the final pick breaks
    them (``results.tie_break``: val_acc ties by the lower val_loss), trials without the metric
    last."""
    sign = 1 if mode == "max" else -1
    pair = tie_break(metric)
    pair_sign = -1 if pair and pair[1] == "max" else 1

    def key(t: Any) -> tuple[bool, float, float]:
        value = _metric(t, metric)
        other = _metric(t, pair[0]) if pair else None
        return (value is None, -sign * (value or 0.0),
                pair_sign * other if other is not None and math.isfinite(other) else math.inf)

    return key


def device_kind(gpus_per_trial: float) -> str:
    """'cpu', or the CUDA device's name as the driver sees it ('cuda' when it sees none: the
    GPUs are on cluster nodes)."""
    if not gpus_per_trial:
        return "cpu"
    import torch

    return f"cuda {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cuda"


def _line(*parts: str | tuple[str, str]) -> Text:
    """One line that never wraps: cut with an ellipsis at the console's width."""
    return Text.assemble(*parts, no_wrap=True, overflow="ellipsis")


class LiveView(ProgressReporter):
    """The compact live view of a run (see the module docstring). ``knobs``: the tuned knob
    names in the space's order; the best trial shows the first ``BEST_KNOBS`` it has.
    ``clock`` and ``console`` are for tests (a fake clock; a console of a given width)."""

    def __init__(self, name: str, settings: RunSettings, knobs: Sequence[str], *,
                 clock: Callable[[], float] = time.monotonic,
                 console: Console | None = None) -> None:
        self.name = name
        self.settings = settings
        self.knobs = list(knobs)
        self.clock = clock
        self._console = console
        self._reset()

    def _reset(self) -> None:
        self._total = self.settings.num_samples
        self._device = ""
        self._start: float | None = None
        self._used_at_start: int | None = None
        self._last: float | None = None
        self._finished: set[str] = set()
        self._live: Live | None = None
        self._con: Console | None = self._console
        self._tty: bool | None = None
        self._printed: tuple | None = None  # what the last plain line said

    def __getstate__(self) -> dict[str, Any]:
        # pickled into tuner.pkl when the Tuner is built (and unpickled by `resume`): the
        # console and the Live display hold locks and file handles, and belong to one process
        return {**self.__dict__, "_live": None, "_con": None, "_console": None}

    # -- Ray's ProgressReporter interface -------------------------------------------------
    def setup(self, start_time: float | None = None, total_samples: int | None = None,
              metric: str | None = None, mode: str | None = None, **kwargs: Any) -> None:
        self._reset()
        if total_samples:  # a grid multiplies num_samples by its points
            self._total = int(total_samples)
        self._device = device_kind(self.settings.gpus_per_trial)
        self._start = self.clock()

    def should_report(self, trials: Sequence[Any], done: bool = False) -> bool:
        if done or self._last is None:
            return True
        if self.clock() - self._last >= (TTY_EVERY_S if self.tty else PLAIN_EVERY_S):
            return True
        return not self.tty and self._newly_finished(trials)

    def report(self, trials: Sequence[Any], done: bool, *sys_info: str) -> None:
        first, self._last = self._last is None, self.clock()
        self._finished = {t.trial_id for t in trials if t.status in FINISHED}
        stats = self.stats(trials)
        if not self.tty:
            if first:
                budget = (f"budget: {self._total} trials x {self.settings.max_epochs} epochs = "
                          f"{stats.budget} trial-epochs (%: trained or freed early)")
                for line in (self.header().plain, budget):
                    print(self._fit(line), file=self.console.file)
            # the end of the last trial already printed the final state: no second copy
            state = (stats.used, stats.freed, tuple(stats.counts.values()))
            if not (done and state == self._printed):
                print(self.plain_line(stats), file=self.console.file, flush=True)
            self._printed = state
            return
        if self._live is None:
            self._live = Live(console=self.console, auto_refresh=False, transient=False,
                              redirect_stdout=True, redirect_stderr=True)
            self._live.start()
            atexit.register(self._stop)  # an exception in Ray's loop never reports done
        self._live.update(self.view(stats), refresh=True)
        if done:
            self._stop()

    # -- what it shows ----------------------------------------------------------------------
    @property
    def console(self) -> Console:
        if self._con is None:
            self._con = Console(highlight=False)
        return self._con

    @property
    def tty(self) -> bool:
        """Redraw in place (a terminal) or print plain lines (a log): asked once per run."""
        if self._tty is None:
            self._tty = self.console.is_terminal
        return self._tty

    def stats(self, trials: Sequence[Any]) -> RunStats:
        if self._start is None:
            self._start = self.clock()
        used = sum(_epochs(t) for t in trials)
        if self._used_at_start is None:
            self._used_at_start = used
        return run_stats(trials, total_trials=self._total, max_epochs=self.settings.max_epochs,
                         metric=self.settings.metric, mode=self.settings.mode,
                         elapsed_s=self.clock() - self._start,
                         used_at_start=self._used_at_start)

    def header(self) -> Text:
        s = self.settings
        resources = f"{s.cpus_per_trial:g} CPU" + (f" + {s.gpus_per_trial:g} GPU"
                                                   if s.gpus_per_trial else "")
        return _line((self.name, "bold"), f" · {s.searcher} + {s.scheduler} · {resources} per "
                     f"trial · {self._device or device_kind(s.gpus_per_trial)}")

    def view(self, stats: RunStats) -> RenderableType:
        """The terminal view: header, budget bar, counts, best trial, one line per running
        trial (as many as the terminal's height allows)."""
        width = self.console.width
        progress = (f" {stats.done_fraction:4.0%}  {stats.used} run + {stats.freed} freed / "
                    f"{stats.budget} trial-epochs · {fmt_duration(stats.elapsed_s)} · "
                    f"ETA {fmt_duration(stats.eta_s)}")
        bar_width = max(10, min(40, width - len(progress)))
        bar = Table.grid()
        bar.add_column(width=bar_width, no_wrap=True)
        bar.add_column(no_wrap=True, overflow="ellipsis")
        bar.add_row(ProgressBar(total=1.0, completed=stats.done_fraction, width=bar_width),
                    Text(progress, no_wrap=True, overflow="ellipsis"))
        styles = {"RUNNING": "cyan", "PAUSED": "yellow", "TERMINATED": "green", "ERROR": "red"}
        counts: list[str | tuple[str, str]] = ["trials "]
        for i, status in enumerate(STATUSES):
            n = stats.counts[status]
            counts += [" · " if i else "",
                       (f"{n} {status.lower()}", styles.get(status, "") if n else "dim")]
        lines: list[RenderableType] = [self.header(), bar, _line(*counts), self._best(stats)]
        room = max(1, self.console.height - len(lines) - 1)
        shown = stats.running if len(stats.running) <= room else stats.running[:room - 1]
        lines += [self._running(t) for t in shown]
        if len(shown) < len(stats.running):
            lines.append(_line((f"  … {len(stats.running) - len(shown)} more running", "dim")))
        return Group(*lines)

    def _best(self, stats: RunStats) -> Text:
        m = self.settings.metric
        if stats.best is None:
            return _line(("best ", "bold"), (f"no {m} reported yet", "dim"))
        t = stats.best
        parts: list[str | tuple[str, str]] = [("best ", "bold"), f"{t.trial_id}  {m} ",
                                              (fmt_metric(_metric(t, m)), "bold green")]
        test = _metric(t, "test_acc")
        if test is not None:
            parts.append(f"  test_acc {fmt_metric(test)}")
        knobs = self._knobs(t)
        if knobs:
            parts.append(("  " + " ".join(knobs), "dim"))
        return _line(*parts)

    def _knobs(self, trial: Any) -> list[str]:
        config = getattr(trial, "config", None) or {}
        present = [k for k in self.knobs if config.get(k) is not None]
        return [f"{k}={fmt(config[k])}" for k in present[:BEST_KNOBS]]

    def _running(self, trial: Any) -> Text:
        m = self.settings.metric
        value = _metric(trial, m)
        max_e = self.settings.max_epochs
        return _line(f"  {trial.trial_id}  epoch {_epochs(trial):>{len(str(max_e))}}/{max_e}  ",
                     f"{m} {fmt_metric(value)}")

    def plain_line(self, stats: RunStats) -> str:
        """The status line for logs: plain text within the console's width; the details that
        do not fit are left out, least useful first (trial-epochs, the best's id, test_acc)."""
        c = stats.counts
        trials = (f"trials {c['TERMINATED'] + c['ERROR']}/{sum(c.values())} done, "
                  f"{c['RUNNING']} running"
                  + "".join(f", {c[s]} {s.lower()}" for s in ("PAUSED", "ERROR") if c[s]))
        core = f"[{fmt_duration(stats.elapsed_s)}] {stats.done_fraction:.0%}"
        detail = f" ({stats.used} trial-epochs run, {stats.freed} freed)"
        eta = f", ETA {fmt_duration(stats.eta_s)} | {trials}"
        best = test = who = short = ""
        if stats.best is not None:
            m = self.settings.metric
            short = f" | best {fmt_metric(_metric(stats.best, m))}"
            best = f" | best {m} {fmt_metric(_metric(stats.best, m))}"
            value = _metric(stats.best, "test_acc")
            test = f" test_acc {fmt_metric(value)}" if value is not None else ""
            who = f" ({stats.best.trial_id})"
        width = self.console.width
        candidates = [core + detail + eta + best + test + who, core + eta + best + test + who,
                      core + eta + best + test, core + eta + best, core + eta + short]
        return self._fit(next((c for c in candidates if len(c) <= width), candidates[-1]))

    def _fit(self, line: str) -> str:
        width = self.console.width
        return line if len(line) <= width else line[:width - 3] + "..."

    # -- internals ----------------------------------------------------------------------------
    def _newly_finished(self, trials: Iterable[Any]) -> bool:
        return any(t.status in FINISHED and t.trial_id not in self._finished for t in trials)

    def _stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
