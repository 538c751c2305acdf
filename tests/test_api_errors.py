"""The library speaks Python, the CLI speaks flags: the same mistake named both ways, before
anything starts (no Ray, nothing written)."""

import pytest

from trainables.errors import ConfigError
from tuner import tune
from tuner.cli import main

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
        tune(space, storage=tmp_path, verbose=0, **kwargs)
    assert param in str(err.value) and "--" not in str(err.value)
    space_file = tmp_path / "space.yaml"
    space_file.write_text("dataset: digits\nwidth: 8\nlr: {grid: [0.1, 0.2]}\n"
                          if "grid" in argv else "dataset: digits\nwidth: 8\n")
    assert main(["run", "--space", str(space_file), "--storage", str(tmp_path / "runs"),
                 *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], lines
    assert not (tmp_path / "runs").exists()
