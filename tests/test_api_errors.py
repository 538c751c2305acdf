"""The library speaks Python, the CLI speaks flags: the same mistake named both ways, before
anything starts (no Ray, nothing written)."""

import pytest

from trainables.errors import ConfigError
from tuner.cli import main

from grouped import run_tune

TINY = {"dataset": "digits", "width": 8}


@pytest.mark.parametrize(("kwargs", "param", "argv", "flag"), [
    ({"cpus_per_trial": 0}, "cpus_per_trial: must be > 0", ["--cpus-per-trial", "0"],
     "--cpus-per-trial: must be > 0"),
    ({"gpus_per_trial": 2.5}, "gpus_per_trial: above 1", ["--gpus-per-trial", "2.5"],
     "--gpus-per-trial: above 1"),
    ({"max_concurrent": 0}, "max_concurrent: must be >= 1", ["--max-concurrent", "0"],
     "--max-concurrent: must be >= 1"),
    ({"scheduler": "pbt", "searcher": "tpe"}, "scheduler: 'pbt' does not work with searcher",
     ["--scheduler", "pbt"], "--scheduler: 'pbt' does not work with searcher"),
    ({"searcher": "grid", "num_samples": 4}, "num_samples: grid search runs every grid point",
     ["--searcher", "grid", "--num-samples", "4"], "--num-samples: grid search runs every"),
    ({"fixed": {"precision": "fp16"}}, "but gpus_per_trial is 0", ["--set", "precision=fp16"],
     "but --gpus-per-trial is 0"),
])
def test_library_names_parameters_cli_names_flags(kwargs, param, argv, flag, tmp_path, capsys):
    space = {**TINY, "lr": {"grid": [0.1, 0.2]}} if kwargs.get("searcher") == "grid" else TINY
    with pytest.raises(ConfigError) as err:
        run_tune(space, storage=tmp_path, verbose=0, **kwargs)
    assert param in str(err.value) and "--" not in str(err.value)
    space_file = tmp_path / "space.yaml"
    space_file.write_text("dataset: digits\nwidth: 8\nlr: {grid: [0.1, 0.2]}\n"
                          if "grid" in argv else "dataset: digits\nwidth: 8\n")
    assert main(["run", "--space", str(space_file), "--storage", str(tmp_path / "runs"),
                 *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], lines
    assert not (tmp_path / "runs").exists()


def test_argument_groups_have_unique_fields_that_cover_the_run_settings():
    """Errors name a field alone (``num_samples: ...``), and the CLI maps a field to its flag:
    both need each name in one group only. Every run setting is reachable from a group."""
    from dataclasses import fields

    from tuner.running.settings import RunSettings

    from grouped import GROUPS

    names = [f.name for cls in GROUPS.values() for f in fields(cls)]
    assert len(names) == len(set(names)), names
    derived = {"space"}  # the space argument itself
    assert {f.name for f in fields(RunSettings)} - derived <= set(names)


@pytest.mark.parametrize("key", ["num_samples", "max_epochs"])
def test_a_shortcut_given_twice_is_refused(key, tmp_path):
    from tuner import RunConfig, TuneConfig, tune

    with pytest.raises(ConfigError, match=f"^{key}: given both to tune\\(\\) and in its"):
        tune(TINY, **{key: 2}, tune_config=TuneConfig(**{key: 3}),
             run_config=RunConfig(storage=tmp_path, verbose=0))
    assert not any(tmp_path.iterdir())
