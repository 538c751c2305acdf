"""The layers run one way: trainables (the engine, no Ray) -> search_spaces -> tuner, and inside
tuner: cli -> analysis -> running. Each check imports every module of a package in a fresh
interpreter and looks at what came with it."""

import subprocess
import sys

import pytest

_IMPORT_ALL = """
import importlib, pkgutil, sys
pkg = importlib.import_module({package!r})
for mod in pkgutil.walk_packages(pkg.__path__, {package!r} + "."):
    if not mod.name.endswith("__main__"):
        importlib.import_module(mod.name)
print(" ".join(sorted(sys.modules)))
"""


def _modules_after_importing(package: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", _IMPORT_ALL.format(package=package)],
                         capture_output=True, text=True, timeout=300, check=True)
    return set(out.stdout.split())


def _top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


@pytest.mark.slow
def test_trainables_runs_without_ray_or_the_layers_above():
    loaded = _top(_modules_after_importing("trainables"))
    assert not loaded & {"ray", "tuner", "search_spaces"}, loaded & {"ray", "tuner",
                                                                     "search_spaces"}


def test_search_spaces_import_no_tuner():
    assert "tuner" not in _top(_modules_after_importing("search_spaces"))


@pytest.mark.parametrize(("package", "above"), [("tuner.running", ("tuner.analysis", "tuner.cli")),
                                                ("tuner.analysis", ("tuner.cli",))])
@pytest.mark.slow
def test_tuner_folders_import_one_way(package, above):
    loaded = _modules_after_importing(package)
    assert not {m for m in loaded if m.startswith(above)}


def test_building_a_recipe_opens_no_model_code():
    """The Recipe's rules are pure: no torchvision, no model registry, no file opened (the space
    check builds hundreds of Recipes; trainables.models.check_runnable runs once per pair)."""
    code = ("import sys; from trainables.recipe import Recipe; "
            "Recipe.from_dict({'model': 'resnet18', 'pretrained': 'IMAGENET1K_V1', "
            "'freeze': 'backbone'}); "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    loaded = set(out.stdout.split())
    assert not loaded & {"torchvision", "trainables.models"}


def test_a_run_without_trackers_imports_none_of_their_packages():
    """What ``cnn-tuner run`` imports on the driver: no wandb (0.3 s, Ray's W&B module imports
    it), MLflow or Optuna unless the run asks for them."""
    code = ("import sys; import tuner.cli.commands, tuner.cli.parser, tuner.running.api, "
            "tuner.running.runner, tuner.running.trackers; print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True)
    assert not _top(set(out.stdout.split())) & {"wandb", "mlflow", "optuna"}
