"""The live view of `cnn-tuner run` (tuner.running.progress): it fits the terminal, its numbers
are right, a log gets plain rate-limited lines, and Ray really uses it. Synthetic trials and an
injected clock, no Ray, except the one end-to-end run marked `ray`."""

from __future__ import annotations

import io
import pickle
import re
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from rich.cells import cell_len
from rich.console import Console

from tuner.running.progress import LiveView, run_stats
from tuner.running.settings import RunSettings

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
KNOBS = ["lr", "weight_decay", "label_smoothing", "optimizer", "aug_hflip", "width"]


@dataclass
class FakeTrial:
    """What the view reads of a Ray ``Trial``."""

    trial_id: str
    status: str
    last_result: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def _trial(i: int, status: str, epoch: int = 0, val_acc: float | None = None,
           **extra: Any) -> FakeTrial:
    result = {"epoch": epoch, "training_iteration": epoch, "val_acc": val_acc, **extra} \
        if epoch else {}
    return FakeTrial(f"c392f3{i:02d}", status, result,
                     {"lr": 0.000110485 * (i + 1), "weight_decay": 5e-4,
                      "label_smoothing": 0.05, "optimizer": "adamw", "aug_hflip": 0.5,
                      "width": 16})


def _asha_midway() -> list[FakeTrial]:
    """Budget 16 trials x 12 epochs: 6 trials ended after 4 epochs (a third of theirs), one
    errored at epoch 2, 2 run at epoch 3, one is pending; 6 more not suggested yet."""
    trials = [_trial(i, "TERMINATED", 4, 0.5 + i / 100) for i in range(5)]
    trials.append(_trial(5, "TERMINATED", 4, 0.95, test_acc=0.931))
    return trials + [_trial(6, "ERROR", 2, 0.2), _trial(7, "RUNNING", 3, 0.874),
                     _trial(8, "RUNNING", 3, 0.9), _trial(9, "PENDING")]


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _view(width: int, *, tty: bool, clock: Clock | None = None, name: str = "digits-tpe-asha",
          height: int = 40, **settings: Any) -> tuple[LiveView, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, width=width, height=height, force_terminal=tty,
                      color_system="truecolor" if tty else None)
    run = RunSettings(space={}, **{"num_samples": 16, "max_epochs": 12, **settings})
    return LiveView(name, run, KNOBS, clock=clock or Clock(), console=console), out


def _lines(text: str) -> list[str]:
    return ANSI.sub("", text).replace("\r", "\n").split("\n")


# -- the numbers ---------------------------------------------------------------------------
def test_eta_counts_the_budget_early_stopping_frees():
    trials = [_trial(i, "TERMINATED", 4, 0.5) for i in range(6)]
    trials += [_trial(6, "RUNNING", 3, 0.8), _trial(7, "RUNNING", 3, 0.7)]
    s = run_stats(trials, total_trials=16, max_epochs=12, metric="val_acc", mode="max",
                  elapsed_s=60.0)
    assert s.budget == 192
    assert s.used == 6 * 4 + 2 * 3 == 30
    assert s.freed == 6 * 8 == 48
    # finished trials used a third of their 12 epochs: 4 expected of each of the 10 others
    assert s.expected == pytest.approx(24 + 2 * 4 + 8 * 4)  # 64 of the 192
    assert s.rate == pytest.approx(30 / 60)
    assert s.eta_s == pytest.approx((64 - 30) / 0.5)  # 68 s
    assert s.done_fraction == pytest.approx((30 + 48) / 192)
    assert s.counts == {"RUNNING": 2, "PENDING": 8, "PAUSED": 0, "TERMINATED": 6, "ERROR": 0}
    assert s.best is trials[6] and s.running == [trials[6], trials[7]]


def test_eta_assumes_the_full_budget_until_a_trial_ends_and_never_less_than_trained():
    early = run_stats([_trial(0, "RUNNING", 3, 0.5)], total_trials=4, max_epochs=12,
                      metric="val_acc", mode="max", elapsed_s=30.0)
    assert early.expected == 48 and early.eta_s == pytest.approx((48 - 3) / 0.1)
    # a survivor past the finished trials' average counts what it has already trained
    trials = [_trial(0, "TERMINATED", 2, 0.3), _trial(1, "RUNNING", 9, 0.9)]
    s = run_stats(trials, total_trials=2, max_epochs=12, metric="val_acc", mode="max",
                  elapsed_s=11.0)
    assert s.expected == 2 + 9 and s.eta_s == 0


def test_rate_leaves_out_epochs_trained_before_a_resume_and_min_mode_ranks_low_first():
    trials = [_trial(0, "RUNNING", 10, val_loss=0.5), _trial(1, "RUNNING", 6, val_loss=0.2)]
    s = run_stats(trials, total_trials=2, max_epochs=12, metric="val_loss", mode="min",
                  elapsed_s=20.0, used_at_start=12)
    assert s.rate == pytest.approx(4 / 20) and s.eta_s == pytest.approx(8 / 0.2)
    assert s.best is trials[1] and s.running == [trials[1], trials[0]]
    nothing = run_stats([], total_trials=2, max_epochs=12, metric="val_acc", mode="max",
                        elapsed_s=0.0)
    assert nothing.rate is None and nothing.eta_s is None and nothing.best is None


def test_the_view_shows_budget_eta_counts_best_and_running_trials():
    view, out = _view(160, tty=True, clock=Clock(60.0))
    view.setup(total_samples=16)
    view.stats([])  # Ray's first report, before any trial: nothing trained yet
    view.clock.t = 120.0  # one minute after the start
    view.console.print(view.view(view.stats(_asha_midway())))
    text = "\n".join(_lines(out.getvalue()))
    # used 24+2+6=32, freed 48+10=58: 90 of 192; expected 26 + 3 x 4 + 6 x 4 = 62 -> 30 left
    assert "47%  32 run + 58 freed / 192 trial-epochs · 1:00 · ETA 0:56" in text
    assert "trials 2 running · 7 pending · 0 paused · 6 terminated · 1 error" in text
    assert ("best c392f305  val_acc 0.950  test_acc 0.931  lr=0.000663 weight_decay=0.0005 "
            "label_smoothing=0.05 optimizer=adamw\n") in text
    assert "  c392f308  epoch  3/12  val_acc 0.900\n  c392f307  epoch  3/12  val_acc 0.874" in text
    assert "digits-tpe-asha · tpe + asha · 1 CPU per trial · cpu" in text


# -- the width ------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [80, 100, 160])
def test_no_line_is_wider_than_the_terminal(width):
    trials = _asha_midway() + [_trial(10 + i, "RUNNING", 11, 0.1234567) for i in range(40)]
    for t in trials:
        t.config["optimizer"] = "a-very-long-categorical-value-" * 4
    long_name = "cifar10-resnet-tpe-asha-with-a-long-name-20250101-120000-" * 2
    view, out = _view(width, tty=True, name=long_name, height=30, gpus_per_trial=0.5,
                      cpus_per_trial=4)
    view._device = "cuda NVIDIA H100 80GB HBM3"  # noqa: SLF001 - what a GPU driver shows
    view.console.print(view.view(view.stats(trials)))
    lines = _lines(out.getvalue())
    assert max(cell_len(line) for line in lines) <= width
    assert len(lines) <= 30 and any("more running" in line for line in lines)
    plain, plain_out = _view(width, tty=False, name=long_name)
    plain.setup(total_samples=16)
    plain.report(trials, done=False)
    assert max(cell_len(line) for line in plain_out.getvalue().splitlines()) <= width


def test_the_plain_line_leaves_out_details_before_cutting():
    view, out = _view(80, tty=False)
    line = view.plain_line(view.stats(_asha_midway()))
    assert len(line) <= 80 and "best val_acc 0.950" in line and "..." not in line


# -- terminal or log ------------------------------------------------------------------------
def test_a_log_gets_plain_lines_every_30_s_and_when_a_trial_ends():
    clock = Clock()
    view, out = _view(100, tty=False, clock=clock)
    view.setup(total_samples=2)
    trials = [_trial(0, "RUNNING", 1, 0.5), _trial(1, "RUNNING", 1, 0.4)]
    reported = []

    def step(t: float, done: bool = False) -> None:
        clock.t = t
        if view.should_report(trials, done=done):
            view.report(trials, done)
            reported.append(t)

    for t in (0.0, 1.0, 10.0, 29.9, 30.0, 31.0, 45.0):
        step(t)
    trials[1] = _trial(1, "TERMINATED", 2, 0.6)  # a trial ends
    for t in (46.0, 47.0, 60.0, 75.9, 76.0):
        step(t)
    trials[0] = _trial(0, "TERMINATED", 12, 0.7)
    step(77.0)
    step(77.5, done=True)  # the same state as the line of 77.0: not printed twice
    assert reported == [0.0, 30.0, 46.0, 76.0, 77.0, 77.5]
    text = out.getvalue()
    lines = text.splitlines()
    assert len(lines) == 2 + 5  # the header and the budget, then a line per report but the last
    assert lines[0] == "digits-tpe-asha · tpe + asha · 1 CPU per trial · cpu"
    assert lines[1].startswith("budget: 2 trials x 12 epochs = 24 trial-epochs")
    assert lines[-1].startswith("[1:17] 100%, ETA 0:00") and "trials 2/2 done" in lines[-1]
    assert "\x1b" not in text and "\r" not in text
    assert all(c == "\n" or c.isprintable() for c in text)


def test_a_terminal_redraws_at_most_every_2_s_and_stops_when_done():
    clock = Clock()
    view, out = _view(100, tty=True, clock=clock)
    view.setup(total_samples=2)
    trials = [_trial(0, "RUNNING", 1, 0.5)]
    assert view.should_report(trials)
    view.report(trials, done=False)
    clock.t = 1.9
    trials.append(_trial(1, "TERMINATED", 12, 0.6))  # a trial end does not force a redraw
    assert not view.should_report(trials)
    clock.t = 2.0
    assert view.should_report(trials)
    view.report(trials, done=False)
    assert view._live is not None  # noqa: SLF001
    assert view.should_report(trials, done=True)
    view.report(trials, done=True)
    assert view._live is None  # noqa: SLF001 - the cursor is given back
    assert "trials 1/2" not in out.getvalue() and "\x1b[" in out.getvalue()


def test_the_reporter_pickles_without_its_console_for_tuner_pkl():
    view, _ = _view(100, tty=False)
    view.clock = time.monotonic  # the default; a test's Clock would pickle too, a lambda not
    view.setup(total_samples=4)
    view.report([_trial(0, "RUNNING", 1, 0.5)], done=False)
    copy = pickle.loads(pickle.dumps(view))
    assert copy._con is None and copy._live is None  # noqa: SLF001
    assert copy.name == "digits-tpe-asha" and copy.settings == view.settings


# -- wiring into Ray ------------------------------------------------------------------------
def test_the_runner_passes_the_view_at_verbose_1_and_ray_uses_it(monkeypatch):
    from ray.tune import CLIReporter
    from ray.tune.experimental.output import get_air_verbosity

    from search_spaces import SearchSpace, loguniform
    from tuner.running.runner import _run_config

    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")  # Ray's new engine would drop our reporter
    space = SearchSpace.from_dict({"dataset": "digits", "lr": loguniform(1e-3, 0.1)})
    settings = RunSettings(space=space.to_dict())
    configs = {v: _run_config(settings, space, "/tmp/unused", "exp", v) for v in (0, 1, 2, 3)}
    assert configs[0].progress_reporter is None
    view = configs[1].progress_reporter
    assert isinstance(view, LiveView) and view.name == "exp" and view.knobs == ["lr"]
    assert isinstance(configs[2].progress_reporter, CLIReporter)
    assert isinstance(configs[3].progress_reporter, CLIReporter)
    # ray/tune/tune.py keeps a passed reporter only when this is None (the legacy engine)
    assert get_air_verbosity(1) is None


@pytest.mark.ray
def test_a_real_run_shows_the_view_within_columns(ray_local, tmp_path, capfd, monkeypatch):
    from search_spaces import loguniform
    from tuner import RunConfig, TuneConfig, tune

    monkeypatch.setenv("COLUMNS", "80")
    space = {"dataset": "digits", "width": 8, "batch_size": 128, "lr": loguniform(0.01, 0.3)}
    tune(space, num_samples=3, max_epochs=2,
         tune_config=TuneConfig(searcher="random", scheduler="asha"),
         run_config=RunConfig(storage=tmp_path, name="live-view", verbose=1))
    out = capfd.readouterr().out
    lines = out.splitlines()
    assert "live-view · random + asha · 1 CPU per trial · cpu" in lines
    assert any(line.startswith("budget: 3 trials x 2 epochs = 6 trial-epochs") for line in lines)
    assert any(line.startswith("[") and "trials 3/3 done, 0 running" in line for line in lines)
    assert max(len(line) for line in lines) <= 80
    assert "\x1b" not in out and "\r" not in out
    assert "Current best trial" not in out and "Result logdir" not in out
    assert "Trial Status" not in out  # Ray's table


def test_the_best_among_trials_tied_on_the_metric_is_the_one_the_final_pick_would_take():
    # val_acc ties (one image of 144 is 0.7 points): the lower val_loss is the best, as
    # results.pick_best breaks them; a trial without the pair comes after those with it
    trials = [_trial(0, "RUNNING", 6, 0.993, val_loss=0.04), _trial(1, "RUNNING", 6, 0.993),
              _trial(2, "RUNNING", 6, 0.993, val_loss=0.02), _trial(3, "RUNNING", 6, 0.986,
                                                                    val_loss=0.01)]
    s = run_stats(trials, total_trials=4, max_epochs=12, metric="val_acc", mode="max",
                  elapsed_s=10.0)
    assert s.best is trials[2] and s.running == [trials[2], trials[0], trials[1], trials[3]]
    # a loss metric's ties go to the higher accuracy
    losses = [_trial(0, "RUNNING", 6, 0.97, val_loss=0.1), _trial(1, "RUNNING", 6, 0.99,
                                                                 val_loss=0.1)]
    s = run_stats(losses, total_trials=2, max_epochs=12, metric="val_loss", mode="min",
                  elapsed_s=10.0)
    assert s.best is losses[1] and s.running == [losses[1], losses[0]]
