"""Warm start (``tuner.running.warm_start``): an earlier experiment's finished trials seed a new
run's searcher.

The earlier experiment is written by ``collect_results``, the function a run ends with, from
trial records shaped like Ray's results (metrics, config, path, error), so its results.csv and
summary.json are exactly what a run leaves. Its reward peaks sharply at lr = 0.01 on a
loguniform(1e-4, 1) scale. The searchers are driven directly (``suggest``), without Ray trials:
a warm-started one's first suggestions sit nearer lr = 0.01 than a cold one's with the same seed.
One marked run goes through real Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from search_spaces import (
    SearchSpace,
    choice,
    loguniform,
    optuna_distributions,
    randint,
    sample,
    to_hyperopt_point,
    to_optuna_space,
    uniform,
)
from trainables.constraints import INFEASIBLE
from trainables.errors import ConfigError
from tuner.cli import main
from tuner.running.results import collect_results, load_results
from tuner.running.searchers import build_search
from tuner.running.settings import RunSettings
from tuner.running.warm_start import load_warm_start

from grouped import run_tune

BEST_LR = 0.01
SPACE = {"dataset": "digits", "lr": loguniform(1e-4, 1.0),
         "lr_schedule": choice(["step", "cosine"]),
         "step_size": randint(2, 8, when={"lr_schedule": "step"}),
         "dropout": uniform(0.0, 0.5)}
FIRST = 6  # suggestions compared


@dataclass
class _Result:
    """What collect_results reads of one of Ray's trial results."""

    metrics: dict[str, Any]
    config: dict[str, Any]
    path: str
    error: Any = None


def _reward(lr: float) -> float:
    return 0.1 + 0.85 * math.exp(-((math.log10(lr) - math.log10(BEST_LR)) / 0.3) ** 2)


def write_experiment(path: Path, space: SearchSpace, n: int = 30, *, metric: str = "val_acc",
                     extra: list[_Result] = ()) -> Path:
    """A finished experiment of ``n`` random trials of ``space`` plus ``extra`` ones."""
    rng = np.random.default_rng(0)
    results = []
    for i in range(n):
        config = sample(space, rng)
        acc = _reward(config["lr"])
        results.append(_Result({"val_acc": acc, "val_loss": 1 - acc, "epoch": 3,
                                "stop_reason": "completed" if i % 3 else "early_stopped"},
                               config, str(path / f"trial_{i:05d}")))
    results += list(extra)
    settings = RunSettings(space=space.to_dict(), searcher="random", max_epochs=3,
                           metric=metric, mode="max" if metric == "val_acc" else "min")
    collect_results(results, settings, str(path), wall_time_s=1.0)
    return path


def _unfinished(path: Path, space: SearchSpace) -> list[_Result]:
    """An errored, a non-finite and an infeasible trial, each with an lr that no narrower space
    holds: they must be left out, not refused."""
    config = {**space.fixed, "lr": 0.9, "lr_schedule": "cosine", "dropout": 0.1}
    return [_Result({"val_acc": 0.1, "epoch": 1}, config, str(path / "trial_err"),
                    error=RuntimeError("boom")),
            _Result({"val_acc": float("nan"), "epoch": 1, "stop_reason": "non_finite_loss"},
                    config, str(path / "trial_nan")),
            _Result({"val_acc": 0.0, "epoch": 1, "stop_reason": INFEASIBLE}, config,
                    str(path / "trial_inf"))]


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("earlier") / "exp"
    space = SearchSpace(SPACE)
    return write_experiment(path, space, extra=_unfinished(path, space))


def test_finished_trials_become_points_of_the_new_space(earlier: Path) -> None:
    df, _ = load_results(earlier)
    # a knob the earlier run did not tune (weight_decay) ran at its Recipe default
    space = SearchSpace({**SPACE, "weight_decay": loguniform(1e-5, 1e-2)})
    warm = load_warm_start(earlier, space, "val_acc", "max")
    assert len(df) == 33 and len(warm) == 30  # errored, non_finite, infeasible left out
    assert set(df["status"]) == {"completed", "early_stopped", "errored", "non_finite",
                                 INFEASIBLE}
    for point, reward, tid in zip(warm.points, warm.rewards, warm.trial_ids, strict=True):
        row = df[df["trial_id"] == tid].iloc[0]
        assert reward == pytest.approx(row["val_acc"])
        assert point["lr"] == pytest.approx(row["lr"]) and point["weight_decay"] == 5e-4
        assert ("step_size" in point) == (point["lr_schedule"] == "step")  # inactive: omitted
        assert "dataset" not in point  # tuned knobs only


def test_hyperopt_point_names_every_label_and_indexes_choices() -> None:
    space = SearchSpace(SPACE)
    step = to_hyperopt_point(space, {"lr": 0.01, "lr_schedule": "step", "step_size": 4,
                                     "dropout": 0.2})
    cosine = to_hyperopt_point(space, {"lr": 0.01, "lr_schedule": "cosine", "dropout": 0.2})
    assert step == {"lr": [0.01], "lr_schedule": [0], "step_size[lr_schedule=step]": [4.0],
                    "dropout": [0.2]}
    assert cosine["lr_schedule"] == [1] and cosine["step_size[lr_schedule=step]"] == []


def test_optuna_distributions_are_the_define_by_run_ones() -> None:
    import optuna

    space = SearchSpace(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(6):
        trial = study.ask()
        config = to_optuna_space(space)(trial)
        flat = {k: v for k, v in config.items() if k in space.tuned}
        assert optuna_distributions(space, flat) == trial.distributions


def _lr_distance(alg: Any, n: int = FIRST) -> float:
    """Median |log10(lr) - log10(0.01)| of the first ``n`` suggestions."""
    lrs = [alg.suggest(f"new_{i}")["lr"] for i in range(n)]
    return float(np.median([abs(math.log10(lr) - math.log10(BEST_LR)) for lr in lrs]))


@pytest.mark.parametrize("searcher", ["tpe", "optuna"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warm_start_concentrates_first_suggestions_near_the_earlier_best(
        earlier: Path, searcher: str, seed: int) -> None:
    space = SearchSpace(SPACE)
    warm = load_warm_start(earlier, space, "val_acc", "max")
    best = warm.points[int(np.argmax(warm.rewards))]["lr"]
    assert abs(math.log10(best) - math.log10(BEST_LR)) < 0.3  # the earlier best is near 0.01

    def distance(warm_start: Any) -> float:
        plan = build_search(searcher, space, seed=seed, num_samples=16, warm_start=warm_start)
        return _lr_distance(plan.search_alg)

    cold, hot = distance(None), distance(warm)
    # measured: tpe ~1.3-1.5 cold vs ~0.4-0.6 warm; optuna ~0.6-1.0 cold vs ~0.2 warm
    assert hot < 0.7 and hot < cold / 1.5, (cold, hot)


@pytest.mark.parametrize("searcher", ["tpe", "optuna"])
def test_warm_trials_are_not_suggested_again_and_survive_a_searcher_checkpoint(
        earlier: Path, searcher: str, tmp_path: Path) -> None:
    """Ray saves the searcher with the experiment and restores it on resume: the warm trials
    come back from that checkpoint (resume never loads the earlier experiment again)."""
    space = SearchSpace(SPACE)
    warm = load_warm_start(earlier, space, "val_acc", "max")
    alg = build_search(searcher, space, seed=0, num_samples=16, warm_start=warm).search_alg
    suggestions = [alg.suggest(f"new_{i}") for i in range(4)]
    earlier_lrs = {p["lr"] for p in warm.points}
    assert not any(s["lr"] in earlier_lrs for s in suggestions)
    alg.save(str(tmp_path / "searcher.pkl"))
    cold = build_search(searcher, space, seed=0, num_samples=16).search_alg
    cold.restore(str(tmp_path / "searcher.pkl"))
    if searcher == "tpe":
        done = [t for t in cold._hpopt_trials.trials if t["result"].get("status") == "ok"]
    else:
        done = [t for t in cold._ot_study.trials if t.state.name == "COMPLETE"]
    assert len(done) == len(warm)


# -- refusals: one line, before Ray starts ----------------------------------------------------
def _refusals(earlier: Path, tmp: Path) -> dict[str, tuple[dict, dict, tuple[str, ...]]]:
    """case -> (space, tune() arguments, substrings of the line)."""
    no_usable = tmp / "no_usable"
    write_experiment(no_usable, SearchSpace(SPACE), n=0,
                     extra=_unfinished(no_usable, SearchSpace(SPACE)))
    narrower = {**SPACE, "lr": loguniform(1e-3, 0.1)}
    return {
        "range": (narrower, {}, ("knob 'lr' of trial", "outside the new range [0.001, 0.1]")),
        "choices": ({**{k: v for k, v in SPACE.items() if k != "step_size"},
                     "lr_schedule": choice(["cosine", "onecycle"])}, {},
                    ("knob 'lr_schedule' of trial", "'step', not one of the new choices")),
        "default_outside": ({**SPACE, "weight_decay": loguniform(0.01, 0.1)}, {},
                            ("knob 'weight_decay'", "0.0005", "outside the new range")),
        "dataset": ({**SPACE, "dataset": "fashion_mnist"}, {},
                    ("dataset digits", "this run on fashion_mnist")),
        "metric": (SPACE, {"metric": "val_loss", "mode": "min"},
                   ("optimised metric 'val_acc'", "optimises 'val_loss'")),
        "no_usable": (SPACE, {"warm_start": str(no_usable)},
                      ("no usable trial", "1 errored", "1 non_finite", "1 infeasible")),
        "not_finished": (SPACE, {"warm_start": str(tmp / "nothing")},
                         ("not a finished cnn-tuner experiment",)),
        "random": (SPACE, {"searcher": "random"},
                   ("searcher 'random' learns nothing", "'tpe' or 'optuna'")),
    }


CASES = ["range", "choices", "default_outside", "dataset", "metric", "no_usable",
         "not_finished", "random"]


@pytest.mark.parametrize("case", CASES)
def test_python_api_refuses_in_one_line(case: str, earlier: Path, tmp_path: Path) -> None:
    space, kwargs, expected = _refusals(earlier, tmp_path)[case]
    kwargs = {"warm_start": str(earlier), **kwargs}
    with pytest.raises(ConfigError) as err:
        run_tune(space, num_samples=2, max_epochs=1, storage=tmp_path / "runs", **kwargs)
    line = str(err.value)
    assert line.startswith("warm_start: ") and "\n" not in line
    for part in expected:
        assert part in line, line
    assert not (tmp_path / "runs").exists()  # nothing started


@pytest.mark.parametrize("case", [c for c in CASES if c != "metric"])  # no --metric flag
def test_cli_refuses_in_one_line_with_exit_2(case: str, earlier: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    space, kwargs, expected = _refusals(earlier, tmp_path)[case]
    SearchSpace(space).to_yaml(tmp_path / "space.yaml")
    argv = ["run", "--space", str(tmp_path / "space.yaml"), "--num-samples", "2",
            "--max-epochs", "1", "--storage", str(tmp_path / "runs"),
            "--warm-start", kwargs.get("warm_start", str(earlier)),
            "--searcher", kwargs.get("searcher", "tpe")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cnn-tuner: error: --warm-start: "), err
    for part in expected:
        assert part in err[0], err[0]
    assert not (tmp_path / "runs").exists()


def test_cli_metric_mismatch(earlier: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture) -> None:
    """An earlier experiment that optimised another metric, through the CLI (which runs for
    val_acc)."""
    other = write_experiment(tmp_path / "by_loss", SearchSpace(SPACE), n=5, metric="val_loss")
    assert main(["run", "--warm-start", str(other), "--storage", str(tmp_path / "runs"),
                 "--num-samples", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optimised metric 'val_loss', this run optimises 'val_acc'" in err[0]


# -- end to end -------------------------------------------------------------------------------
@pytest.mark.ray
def test_warm_started_run_through_ray_holds_only_its_own_trials(ray_local, tmp_path: Path) -> None:
    tiny = {"dataset": "digits", "image_size": 8, "width": 4, "batch_size": 128,
            "lr": loguniform(1e-3, 0.5), "lr_schedule": choice(["constant", "exponential"]),
            "gamma": uniform(0.5, 0.99, when={"lr_schedule": "exponential"})}
    earlier = write_experiment(tmp_path / "earlier", SearchSpace(tiny), n=8)
    warm = load_warm_start(earlier, SearchSpace(tiny), "val_acc", "max")
    res = run_tune(tiny, searcher="tpe", scheduler="fifo", num_samples=3, max_epochs=1,
                   seed=0, warm_start=str(earlier), storage=tmp_path / "runs", name="warm",
                   verbose=0)
    df = res.dataframe
    assert len(df) == 3 and set(df["status"]) <= {"completed", "early_stopped"}
    assert not set(df["trial_id"]) & set(warm.trial_ids)  # no earlier trial ran again
    assert not set(df["lr"]) & {p["lr"] for p in warm.points}
    saved = RunSettings.load(res.path)
    assert saved.warm_start == str(earlier.resolve())
    # the searcher Ray saved (what a resume restores) knows the 8 earlier and 3 new trials
    alg = build_search("tpe", SearchSpace(saved.space), seed=0, num_samples=3).search_alg
    alg.restore_from_dir(res.path)
    done = [t for t in alg._hpopt_trials.trials if t["result"].get("status") == "ok"]
    assert len(done) == len(warm) + 3
