"""Bad user input is refused with exit code 2 and one stderr line naming the place and the rule,
without a traceback, before Ray starts and before anything is written.

Most cases call ``tuner.cli.main`` in this process (stderr through capsys); a few go through a real
``python -m tuner.cli`` subprocess to check the exit code and stderr of the actual program.
Every case runs with ``tests/bad_inputs`` as working directory, since some files name relative
paths (``pretrained: not_a_checkpoint.pt``).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import ray
import torch

from tuner.cli import main

BAD = Path(__file__).parent / "bad_inputs"

# corpus file -> substrings its one stderr line must hold (the place and the rule)
RECIPES: dict[str, tuple[str, ...]] = {
    "recipe_yaml_syntax.yaml": ("recipe_yaml_syntax.yaml", "line 2", "invalid YAML"),
    "recipe_tabs.yaml": ("recipe_tabs.yaml", "line 3", "'\\t'"),
    "recipe_binary.yaml": ("recipe_binary.yaml", "not a text (YAML) file"),
    "recipe_list_top.yaml": ("recipe_list_top.yaml", "mapping", "got list"),
    "recipe_scalar_top.yaml": ("recipe_scalar_top.yaml", "mapping", "got str"),
    "recipe_unknown_knob.yaml": ("recipe_unknown_knob.yaml", "unknown knob 'turbo_mode'"),
    "recipe_typo.yaml": ("recipe_typo.yaml", "'lr_shedule'", "did you mean 'lr_schedule'"),
    "recipe_wrong_type.yaml": ("recipe_wrong_type.yaml", "'epochs'", "expected int"),
    "recipe_bool_for_int.yaml": ("recipe_bool_for_int.yaml", "'width'", "got bool"),
    "recipe_distribution_in_recipe.yaml": ("recipe_distribution_in_recipe.yaml", "'lr'",
                                           "got dict"),
    "recipe_out_of_range.yaml": ("recipe_out_of_range.yaml", "'dropout'", "[0, 1)", "1.5"),
    "recipe_negative_lr.yaml": ("recipe_negative_lr.yaml", "'lr'", "(0, inf)", "-0.1"),
    "recipe_nan_lr.yaml": ("recipe_nan_lr.yaml", "'lr'", "nan"),
    "recipe_batch_size_zero.yaml": ("recipe_batch_size_zero.yaml", "'batch_size'", "got 0"),
    "recipe_bad_choice.yaml": ("recipe_bad_choice.yaml", "'optimizer'", "'adam'"),
    "recipe_unknown_dataset.yaml": ("recipe_unknown_dataset.yaml", "'dataset'", "'imagenet'"),
    "recipe_unknown_model.yaml": ("recipe_unknown_model.yaml", "'model'", "'resnet1800'"),
    "recipe_freeze_without_pretrained.yaml": ("recipe_freeze_without_pretrained.yaml",
                                              "'freeze'", "needs 'pretrained'"),
    "recipe_nesterov_momentum0.yaml": ("recipe_nesterov_momentum0.yaml", "'momentum'",
                                       "nesterov needs momentum > 0"),
    "recipe_warmup_ge_epochs.yaml": ("recipe_warmup_ge_epochs.yaml", "'warmup_epochs'",
                                     "< epochs"),
    "recipe_weights_on_registry_model.yaml": ("recipe_weights_on_registry_model.yaml",
                                              "'pretrained'", "needs a torchvision model"),
    "recipe_pretrained_missing.yaml": ("recipe_pretrained_missing.yaml", "'pretrained'",
                                       "no checkpoint file"),
    "recipe_pretrained_text.yaml": ("not_a_checkpoint.pt", "checkpoint"),
    "recipe_fp16_on_cpu.yaml": ("recipe_fp16_on_cpu.yaml", "'precision'", "fp16 needs a CUDA"),
    # found only when the data is loaded: the line names the missing folder
    "recipe_imagefolder_missing_dir.yaml": ("no_such_image_folder", "image folder not found"),
}

# space files refused by `spaces validate` and by `run --space`
SPACES: dict[str, tuple[str, ...]] = {
    "space_yaml_syntax.yaml": ("space_yaml_syntax.yaml", "line 2", "invalid YAML"),
    "space_tabs.yaml": ("space_tabs.yaml", "line 3", "'\\t'"),
    "space_binary.yaml": ("space_binary.yaml", "invalid YAML"),
    "space_list_top.yaml": ("space_list_top.yaml", "mapping", "got list"),
    "space_unknown_knob.yaml": ("space_unknown_knob.yaml:2", "unknown knob 'turbo_mode'"),
    "space_typo.yaml": ("space_typo.yaml:2", "did you mean 'lr_schedule'"),
    "space_wrong_type.yaml": ("space_wrong_type.yaml:2", "'batch_size'", "'big'"),
    "space_float_dist_on_int.yaml": ("space_float_dist_on_int.yaml:2", "'width'",
                                     "uniform draws floats"),
    "space_out_of_range.yaml": ("space_out_of_range.yaml:2", "'dropout'", "1.5"),
    "space_low_gt_high.yaml": ("space_low_gt_high.yaml:2", "'lr'", "`low < high`"),
    "space_loguniform_zero.yaml": ("space_loguniform_zero.yaml:2", "'weight_decay'",
                                   "`low > 0`"),
    "space_empty_choice.yaml": ("space_empty_choice.yaml:2", "'optimizer'",
                                "at least one value"),
    "space_unknown_kind.yaml": ("space_unknown_kind.yaml:2", "'lr'", "['normal']"),
    "space_two_kinds.yaml": ("space_two_kinds.yaml:2", "'lr'", "['uniform', 'choice']"),
    "space_randint_float.yaml": ("space_randint_float.yaml:2", "'step_size'", "integer"),
    "space_qrandint_not_multiple.yaml": ("space_qrandint_not_multiple.yaml:2", "'width'",
                                         "multiples of q"),
    "space_choice_duplicates.yaml": ("space_choice_duplicates.yaml:2", "'optimizer'",
                                     "distinct"),
    "space_when_unknown_knob.yaml": ("space_when_unknown_knob.yaml:3", "'step_size'",
                                     "unknown knob 'lr_shed'"),
    "space_when_continuous.yaml": ("space_when_continuous.yaml:3", "'momentum'",
                                   "parent 'lr' must be fixed, a choice or a grid"),
    "space_when_not_in_space.yaml": ("space_when_not_in_space.yaml:2", "'step_size'",
                                     "not in this space"),
    "space_when_bad_value.yaml": ("space_when_bad_value.yaml:3", "'momentum'", "'adam'"),
    "space_when_never.yaml": ("space_when_never.yaml:3", "'step_size'", "never drawn"),
    "space_when_self.yaml": ("space_when_self.yaml:2", "'optimizer'", "itself"),
    "space_when_cycle.yaml": ("space_when_cycle.yaml:2", "cycle",
                              "optimizer -> lr_schedule -> optimizer"),
    "space_when_two_parents.yaml": ("space_when_two_parents.yaml:4", "'momentum'",
                                    "exactly one parent"),
    "space_grid_when.yaml": ("space_grid_when.yaml:3", "'step_size'",
                             "a grid cannot be conditional"),
    "space_tune_data_knob.yaml": ("space_tune_data_knob.yaml:2", "'dataset'",
                                  "data knob can only be fixed"),
    "space_freeze_without_pretrained.yaml": ("space_freeze_without_pretrained.yaml:2",
                                             "freeze='backbone'", "needs 'pretrained'"),
    "space_nesterov_momentum0.yaml": ("space_nesterov_momentum0.yaml:3", "momentum=0.0",
                                      "nesterov needs momentum > 0"),
    "space_warmup_ge_epochs.yaml": ("space_warmup_ge_epochs.yaml:2", "warmup_epochs=5.0",
                                    "< epochs"),
    "space_pretrained_missing.yaml": ("space_pretrained_missing.yaml", "'pretrained'",
                                      "no checkpoint file"),
    "space_pretrained_text.yaml": ("not_a_checkpoint.pt", "checkpoint"),
}

# valid spaces that `run` refuses: device, data and budget rules
RUN_ONLY: dict[str, tuple[str, ...]] = {
    "space_fp16_no_gpu.yaml": ("'precision'", "fp16", "--gpus-per-trial is 0"),
    "space_imagefolder_missing_dir.yaml": ("no_such_image_folder", "image folder not found"),
    "space_epochs_tuned.yaml": ("max_epochs", "tunes 'epochs'"),
}

# command-line mistakes: argv (run cases get --storage) -> substrings
CLI_ARGS: list[tuple[list[str], tuple[str, ...]]] = [
    (["run", "--searcher", "bayes"], ("--searcher", "'bayes'", "grid, random, tpe")),
    (["run", "--scheduler", "asha2"], ("--scheduler", "'asha2'", "fifo, asha")),
    (["run", "--num-samples", "0"], ("--num-samples", ">= 1")),
    (["run", "--num-samples", "abc"], ("--num-samples", "'abc'")),
    (["run", "--cpus-per-trial", "0"], ("--cpus-per-trial", "> 0")),
    (["run", "--gpus-per-trial", "-1"], ("--gpus-per-trial", ">= 0")),
    (["run", "--gpus-per-trial", "2.5"], ("--gpus-per-trial", "2.5")),
    (["run", "--grace-period", "0"], ("--grace-period", ">= 1")),
    (["run", "--grace-period", "100"], ("--grace-period", "<= max epochs")),
    (["run", "--reduction-factor", "1"], ("--reduction-factor", "> 1")),
    (["run", "--max-concurrent", "0"], ("--max-concurrent", ">= 1")),
    (["run", "--checkpoint-every", "0"], ("--checkpoint-every", ">= 1")),
    (["run", "--max-failures", "-5"], ("--max-failures", "-5")),
    (["run", "--verbose", "-3"], ("--verbose", "-3")),
    (["run", "--seed", "-1"], ("--seed", "-1")),
    (["run", "--max-epochs", "0"], ("'epochs'", "[1, 10000]")),
    (["run", "--space", "nosuchpreset"], ("'nosuchpreset'", "quick")),
    (["run", "--space", "missing.yaml"], ("missing.yaml", "not found")),
    (["run", "--scheduler", "pbt"], ("pbt", "--searcher random")),
    (["run", "--searcher", "grid"], ("searcher 'grid'", "'width'")),
    (["run", "--dataset", "imagenet"], ("'dataset'", "'imagenet'")),
    (["run", "--dataset", "imagefolder", "--data-dir", "nope"], ("nope", "not found")),
    (["run", "--set", "lr"], ("--set 'lr'", "knob=value")),
    (["run", "--set", "lr=abc"], ("'lr'", "'abc'")),
    (["run", "--set", "turbo=1"], ("unknown knob 'turbo'",)),
    (["run", "--storage", "not_a_checkpoint.pt"], ("--storage", "not a folder")),
    (["train", "--set", "lr"], ("--set 'lr'", "knob=value")),
    (["train", "--set", "=3"], ("--set '=3'", "knob=value")),
    (["train", "--set", "lr=abc"], ("'lr'", "'abc'")),
    (["train", "--set", "epochs=2", "--set", "optimizer=adam"], ("'optimizer'", "'adam'")),
    (["train", "--recipe", "missing.yaml"], ("missing.yaml", "not found")),
    (["train", "--device", "tpu"], ("--device", "'tpu'")),
    (["train", "--out", "not_a_checkpoint.pt"], ("--out", "not a folder")),
    (["train", "--recipe", "recipe_typo.yaml", "--set", "lr=-1"], ("recipe_typo.yaml",
                                                                    "'lr_shedule'")),
    (["spaces", "show", "nosuch"], ("'nosuch'", "quick")),
    (["spaces", "show"], ("spaces show", "preset")),
    (["spaces", "validate"], ("spaces validate", "YAML file")),
    (["spaces", "validate", "missing.yaml"], ("missing.yaml", "not found")),
    (["spaces", "frobnicate"], ("'frobnicate'", "list")),
    (["results", "no_such_experiment"], ("no_such_experiment", "not a finished")),
    (["resume", "no_such_experiment"], ("no_such_experiment", "cnn_tuner_run.json")),
    (["resume", "no_such_experiment", "--verbose", "7"], ("--verbose", "7")),
    (["tune"], ("'tune'", "train")),
]


# -- helpers ---------------------------------------------------------------------------------------
def _ray_processes() -> set[int]:
    """Pids of raylet / gcs_server processes that descend from this process."""
    me, parents, names = os.getpid(), {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        parents[int(d.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
        names[int(d.name)] = name
    found = set()
    for pid, name in names.items():
        if not ("raylet" in name or "gcs_server" in name):
            continue
        p = pid
        while p > 1 and p != me:
            p = parents.get(p, 0)
        if p == me:
            found.add(pid)
    return found


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI in-process; assert exit 2, one stderr line, Ray not started; the line."""
    was_up, ray_before = ray.is_initialized(), _ray_processes()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert ray.is_initialized() == was_up
    assert _ray_processes() <= ray_before
    return _one_line(err)


def _has_all(line: str, expected: tuple[str, ...]) -> None:
    missing = [s for s in expected if s not in line]
    assert not missing, f"{missing} not in {line!r}"


@pytest.fixture(autouse=True)
def _in_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(BAD)


def _train_argv(recipe: str | Path, out: Path) -> list[str]:
    return ["train", "--recipe", str(recipe), "--out", str(out), "--device", "cpu"]


def _run_argv(space: str | Path, storage: Path) -> list[str]:
    return ["run", "--space", str(space), "--storage", str(storage), "--num-samples", "1"]


def _params(table: dict[str, tuple[str, ...]]) -> list:
    return [pytest.param(name, expected, id=name) for name, expected in table.items()]


# -- the corpus ------------------------------------------------------------------------------------
def test_corpus_is_complete() -> None:
    files = {p.name for p in BAD.iterdir()} - {"not_a_checkpoint.pt"}
    assert files == set(RECIPES) | set(SPACES) | set(RUN_ONLY)
    assert len(files) >= 30


@pytest.mark.parametrize(("name", "expected"), _params(RECIPES))
def test_train_refuses_bad_recipe(name: str, expected: tuple[str, ...], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "run"
    _has_all(_refused(_train_argv(name, out), capsys), expected)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("name", "expected"), _params(SPACES))
def test_spaces_validate_refuses_bad_space(name: str, expected: tuple[str, ...],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _has_all(_refused(["spaces", "validate", name], capsys), expected)


@pytest.mark.parametrize(("name", "expected"), _params({**SPACES, **RUN_ONLY}))
def test_run_refuses_bad_space(name: str, expected: tuple[str, ...], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    storage = tmp_path / "storage"
    _has_all(_refused(_run_argv(name, storage), capsys), expected)
    assert not storage.exists()


@pytest.mark.parametrize("name", list(RUN_ONLY))
def test_run_only_cases_are_valid_spaces(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """They test `run`'s own checks, not the space validator's."""
    assert main(["spaces", "validate", name]) == 0
    assert capsys.readouterr().out.strip() == f"{name}: ok"


@pytest.mark.parametrize(("argv", "expected"), CLI_ARGS, ids=[" ".join(a) for a, _ in CLI_ARGS])
def test_cli_argument_mistakes(argv: list[str], expected: tuple[str, ...], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    storage, out = tmp_path / "storage", tmp_path / "out"
    if argv[0] == "run" and "--storage" not in argv:
        argv = [*argv, "--storage", str(storage)]
    if argv[0] == "train" and "--out" not in argv:
        argv = [*argv, "--out", str(out)]
    _has_all(_refused(argv, capsys), expected)
    assert not storage.exists() and not out.exists()


# -- pretrained files made here --------------------------------------------------------------------
class _Payload:
    """Unpickling this object opens (creates) ``marker``: a stand-in for code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def _payload_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"format": "cnn-tuner/1", "model": {}, "recipe": {"model": "simple_cnn"},
                "extra": _Payload(marker)}, path)
    return path


def test_payload_checkpoint_is_refused_and_never_runs(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # the payload is live: an unsafe load would run it
    proof = tmp_path / "proof_marker"
    torch.load(_payload_checkpoint(tmp_path / "proof.pt", proof), weights_only=False)
    assert proof.exists()

    marker = tmp_path / "payload_ran"
    ckpt = _payload_checkpoint(tmp_path / "evil.pt", marker)
    recipe = tmp_path / "evil_recipe.yaml"
    recipe.write_text(f"epochs: 2\npretrained: {ckpt}\n")
    space = tmp_path / "evil_space.yaml"
    space.write_text(f"epochs: 2\npretrained: {ckpt}\nlr: {{loguniform: [0.01, 0.1]}}\n")

    line = _refused(_train_argv(recipe, tmp_path / "out"), capsys)
    _has_all(line, ("evil.pt", "weights_only=True"))
    _has_all(_refused(["spaces", "validate", str(space)], capsys), ("evil.pt", "refused"))
    _has_all(_refused(_run_argv(space, tmp_path / "storage"), capsys), ("evil.pt", "refused"))
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "storage").exists()


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _tensor_only(p: Path) -> None:
    torch.save(torch.zeros(3), p)


def _zip_not_torch(p: Path) -> None:
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("hello.txt", "hi")


def _plain_pickle(p: Path) -> None:
    p.write_bytes(pickle.dumps({"format": "cnn-tuner/1", "model": [1, 2]}, protocol=2))


def _hello_text(p: Path) -> None:
    p.write_text("hello world")


@pytest.mark.parametrize("make", [
    _empty, _tensor_only, _zip_not_torch, _plain_pickle,
    _hello_text,
], ids=lambda f: f.__name__.strip("_"))
def test_pretrained_that_is_not_a_checkpoint(make, tmp_path: Path,  # noqa: ANN001
                                             capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "weights.pt"
    make(ckpt)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"epochs: 2\npretrained: {ckpt}\n")
    _has_all(_refused(_train_argv(recipe, tmp_path / "out"), capsys), ("weights.pt",))
    assert not (tmp_path / "out").exists()


# -- through the real program ----------------------------------------------------------------------
SUBPROCESS_CASES = [
    ["train", "--recipe", "recipe_typo.yaml"],
    ["run", "--space", "space_when_cycle.yaml"],
    ["run", "--num-samples", "0"],
    ["run", "--num-samples", "abc"],
    ["spaces", "validate", "space_binary.yaml"],
]


@pytest.mark.parametrize("argv", SUBPROCESS_CASES, ids=" ".join)
def test_subprocess_exit_code_and_one_stderr_line(argv: list[str], tmp_path: Path) -> None:
    storage, out, ray_tmp = tmp_path / "storage", tmp_path / "out", tmp_path / "ray"
    if argv[0] == "run":
        argv = [*argv, "--storage", str(storage)]
    if argv[0] == "train":
        argv = [*argv, "--out", str(out)]
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}  # where a started Ray would write
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", *argv], cwd=BAD, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert line.startswith("cnn-tuner"), line
    assert argv[2] in line or argv[1] in line, line  # the file or the option
    assert proc.stdout == ""
    assert not storage.exists() and not out.exists() and not ray_tmp.exists()
