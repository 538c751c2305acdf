"""Bad user input is refused with one line naming the place and the rule, without a traceback,
before Ray starts and before anything is written.

Each file of the corpus (``tests/bad_inputs``) is refused once, through the Python API the CLI
calls: ``train(Recipe.from_yaml(f))`` for recipes, ``SearchSpace.from_yaml(f)`` for spaces,
``tune(f)`` for the rules of a run. Command-line mistakes go through ``tuner.cli.main`` in this
process (stderr through capsys). One corpus file per command that reads one goes through the real
``cnn-tuner`` program: exit code 2, one stderr line starting with the file (and line).
Every case runs with ``tests/bad_inputs`` as working directory, since some files name relative
paths (``pretrained: not_a_checkpoint.pt``).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import ray
import torch

from search_spaces import SearchSpace
from trainables.errors import ConfigError
from trainables.loop import train
from trainables.recipe import Recipe
from tuner.cli import main

from grouped import run_tune

BAD = Path(__file__).parent / "bad_inputs"

# recipe file -> substrings of the one-line error of train(Recipe.from_yaml(file)) (the place and
# the rule); the rules the loop checks (device, model, pretrained, data) do not know the file: the
# CLI prefixes it (REAL_PROGRAM checks that)
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
    "recipe_unknown_model.yaml": ("'model'", "unknown model 'resnet1800'"),
    "recipe_freeze_without_pretrained.yaml": ("recipe_freeze_without_pretrained.yaml",
                                              "'freeze'", "needs 'pretrained'"),
    "recipe_nesterov_momentum0.yaml": ("recipe_nesterov_momentum0.yaml", "'momentum'",
                                       "nesterov needs momentum > 0"),
    "recipe_warmup_ge_epochs.yaml": ("recipe_warmup_ge_epochs.yaml", "'warmup_epochs'",
                                     "< epochs"),
    "recipe_weights_on_registry_model.yaml": ("'pretrained'", "'IMAGENET1K_V1'",
                                              "needs a torchvision model"),
    "recipe_pretrained_missing.yaml": ("'pretrained'", "no checkpoint file",
                                       "no_such_dir/checkpoint.pt"),
    "recipe_pretrained_text.yaml": ("not_a_checkpoint.pt", "checkpoint"),
    "recipe_fp16_on_cpu.yaml": ("'precision'", "fp16 needs a CUDA", "on cpu"),
    # found only when the data is loaded: the line names the missing folder
    "recipe_imagefolder_missing_dir.yaml": ("no_such_image_folder", "image folder not found"),
}

# space file -> substrings of the one-line error of SearchSpace.from_yaml(file), which
# `spaces validate` and `run --space` both call: the file:line, the knob and the rule
SPACES: dict[str, tuple[str, ...]] = {
    "space_yaml_syntax.yaml": ("space_yaml_syntax.yaml", "line 2", "invalid YAML"),
    "space_tabs.yaml": ("space_tabs.yaml", "line 3", "'\\t'"),
    "space_binary.yaml": ("space_binary.yaml", "invalid YAML"),
    "space_list_top.yaml": ("space_list_top.yaml", "mapping", "got list"),
    "space_unknown_knob.yaml": ("space_unknown_knob.yaml:2", "unknown knob 'turbo_mode'"),
    "space_typo.yaml": ("space_typo.yaml:2", "did you mean 'lr_schedule'"),
    "space_wrong_type.yaml": ("space_wrong_type.yaml:2", "'batch_size'", "'big'"),
    "space_float_dist_on_int.yaml": ("space_float_dist_on_int.yaml:2", "'width'",
                                     "uniform draws floats", "use randint"),
    "space_out_of_range.yaml": ("space_out_of_range.yaml:2", "'dropout'", "1.5"),
    "space_low_gt_high.yaml": ("space_low_gt_high.yaml:2", "'lr'", "`low < high`"),
    "space_loguniform_zero.yaml": ("space_loguniform_zero.yaml:2", "'weight_decay'",
                                   "`low > 0`"),
    "space_empty_choice.yaml": ("space_empty_choice.yaml:2", "'optimizer'",
                                "at least one value"),
    "space_unknown_kind.yaml": ("space_unknown_kind.yaml:2", "'lr'", "['normal']",
                                "one of choice, grid, uniform"),
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
    "space_when_bad_value.yaml": ("space_when_bad_value.yaml:3", "'momentum'",
                                  "'adam' is not valid for 'optimizer'"),
    "space_when_never.yaml": ("space_when_never.yaml:3", "'step_size'", "never drawn"),
    "space_when_self.yaml": ("space_when_self.yaml:2", "'optimizer'", "itself"),
    "space_when_cycle.yaml": ("space_when_cycle.yaml:2", "cycle",
                              "optimizer -> lr_schedule -> optimizer"),
    "space_when_two_parents.yaml": ("space_when_two_parents.yaml:4", "'momentum'",
                                    "exactly one parent"),
    "space_grid_when.yaml": ("space_grid_when.yaml:3", "'step_size'",
                             "a grid cannot be conditional", "use choice"),
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
    "space_pretrained_text.yaml": ("pretrained='not_a_checkpoint.pt'", "cannot run", "checkpoint"),
}

# valid spaces that tune(file) (`run`) refuses: device, data and budget rules
RUN_ONLY: dict[str, tuple[str, ...]] = {
    "space_fp16_no_gpu.yaml": ("'precision'", "allows fp16", "gpus_per_trial is 0"),
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
    (["run", "--scheduler", "pbt"], ("--scheduler: 'pbt'", "searcher 'random'")),
    (["run", "--searcher", "grid"], ("searcher 'grid'", "'batch_size'")),
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


@contextmanager
def _starts_no_ray() -> Iterator[None]:
    was_up, ray_before = ray.is_initialized(), _ray_processes()
    yield
    assert ray.is_initialized() == was_up
    assert _ray_processes() <= ray_before


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI in-process; assert exit 2, one stderr line, Ray not started; the line."""
    with _starts_no_ray():
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse usage errors
            rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    return _one_line(err)


def _api_refuses(call: Callable[[], object]) -> str:
    """The message of the ConfigError ``call()`` raises, asserted to be one line."""
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    return message


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
def test_bad_recipe_file_is_refused(name: str, expected: tuple[str, ...]) -> None:
    _has_all(_api_refuses(lambda: train(Recipe.from_yaml(name), device="cpu")), expected)


@pytest.mark.parametrize(("name", "expected"), _params(SPACES))
def test_bad_space_file_is_refused(name: str, expected: tuple[str, ...]) -> None:
    _has_all(_api_refuses(lambda: SearchSpace.from_yaml(name)), expected)


@pytest.mark.parametrize(("name", "expected"), _params(RUN_ONLY))
def test_tune_refuses_a_space_it_cannot_run(name: str, expected: tuple[str, ...],
                                            tmp_path: Path) -> None:
    SearchSpace.from_yaml(name)  # a valid space: these are tune()'s own checks
    storage = tmp_path / "storage"
    with _starts_no_ray():
        line = _api_refuses(lambda: run_tune(name, storage=storage, num_samples=1, verbose=0))
    _has_all(line, expected)
    assert not storage.exists()


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
# one corpus file per command that reads one -> the start of the one stderr line: the CLI prefixes
# what the loop refuses with the recipe file; spaces name file:line
REAL_PROGRAM: dict[str, tuple[list[str], str]] = {
    "train": (["train", "--recipe", "recipe_fp16_on_cpu.yaml", "--device", "cpu"],
              "recipe_fp16_on_cpu.yaml: knob 'precision': fp16 needs a CUDA device"),
    "run": (["run", "--space", "space_when_cycle.yaml", "--num-samples", "1"],
            "space_when_cycle.yaml:2: knob 'optimizer': `when` conditions form a cycle"),
    "spaces validate": (["spaces", "validate", "space_yaml_syntax.yaml"],
                        "space_yaml_syntax.yaml: line 2: invalid YAML"),
}


@pytest.fixture(scope="module")
def real_program(tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[dict[str, tuple[subprocess.Popen[str], Path]]]:
    """The REAL_PROGRAM cases, started together (each is mostly Python start-up: seconds of CPU):
    case -> (its process, an empty folder that receives --out, --storage and RAY_TMPDIR)."""
    exe = Path(sys.executable).with_name("cnn-tuner")
    assert exe.exists(), f"no {exe}: install the package (make test does)"
    runs = {}
    for case, (argv, _) in REAL_PROGRAM.items():
        scratch = tmp_path_factory.mktemp(case.replace(" ", "_"))
        where = {"train": ["--out", str(scratch / "out")],
                 "run": ["--storage", str(scratch / "storage")]}.get(argv[0], [])
        env = {**os.environ, "RAY_TMPDIR": str(scratch / "ray")}  # where a started Ray writes
        proc = subprocess.Popen([str(exe), *argv, *where], cwd=BAD, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        runs[case] = (proc, scratch)
    yield runs
    for proc, _ in runs.values():
        proc.kill()  # no-op for those that ended


@pytest.mark.parametrize("case", list(REAL_PROGRAM))
def test_real_program_exits_2_with_one_line_naming_the_file(
        case: str, real_program: dict[str, tuple[subprocess.Popen[str], Path]]) -> None:
    proc, scratch = real_program[case]
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    line = _one_line(stderr)
    assert line.startswith(f"cnn-tuner: error: {REAL_PROGRAM[case][1]}"), line
    assert stdout == ""
    assert not any(scratch.iterdir())  # no output folder, no storage, no Ray
