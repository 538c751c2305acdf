"""The Recipe: types, ranges, conditional rules, YAML round-trip, clear one-line errors."""

import warnings

import pytest

from trainables.errors import ConfigError
from trainables.recipe import KNOBS, Recipe


def test_defaults_validate_and_round_trip(tmp_path):
    r = Recipe()
    r.validate()
    path = tmp_path / "r.yaml"
    r.to_yaml(path)
    assert Recipe.from_yaml(path) == r
    assert Recipe.from_dict(r.to_dict()) == r


def test_every_knob_is_documented_with_family():
    for spec in KNOBS.values():
        assert spec.doc and spec.family, spec.name
        if spec.type in (int, float):
            assert spec.low is not None, spec.name


def test_yaml_scientific_notation_is_a_float(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 5e-4\n")  # YAML 1.1 reads these as strings
    r = Recipe.from_yaml(path)
    assert r.lr == 0.001 and r.weight_decay == 0.0005


def test_numpy_scalars_are_accepted():
    np = pytest.importorskip("numpy")
    r = Recipe.from_dict({"lr": np.float64(0.05), "batch_size": np.int64(64),
                          "batch_norm": np.bool_(False)})
    assert (r.lr, r.batch_size, r.batch_norm) == (0.05, 64, False)
    assert type(r.batch_size) is int


@pytest.mark.parametrize("values,needle", [
    ({"lrr": 0.1}, "unknown knob 'lrr' (did you mean 'lr'?)"),
    ({"dropout": 1.5}, "knob 'dropout': must be in [0, 1), got 1.5"),
    ({"lr": -0.1}, "knob 'lr': must be in (0, inf)"),
    ({"lr": 0}, "knob 'lr': must be in (0, inf)"),
    ({"batch_size": 0}, "knob 'batch_size'"),
    ({"epochs": 2.5}, "knob 'epochs': expected int"),
    ({"batch_norm": "yes"}, "knob 'batch_norm': expected bool"),
    ({"lr": "fast"}, "knob 'lr': expected float"),
    ({"optimizer": "adam"}, "knob 'optimizer': must be one of sgd | nesterov | adamw"),
    ({"lr_schedule": "linear"}, "knob 'lr_schedule': must be one of"),
    ({"aug_hflip": 2}, "knob 'aug_hflip': must be in [0, 1]"),
    ({"dataset": "imagenet"}, "knob 'dataset': must be one of"),
    ({"freeze": "backbone"}, "knob 'freeze': 'backbone' needs 'pretrained'"),
    ({"freeze": "last", "pretrained": "IMAGENET1K_V1", "model": "resnet18"},
     "knob 'freeze': must be none, backbone or a block count"),
    ({"optimizer": "nesterov", "momentum": 0.0}, "nesterov needs momentum > 0"),
    ({"warmup_epochs": 12, "epochs": 12}, "knob 'warmup_epochs': must be < epochs (12)"),
    ({"precision": "fp8"}, "knob 'precision'"),
    ({"val_fraction": 0.0}, "knob 'val_fraction': must be in (0, 0.5]"),
    ({"gamma": float("nan")}, "knob 'gamma'"),
])
def test_bad_values_are_refused_with_one_line(values, needle):
    with pytest.raises(ConfigError) as info:
        Recipe.from_dict(values)
    msg = str(info.value)
    assert needle in msg
    assert "\n" not in msg


def test_step_size_at_or_past_epochs_warns():
    with pytest.warns(UserWarning, match="step_size"):
        Recipe.from_dict({"lr_schedule": "step", "step_size": 12, "epochs": 12})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Recipe.from_dict({"lr_schedule": "step", "step_size": 4, "epochs": 12})


def test_fp16_needs_cuda():
    r = Recipe.from_dict({"precision": "fp16"})
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        r.check_device("cpu")
    r.check_device("cuda")


def test_broken_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lr: 0.1\nepochs: [12\n")
    with pytest.raises(ConfigError) as info:
        Recipe.from_yaml(path)
    assert str(path) in str(info.value) and "line" in str(info.value)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- lr\n- 0.1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        Recipe.from_yaml(path)
