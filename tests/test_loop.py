"""The pure training loop on real digits: determinism, stopping rules, AMP, transfer, resume."""

import dataclasses
import math

import pytest
import torch

from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.data import load_data
from trainables.loop import Trainer, train
from trainables.recipe import Recipe

FAST = {"width": 8, "epochs": 2, "batch_size": 128}


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _run(digits, **knobs):
    seen = []
    result = train(Recipe.from_dict({**FAST, **knobs}), digits, "cpu",
                   lambda m, state: seen.append(m))
    return result, seen


def test_reports_every_epoch_with_required_metrics(digits):
    result, seen = _run(digits)
    assert [m["epoch"] for m in seen] == [1, 2]
    for key in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s",
                "images_per_s"):
        assert all(key in m for m in seen), key
    assert "test_acc" not in seen[0] and "stop_reason" not in seen[0]
    assert seen[-1]["stop_reason"] == "completed" and 0 <= seen[-1]["test_acc"] <= 1
    assert result.final is result.history[-1]


def test_same_seed_same_metrics_other_seed_differs(digits):
    a = _run(digits, seed=3)[1]
    b = _run(digits, seed=3)[1]
    c = _run(digits, seed=4)[1]
    key = ("train_loss", "val_loss", "val_acc", "test_acc")
    assert [[m.get(k) for k in key] for m in a] == [[m.get(k) for k in key] for m in b]
    assert a[-1]["train_loss"] != c[-1]["train_loss"]


@pytest.mark.slow
def test_default_recipe_learns_digits(digits):
    result, _ = _run(digits, width=16, epochs=6)
    assert result.final["val_acc"] > 0.9


def test_early_stopping_stops_at_patience(digits):
    # min_delta 1.0 means no epoch after the first can count as an improvement
    result, seen = _run(digits, epochs=10, early_stop_patience=2, early_stop_min_delta=1.0)
    assert len(seen) == 3
    assert seen[-1]["stop_reason"] == "early_stopped" and "test_acc" in seen[-1]


def test_diverging_run_ends_with_non_finite_loss(digits):
    result, seen = _run(digits, epochs=5, optimizer="adamw", lr=1000.0, lr_schedule="constant",
                        batch_norm=False)
    assert seen[-1]["stop_reason"] == "non_finite_loss"
    assert len(seen) == 1  # stopped in the first epoch, not trained on for 5
    loss = seen[-1]["train_loss"]
    assert not math.isfinite(loss) or loss > 1e4


def test_nan_loss_ends_the_run(digits):
    result, seen = _run(digits, epochs=5, optimizer="sgd", lr=1000.0, lr_schedule="constant",
                        weight_decay=0.0)
    assert seen[-1]["stop_reason"] == "non_finite_loss" and len(seen) == 1


def test_bf16_autocast_is_really_used_on_cpu(digits):
    trainer = Trainer(Recipe.from_dict({**FAST, "precision": "bf16"}), digits,
                      torch.device("cpu"))
    dtypes = set()
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype))
    trainer.train_epoch()
    assert dtypes == {torch.bfloat16}
    fp32 = Trainer(Recipe.from_dict({**FAST, "precision": "auto"}), digits, torch.device("cpu"))
    assert fp32.precision == "fp32"


def test_channels_last_and_mixing_and_augmentation_run(digits):
    result, seen = _run(digits, channels_last=True, mixup_alpha=0.2, cutmix_alpha=0.2,
                        aug_rotation=10, aug_color_jitter=0.2, aug_random_erasing=0.2,
                        label_smoothing=0.1, epochs=1)
    assert seen[-1]["stop_reason"] == "completed" and math.isfinite(seen[-1]["train_loss"])


def test_resume_from_checkpoint_matches_uninterrupted_run(digits, tmp_path):
    full = _run(digits, epochs=3, seed=1)[1]
    states = []
    recipe = Recipe.from_dict({**FAST, "epochs": 3, "seed": 1})
    train_two = Trainer(recipe, digits, torch.device("cpu"))
    for _ in range(2):
        train_two.run_epoch()
    states.append(save_checkpoint(train_two.state_dict(), tmp_path / "c.pt"))
    resumed = train(recipe, digits, "cpu", resume=load_checkpoint(tmp_path / "c.pt"))
    assert len(resumed.history) == 3
    assert resumed.final["val_loss"] == pytest.approx(full[-1]["val_loss"], rel=1e-5)
    assert resumed.final["test_acc"] == full[-1]["test_acc"]


def _high_low(data, n_train):
    """A new 2-class task on digits ("digit >= 5"), with only ``n_train`` training images."""
    idx = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(0))[:n_train]
    high = lambda y: (y >= 5).long()  # noqa: E731
    return dataclasses.replace(data, train_x=data.train_x[idx], train_y=high(data.train_y[idx]),
                               val_y=high(data.val_y), test_y=high(data.test_y), num_classes=2,
                               classes=["low", "high"])


@pytest.mark.slow
def test_pretrained_checkpoint_beats_scratch_and_freeze_keeps_backbone(digits, tmp_path):
    knobs = {"width": 16, "lr_schedule": "constant", "lr": 0.05, "batch_size": 32}
    states = []
    train(Recipe.from_dict({**knobs, "epochs": 4}), digits, "cpu",
          lambda m, s: states.append(s()) if "stop_reason" in m else None)
    ckpt = save_checkpoint(states[-1], tmp_path / "source.pt")

    target = _high_low(digits, 16)
    target_knobs = {**knobs, "epochs": 10, "lr": 0.2, "aug_crop": "none"}
    scratch = train(Recipe.from_dict(target_knobs), target, "cpu")
    tuned = train(Recipe.from_dict({**target_knobs, "pretrained": str(ckpt),
                                    "freeze": "backbone"}), target, "cpu")
    assert tuned.final["test_acc"] > scratch.final["test_acc"] + 0.15

    source_state = load_checkpoint(ckpt)["model"]
    after = tuned.model.state_dict()
    changed = {k for k, v in after.items()
               if k not in source_state or v.shape != source_state[k].shape
               or not torch.equal(v, source_state[k])}
    head = {k for k in after if k.startswith("head.")}
    assert head and changed == head, sorted(changed ^ head)[:5]
