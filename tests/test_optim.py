"""LR schedules and optimizers: each schedule changes the LR when and how it should."""

import math

import pytest
import torch

from trainables.optim import LRSchedule, build_optimizer, effective_lr
from trainables.recipe import Recipe


def _lrs(recipe: Recipe, steps_per_epoch: int = 4, val_losses=None) -> list[float]:
    """LR at the start of each epoch, driving the schedule like the loop does."""
    p = torch.nn.Parameter(torch.zeros(3))
    opt = build_optimizer(recipe, [{"params": [p], "lr": effective_lr(recipe),
                                    "weight_decay": 0.0}])
    sched = LRSchedule(recipe, opt, steps_per_epoch)
    out = []
    for epoch in range(recipe.epochs):
        out.append(opt.param_groups[0]["lr"])
        for _ in range(steps_per_epoch):
            opt.step()
            sched.after_batch()
        sched.after_epoch(val_losses[epoch] if val_losses else 1.0)
    return out


def test_step_schedule_decays_at_step_size():
    r = Recipe.from_dict({"lr_schedule": "step", "step_size": 3, "gamma": 0.5, "epochs": 8,
                          "lr": 0.1, "batch_size": 128})
    lrs = _lrs(r)
    assert lrs[:3] == pytest.approx([0.1] * 3)
    assert lrs[3:6] == pytest.approx([0.05] * 3)
    assert lrs[6:] == pytest.approx([0.025] * 2)


def test_exponential_decays_every_epoch():
    r = Recipe.from_dict({"lr_schedule": "exponential", "gamma": 0.8, "epochs": 4, "lr": 0.1,
                          "batch_size": 128})
    assert _lrs(r) == pytest.approx([0.1 * 0.8**i for i in range(4)])


def test_plateau_reduces_after_patience():
    r = Recipe.from_dict({"lr_schedule": "plateau", "plateau_patience": 2, "plateau_factor": 0.5,
                          "epochs": 7, "lr": 0.1, "batch_size": 128})
    # loss improves for two epochs, then stalls
    lrs = _lrs(r, val_losses=[1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    # epochs 2 and 3 are tolerated (patience 2); the third bad epoch (4) triggers the decay
    assert lrs[:5] == pytest.approx([0.1] * 5)
    assert lrs[5:] == pytest.approx([0.05] * 2)


def test_constant_stays_constant():
    r = Recipe.from_dict({"lr_schedule": "constant", "epochs": 5, "lr": 0.1,
                          "batch_size": 128})
    assert _lrs(r) == pytest.approx([0.1] * 5)


def test_cosine_decays_to_zero_and_warmup_ramps():
    r = Recipe.from_dict({"lr_schedule": "cosine", "epochs": 6, "warmup_epochs": 2, "lr": 0.1,
                          "batch_size": 128})
    lrs = _lrs(r)
    assert lrs[0] == pytest.approx(0.01)  # warm-up starts at lr/10
    assert lrs[1] == pytest.approx(0.01 + 0.09 * 4 / 8)
    assert lrs[2] == pytest.approx(0.1)  # warm-up over, cosine starts at the peak
    assert lrs[2] > lrs[3] > lrs[4] > lrs[5] > 0
    assert lrs[4] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 8 / 16)), rel=1e-4)


def test_onecycle_rises_then_falls():
    r = Recipe.from_dict({"lr_schedule": "onecycle", "epochs": 10, "warmup_epochs": 3,
                          "lr": 0.1, "batch_size": 128})
    lrs = _lrs(r)
    peak = lrs.index(max(lrs))
    assert peak == 3 and max(lrs) == pytest.approx(0.1, rel=1e-2)
    assert lrs[0] < lrs[1] < lrs[2] < lrs[3] > lrs[5] > lrs[9]


def test_lr_scales_with_batch_size():
    sgd = Recipe.from_dict({"lr": 0.1, "batch_size": 256})
    adam = Recipe.from_dict({"lr": 0.001, "batch_size": 512, "optimizer": "adamw"})
    assert effective_lr(sgd) == pytest.approx(0.2)
    assert effective_lr(adam) == pytest.approx(0.002)


@pytest.mark.parametrize("name,cls,nesterov", [("sgd", torch.optim.SGD, False),
                                               ("nesterov", torch.optim.SGD, True),
                                               ("adamw", torch.optim.AdamW, None)])
def test_optimizer_choice(name, cls, nesterov):
    r = Recipe.from_dict({"optimizer": name, "momentum": 0.8})
    opt = build_optimizer(r, [{"params": [torch.nn.Parameter(torch.zeros(1))]}])
    assert isinstance(opt, cls)
    if nesterov is not None:
        assert opt.defaults["nesterov"] is nesterov and opt.defaults["momentum"] == 0.8
