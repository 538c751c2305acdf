"""Model registry tests: real modules at 32x32, parametrised over the registry (as timm's)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from trainables.data import load_data
from trainables.errors import ConfigError
from trainables.loop import Trainer
from trainables.models import (
    build_model,
    check_model_name,
    check_runnable,
    list_models,
)
from trainables.parts import apply_freeze, backbone_blocks, head_module, param_groups
from trainables.recipe import Recipe

TORCHVISION = ["resnet18", "mobilenet_v3_small"]
ALL = [*list_models(), *TORCHVISION]


def small(name: str, **kw) -> nn.Module:
    """A model small enough for CPU tests (width only matters for registry models)."""
    torch.manual_seed(0)
    kw = {"in_channels": 1, "num_classes": 10, "width": 8, **kw}
    return build_model(name, **kw)


def images(b: int = 4, c: int = 1) -> torch.Tensor:
    return torch.randn(b, c, 32, 32, generator=torch.Generator().manual_seed(1))


def save_checkpoint(path: Path, model: nn.Module, name: str, **extra) -> Path:
    recipe = {"model": name, "width": 8, "batch_norm": True, **extra.pop("recipe", {})}
    torch.save({"format": "cnn-tuner/1", "model": model.state_dict(), "recipe": recipe,
                "num_classes": 10, "in_channels": 1, "epoch": 3, **extra}, path)
    return path


def test_registry_names() -> None:
    assert list_models() == ["resnet_small", "simple_cnn"]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", ALL)
def test_output_shape(name: str, channels: int) -> None:
    model = small(name, in_channels=channels, num_classes=7).eval()
    with torch.no_grad():
        assert model(images(2, channels)).shape == (2, 7)
    assert len(backbone_blocks(model)) >= 4
    assert isinstance(head_module(model), nn.Module)


@pytest.mark.parametrize("name", [*list_models(), "resnet18"])
def test_batch_norm_off_leaves_no_batchnorm(name: str) -> None:
    model = small(name, batch_norm=False)
    assert not [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert model(images()).shape == (4, 10)
    on = small(name, batch_norm=True)
    assert [m for m in on.modules() if isinstance(m, _BatchNorm)]


@pytest.mark.parametrize("name", ALL)
def test_bn_momentum_applied(name: str) -> None:
    bns = [m for m in small(name, bn_momentum=0.03).modules() if isinstance(m, _BatchNorm)]
    assert bns and all(m.momentum == 0.03 for m in bns)


@pytest.mark.parametrize("name", ALL)
def test_dropout_active_in_train_mode_only(name: str) -> None:
    model, x = small(name, dropout=0.5), images(8)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    assert all(m.p == 0.5 for m in head_module(model).modules() if isinstance(m, nn.Dropout))
    plain = small(name, dropout=0.0).train()  # also turns off torchvision's default dropout
    assert torch.equal(plain(x), plain(x))


def sgd_steps(model: nn.Module, steps: int = 3) -> None:
    """A few real SGD steps (momentum, weight decay) on random data, in train mode."""
    opt = torch.optim.SGD(param_groups(model, lr=0.1, backbone_lr_mult=1.0, weight_decay=5e-3),
                          momentum=0.9)
    model.train()
    gen = torch.Generator().manual_seed(2)
    for _ in range(steps):
        x, y = torch.randn(8, 1, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def split_state(model: nn.Module, trained: list[nn.Module]) -> tuple[dict, dict]:
    """(state of tensors outside `trained`, state of tensors inside), as cloned copies."""
    inside = {id(t) for m in trained for t in [*m.parameters(), *m.buffers()]}
    named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    frozen = {k: v.detach().clone() for k, v in named.items() if id(v) not in inside}
    trainable = {k: v.detach().clone() for k, v in named.items() if id(v) in inside}
    return frozen, trainable


def changed(before: dict, model: nn.Module) -> set[str]:
    now = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return {k for k, v in before.items() if not torch.equal(v, now[k])}


@pytest.mark.parametrize("name", ALL)
def test_freeze_backbone_keeps_weights_and_bn_stats_bit_identical(name: str) -> None:
    model = small(name)
    apply_freeze(model, "backbone")
    frozen, head = split_state(model, [head_module(model)])
    assert any(k.endswith("running_mean") for k in frozen)  # BN stats are among the checked
    sgd_steps(model)
    assert changed(frozen, model) == set()
    assert changed(head, model)  # the head did train
    assert all(not p.requires_grad for b in backbone_blocks(model) for p in b.parameters())


@pytest.mark.parametrize("name", [*list_models(), "resnet18"])
def test_freeze_one_trains_last_block_and_head(name: str) -> None:
    model = small(name)
    apply_freeze(model, "1")
    last = backbone_blocks(model)[-1]
    frozen, trained = split_state(model, [last, head_module(model)])
    sgd_steps(model)
    assert changed(frozen, model) == set()
    moved = changed(trained, model)
    last_block = set(split_state(model, [last])[1])
    assert any(k.endswith("weight") for k in moved & last_block)  # the last block trained
    assert any(k.endswith("running_mean") for k in moved & last_block)  # its BN still adapts
    assert {n for n, p in model.named_parameters() if p.requires_grad} <= set(trained)


def test_freeze_too_many_blocks_is_refused() -> None:
    with pytest.raises(ConfigError, match="freeze.*<= 4"):
        apply_freeze(small("simple_cnn"), "9")


def test_param_groups_lr_mult_and_no_decay_on_biases_and_norms() -> None:
    model = small("resnet_small")
    groups = param_groups(model, lr=0.2, backbone_lr_mult=0.1, weight_decay=5e-4)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone_decay", "backbone_no_decay", "head_decay", "head_no_decay"}
    assert by_name["backbone_decay"]["lr"] == pytest.approx(0.02)
    assert by_name["head_decay"]["lr"] == pytest.approx(0.2)
    assert by_name["backbone_decay"]["weight_decay"] == 5e-4
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    norms_and_biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    norms_and_biases += [m.weight for m in model.modules() if isinstance(m, _BatchNorm)]
    assert {id(p) for p in norms_and_biases} == no_decay
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    apply_freeze(model, "backbone")
    after = param_groups(model, lr=0.2, backbone_lr_mult=0.1, weight_decay=5e-4)
    assert [g["name"] for g in after] == ["head_decay", "head_no_decay"]


# -- torchvision weights through a fake hub cache -------------------------------------------
@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert Path(torch.hub.get_dir()) == tmp_path / "hub"
    return tmp_path / "hub" / "checkpoints"


def test_torchvision_weights_load_from_hub_cache(hub: Path) -> None:
    import torchvision

    torch.manual_seed(5)
    reference = torchvision.models.resnet18().state_dict()
    hub.mkdir(parents=True)
    torch.save(reference, hub / "resnet18-f37072fd.pth")
    model = build_model("resnet18", in_channels=1, num_classes=10, pretrained="IMAGENET1K_V1")
    state = model.state_dict()
    assert torch.equal(state["layer3.1.conv2.weight"], reference["layer3.1.conv2.weight"])
    assert torch.equal(state["bn1.running_var"], reference["bn1.running_var"])
    assert torch.equal(state["conv1.weight"], reference["conv1.weight"].sum(1, keepdim=True))
    assert head_module(model)[-1].out_features == 10
    assert build_model("resnet18", in_channels=3, num_classes=10,
                       pretrained="DEFAULT").state_dict()["conv1.weight"].equal(
        reference["conv1.weight"])


def test_missing_cache_file_names_the_path(hub: Path) -> None:
    with pytest.raises(ConfigError, match="download: true") as err:
        build_model("resnet18", in_channels=3, num_classes=10, pretrained="IMAGENET1K_V1")
    assert str(hub / "resnet18-f37072fd.pth") in str(err.value)


def test_concurrent_downloads_fetch_the_weights_once(hub: Path, monkeypatch) -> None:
    """Trials starting together on one node: one fetches (here a stand-in for the network that
    writes the file as torch hub does), the others wait on the file lock and read its file."""
    import threading
    import time

    import torchvision

    from trainables.models import _hub_state_dict

    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    reference = {"w": torch.arange(6.0)}
    fetches = []

    def fetch(url, **kwargs):
        fetches.append(url)
        time.sleep(0.5)  # long enough for the other threads to arrive
        torch.save(reference, hub / "resnet18-f37072fd.pth")
        return reference

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fetch)
    got = []
    threads = [threading.Thread(target=lambda: got.append(_hub_state_dict(weights, True)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fetches == [weights.url]
    assert len(got) == 3 and all(torch.equal(g["w"], reference["w"]) for g in got)


# -- project checkpoints --------------------------------------------------------------------
def test_checkpoint_loads_with_other_num_classes_and_channels(tmp_path: Path) -> None:
    source = small("simple_cnn")
    path = save_checkpoint(tmp_path / "ckpt.pt", source, "simple_cnn")
    model = build_model("simple_cnn", in_channels=1, num_classes=4, width=8, pretrained=str(path))
    src, new = source.state_dict(), model.state_dict()
    backbone = [k for k in src if k.startswith("features.")]
    assert backbone and all(torch.equal(src[k], new[k]) for k in backbone)
    assert new["head.3.weight"].shape == (4, 32)
    rgb = build_model("simple_cnn", in_channels=3, num_classes=10, width=8, pretrained=str(path))
    w = src["features.0.0.weight"]
    assert torch.allclose(rgb.state_dict()["features.0.0.weight"], w.repeat(1, 3, 1, 1) / 3)
    assert torch.equal(rgb.state_dict()["head.3.weight"], src["head.3.weight"])


def test_checkpoint_of_other_width_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ckpt.pt", small("simple_cnn", width=16), "simple_cnn")
    with pytest.raises(ConfigError, match="missing.*width=8"):
        build_model("simple_cnn", in_channels=1, num_classes=10, width=32, pretrained=str(path))


def test_checkpoint_of_other_architecture_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ckpt.pt", small("resnet_small"), "resnet_small")
    with pytest.raises(ConfigError, match="'resnet_small'.*'simple_cnn'"):
        check_model_name("simple_cnn", str(path))
    with pytest.raises(ConfigError, match="'resnet_small'.*'simple_cnn'"):
        build_model("simple_cnn", in_channels=1, num_classes=10, pretrained=str(path))


def test_plain_state_dict_is_not_a_project_checkpoint(tmp_path: Path) -> None:
    torch.save(small("simple_cnn").state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ConfigError, match="not a cnn-tuner checkpoint"):
        check_model_name("simple_cnn", str(tmp_path / "sd.pt"))


class _Payload:
    """Unpickling this would run os.mkdir: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_malicious_checkpoint_is_refused_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = save_checkpoint(tmp_path / "evil.pt", small("simple_cnn"), "simple_cnn",
                           extra=_Payload(marker))
    with pytest.raises(ConfigError, match="refused: not a plain-tensor checkpoint") as err:
        build_model("simple_cnn", in_channels=1, num_classes=10, width=8, pretrained=str(path))
    assert str(path) in str(err.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proves the payload is live: unsafe loading runs it
    assert marker.exists()


# -- name checks ----------------------------------------------------------------------------
def test_check_model_name_accepts_valid_combinations() -> None:
    check_model_name("simple_cnn")
    check_model_name("resnet18", "IMAGENET1K_V1")
    check_model_name("efficientnet_b0", "DEFAULT")


def test_check_runnable_is_the_one_place_for_models_and_files(tmp_path) -> None:
    """The Recipe's own rules are pure (no file, no torchvision); whether its model can be built
    here is checked by check_runnable (space check, trials), from the same pieces build_model
    refuses with while the loop builds: same messages either way."""
    recipe = Recipe.from_dict({"pretrained": str(tmp_path / "gone.pt")})  # a pure rule: accepted
    with pytest.raises(ConfigError, match=f"no checkpoint file at {tmp_path}/gone.pt"):
        check_runnable(recipe.model, recipe.pretrained)
    with pytest.raises(ConfigError, match="unknown model 'resnet_smal'"):
        check_runnable("resnet_smal")
    with pytest.raises(ConfigError, match="unknown model"):  # the loop, through build_model
        Trainer(Recipe.from_dict({"model": "resnet_smal", "width": 8}), load_data("digits"),
                torch.device("cpu"))
    with pytest.raises(ConfigError, match=f"no checkpoint file at {tmp_path}/gone.pt"):
        Trainer(recipe.replace(width=8), load_data("digits"), torch.device("cpu"))
    check_runnable("resnet18", "IMAGENET1K_V1")  # a recipe check: the cache is not looked at


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="knob 'model'") as err:
        check_model_name("resnet_smal")
    msg = str(err.value)
    assert "simple_cnn" in msg and "resnet_small" in msg and "resnet18" in msg
    assert "did you mean 'resnet_small'" in msg and "\n" not in msg


def test_weights_name_needs_a_torchvision_model() -> None:
    with pytest.raises(ConfigError, match="needs a torchvision model.*'simple_cnn'"):
        check_model_name("simple_cnn", "IMAGENET1K_V1")


def test_unknown_weights_name_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="valid: IMAGENET1K_V1, DEFAULT"):
        check_model_name("resnet18", "IMAGENET1K_V9")
    with pytest.raises(ConfigError, match="IMAGENET1K_V2"):
        build_model("resnet50", in_channels=3, num_classes=10, pretrained="IMAGENET1K_V7")
