"""The ``cnn-tuner`` command line end to end: ``train`` on digits with a tiny recipe, and
``spaces list | show | validate``.

Training runs in-process through ``tuner.cli.main`` (no interpreter start-up per run); one test
runs the installed console script in a subprocess to check the real program's output and exit code.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from search_spaces import SearchSpace, list_presets, load_space
from trainables.checkpoint import load_checkpoint
from trainables.recipe import Recipe
from tuner.cli import main

# width 8 and batches of 256: a couple of seconds per epoch on one CPU thread
TINY = {"width": 8, "epochs": 2, "batch_size": 256}
EPOCH_LINE = re.compile(r"^epoch +(\d+)/(\d+) +train_loss [\d.]+ .*val_acc ([\d.]+)", re.M)
PRESETS = ("quick", "strategies", "cifar_resnet", "transfer")


def _sets(knobs: dict) -> list[str]:
    return [arg for k, v in knobs.items() for arg in ("--set", f"{k}={v}")]


def _train(out: Path, *args: str) -> tuple[int, str, str]:
    """``cnn-tuner train ... --out OUT --device cpu`` in-process: (exit code, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["train", *args, "--out", str(out), "--device", "cpu"])
    return rc, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One tiny training run shared by the tests that read its files: (folder, stdout)."""
    out = tmp_path_factory.mktemp("train") / "run"
    rc, stdout, stderr = _train(out, *_sets(TINY))
    assert rc == 0, stderr
    return out, stdout


# -- train -----------------------------------------------------------------------------------------
def test_train_prints_a_progress_line_per_epoch(trained: tuple[Path, str]) -> None:
    out, stdout = trained
    epochs = [(int(m[1]), int(m[2])) for m in EPOCH_LINE.finditer(stdout)]
    assert epochs == [(1, 2), (2, 2)]
    assert "completed: test_acc" in stdout
    assert f"wrote {out}/recipe.yaml" in stdout


def test_train_writes_the_resolved_recipe(trained: tuple[Path, str]) -> None:
    out, _ = trained
    written = Recipe.from_yaml(out / "recipe.yaml")
    assert written == Recipe.from_dict(TINY)
    assert (written.width, written.epochs, written.batch_size) == (8, 2, 256)


def test_train_writes_metrics_result_and_checkpoint(trained: tuple[Path, str]) -> None:
    out, stdout = trained
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]
    assert {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"} <= set(metrics)
    assert metrics[["train_loss", "val_acc"]].notna().all().all()
    printed = [float(m[3]) for m in EPOCH_LINE.finditer(stdout)]
    assert printed == pytest.approx(list(metrics["val_acc"]), abs=1e-4)

    result = json.loads((out / "result.json").read_text())
    assert result["stop_reason"] == "completed"
    assert result["epochs_run"] == 2
    assert 0.0 <= result["test_acc"] <= 1.0
    assert result["val_acc"] == pytest.approx(metrics["val_acc"].iloc[-1])

    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["recipe"] == Recipe.from_dict(TINY).to_dict()
    assert ckpt["epoch"] == 2 and ckpt["model"]


def test_checkpoint_is_pretrained_for_a_second_run(trained: tuple[Path, str],
                                                   tmp_path: Path) -> None:
    first, first_stdout = trained
    ckpt = first / "checkpoint.pt"
    rc, stdout, stderr = _train(tmp_path / "second", *_sets({**TINY, "epochs": 1}),
                                "--set", f"pretrained={ckpt}")
    assert rc == 0, stderr
    assert Recipe.from_yaml(tmp_path / "second" / "recipe.yaml").pretrained == str(ckpt)
    # same seed and schedule: starting from trained weights beats starting from scratch
    first_epoch1 = float(next(EPOCH_LINE.finditer(first_stdout))[3])
    second_epoch1 = float(next(EPOCH_LINE.finditer(stdout))[3])
    assert second_epoch1 > first_epoch1


def test_pretrained_of_another_width_is_refused_and_leaves_no_folder(
        trained: tuple[Path, str], tmp_path: Path) -> None:
    ckpt = trained[0] / "checkpoint.pt"
    out = tmp_path / "results" / "wider"
    rc, stdout, stderr = _train(out, *_sets({**TINY, "width": 16}), "--set", f"pretrained={ckpt}")
    assert rc == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr
    assert "checkpoint.pt" in lines[0] and "width" in lines[0]
    assert not (tmp_path / "results").exists()


def test_recipe_file_with_set_overrides(tmp_path: Path) -> None:
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("width: 8\nbatch_size: 256\nepochs: 5\nlr: 0.05\noptimizer: adamw\n")
    out = tmp_path / "out"
    rc, stdout, stderr = _train(out, "--recipe", str(recipe), "--set", "epochs=1",
                                "--set", "lr=0.1")
    assert rc == 0, stderr
    written = Recipe.from_yaml(out / "recipe.yaml")
    assert (written.epochs, written.lr) == (1, 0.1)  # --set wins over the file
    assert (written.width, written.optimizer) == (8, "adamw")  # the rest comes from the file
    assert len(pd.read_csv(out / "metrics.csv")) == 1
    assert len(EPOCH_LINE.findall(stdout)) == 1


@pytest.mark.slow
def test_console_script_trains_in_a_subprocess(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("cnn-tuner")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "tuner.cli"]
    out = tmp_path / "out"
    proc = subprocess.run([*cmd, "train", *_sets({**TINY, "epochs": 1}), "--out", str(out),
                           "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(EPOCH_LINE.findall(proc.stdout)) == 1
    assert json.loads((out / "result.json").read_text())["epochs_run"] == 1


# -- spaces ----------------------------------------------------------------------------------------
def test_spaces_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spaces", "list"]) == 0
    listed = capsys.readouterr().out.split()
    assert set(PRESETS) <= set(listed)
    assert listed == list_presets()


@pytest.mark.parametrize("preset", PRESETS)
def test_spaces_show_is_a_valid_space_to_copy_and_edit(preset: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spaces", "show", preset]) == 0
    text = capsys.readouterr().out
    copy = tmp_path / f"my_{preset}.yaml"
    copy.write_text(text)
    assert SearchSpace.from_yaml(copy) == load_space(preset)

    edited = yaml.safe_load(text)
    edited["epochs"] = 5
    edited["seed"] = {"choice": [0, 1]}
    copy.write_text(yaml.safe_dump(edited, sort_keys=False))
    space = SearchSpace.from_yaml(copy)
    assert space.fixed["epochs"] == 5 and space.tuned["seed"].values == (0, 1)
    assert main(["spaces", "validate", str(copy)]) == 0
    assert capsys.readouterr().out.strip() == f"{copy}: ok"


def test_spaces_validate_good_and_bad_file(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("epochs: 3\nlr: {loguniform: [1.0e-3, 0.5]}\n"
                    "lr_schedule: {choice: [step, cosine]}\n"
                    "step_size: {randint: [1, 2], when: {lr_schedule: [step]}}\n")
    assert main(["spaces", "validate", str(good)]) == 0
    assert capsys.readouterr().out.strip() == f"{good}: ok"

    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nlr: {loguniform: [0.5, 1.0e-3]}\n")
    assert main(["spaces", "validate", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and f"{bad}:2" in lines[0] and "'lr'" in lines[0]


@pytest.mark.slow
def test_bad_space_in_a_subprocess_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nlr_shedule: {choice: [step, cosine]}\n")
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", "spaces", "validate", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert f"{bad}:2" in proc.stderr and "did you mean 'lr_schedule'" in proc.stderr


def test_ctrl_c_says_interrupted_and_exits_130(monkeypatch, capsys):
    import tuner.running.results as results

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(results, "load_results", interrupted)
    assert main(["results", "somewhere"]) == 130
    assert capsys.readouterr().err == "cnn-tuner: interrupted\n"
