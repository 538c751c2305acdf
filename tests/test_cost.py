"""Cost metrics (trainables.cost): parameters, FLOPs by hand count, latency, and their place in
every per-epoch row of train()."""

import copy

import pytest
import torch
import torch.nn as nn

from trainables.constraints import parse_constraints
from trainables.cost import count_flops, count_params, measure_cost, measure_latency_ms
from trainables.data import load_data
from trainables.loop import train
from trainables.models import build_model
from trainables.parts import apply_freeze, head_module
from trainables.recipe import Recipe

FAST = {"width": 8, "epochs": 2, "batch_size": 128}
COST = ("params", "params_trainable", "flops", "latency_ms", "latency_device", "train_time_s")


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _tiny() -> nn.Module:
    """conv 1->2 (3x3, pad 1) on 4x4, ReLU, flatten, linear 32->3."""
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32, 3))


def test_params_are_the_sum_of_numel_and_freezing_lowers_the_trainable_count():
    model = build_model("resnet_small", in_channels=1, num_classes=10, width=8)
    total, trainable = count_params(model)
    assert total == trainable == sum(p.numel() for p in model.parameters())
    apply_freeze(model, "backbone")
    frozen_total, frozen_trainable = count_params(model)
    head = sum(p.numel() for p in head_module(model).parameters())
    assert frozen_total == total and frozen_trainable == head < total


def test_flops_of_a_tiny_conv_net_match_the_hand_count():
    # conv: 2 output channels x 4x4 positions x (1 input channel x 3x3) MACs = 288 MACs;
    # linear: 32 x 3 = 96 MACs; FlopCounterMode counts 2 FLOPs per MAC, biases and ReLU not
    assert count_flops(_tiny(), torch.zeros(1, 1, 4, 4)) == 2 * (288 + 96)


def test_measuring_changes_no_state_and_keeps_each_modules_mode():
    model = build_model("simple_cnn", in_channels=1, num_classes=10, width=8)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    measure_cost(model, torch.zeros(1, 1, 32, 32))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_latency_is_positive_and_names_the_device():
    cost = measure_cost(_tiny(), torch.zeros(1, 1, 4, 4))
    assert cost["latency_ms"] > 0 and cost["latency_device"] == "cpu"
    assert measure_latency_ms(_tiny(), torch.zeros(1, 1, 4, 4), warmup=1, timed=3) > 0


def test_every_epoch_row_of_train_carries_the_cost(digits):
    seen = []
    train(Recipe.from_dict(FAST), digits, "cpu", lambda m, state: seen.append(m))
    assert [m["epoch"] for m in seen] == [1, 2]
    for key in COST:
        assert all(key in m for m in seen), key
    model = build_model("simple_cnn", in_channels=1, num_classes=10, width=8)
    assert seen[0]["params"] == sum(p.numel() for p in model.parameters())
    assert seen[0]["flops"] == count_flops(model, torch.zeros(1, 1, 32, 32))
    assert seen[0]["latency_ms"] == seen[1]["latency_ms"] > 0  # measured once, at the start
    assert 0 < seen[0]["train_time_s"] < seen[1]["train_time_s"]  # cumulative


def test_a_resumed_run_keeps_its_latency_and_its_training_time(digits):
    states, seen = [], []
    recipe = Recipe.from_dict(FAST)
    train(recipe, digits, "cpu",
          lambda m, state: (seen.append(m), states.append(copy.deepcopy(state()))))
    resumed = []
    first = states[0]  # after epoch 1 of 2
    train(recipe, digits, "cpu", lambda m, state: resumed.append(m), resume=first)
    assert [m["epoch"] for m in resumed] == [2]
    assert resumed[0]["latency_ms"] == seen[0]["latency_ms"]
    assert resumed[0]["train_time_s"] > seen[0]["train_time_s"]


def test_a_statically_infeasible_recipe_trains_nothing(digits):
    seen = []
    result = train(Recipe.from_dict(FAST), digits, "cpu", lambda m, state: seen.append(m),
                   constraints=parse_constraints(["params<=1k"]))
    assert len(seen) == 1 and result.history == seen
    row = seen[0]
    assert row["epoch"] == 0 and row["stop_reason"] == "infeasible"
    assert row["broken_constraint"] == f"params {row['params']} breaks params<=1k"
    assert row["train_time_s"] == 0 and "val_acc" not in row and "test_acc" not in row


def test_a_dynamic_constraint_ends_the_run_after_the_epoch_that_breaks_it(digits):
    seen = []
    train(Recipe.from_dict({**FAST, "epochs": 3}), digits, "cpu",
          lambda m, state: seen.append(m), constraints=parse_constraints(["train_time_s<1e-6"]))
    assert [m["epoch"] for m in seen] == [1]
    assert seen[0]["stop_reason"] == "infeasible" and "test_acc" not in seen[0]
    assert seen[0]["broken_constraint"].startswith("train_time_s ")


def test_constraints_that_hold_change_nothing(digits):
    key = ("train_loss", "val_loss", "val_acc", "test_acc", "stop_reason")
    runs = []
    for constraints in ((), ("params<=1M", "latency_ms<1e6", "train_time_s<1e6")):
        seen = []
        train(Recipe.from_dict(FAST), digits, "cpu", lambda m, state, s=seen: s.append(m),
              constraints=parse_constraints(constraints))
        runs.append([[m.get(k) for k in key] for m in seen])
    assert runs[0] == runs[1] and runs[0][-1][-1] == "completed"
