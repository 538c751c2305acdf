"""The two parts every model exposes, and what the loop trains differently on them.

``head_module`` is the classifier, ``backbone_blocks`` the feature extractor as ordered blocks
(stem -> deepest). ``apply_freeze`` and ``param_groups`` work on those parts only, so the loop
never needs to know which architecture it trains (torchvision's or ours).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from trainables.errors import ConfigError

__all__ = ["apply_freeze", "backbone_blocks", "head_attr", "head_module", "param_groups"]

_HEAD_ATTRS = ("fc", "classifier", "heads", "head")  # where torchvision (and ours) keep the head
_BLOCK_CONTAINERS = ("features", "layers", "trunk_output", "blocks")  # unrolled into blocks


def head_attr(model: nn.Module) -> str:
    """The attribute holding the classifier."""
    for attr in _HEAD_ATTRS:
        if isinstance(getattr(model, attr, None), nn.Module):
            return attr
    raise TypeError(f"{type(model).__name__} has none of the head attributes {_HEAD_ATTRS}")


def head_module(model: nn.Module) -> nn.Module:
    """The classifier (``fc`` / ``classifier`` / ``heads`` / ``head``): never frozen."""
    return getattr(model, head_attr(model))


def backbone_blocks(model: nn.Module) -> list[nn.Module]:
    """The feature extractor as ordered blocks, stem first, head excluded: the units that
    ``freeze: N`` counts from the deep end. ResNets give [stem (conv1+bn1), layer1..layer4];
    models with ``features`` (mobilenet, efficientnet, ours, ...) give its entries."""
    if all(hasattr(model, a) for a in ("conv1", "bn1", "layer1")):
        layers = [m for n, m in model.named_children() if n.startswith("layer")]
        return [nn.Sequential(model.conv1, model.bn1), *layers]
    head = head_module(model)
    blocks: list[nn.Module] = []
    for name, child in model.named_children():
        if child is head:
            continue
        parts = list(child.children()) if name in _BLOCK_CONTAINERS else [child]
        blocks += [p for p in parts if next(p.parameters(), None) is not None
                   or next(p.buffers(), None) is not None]
    return blocks


def _stay_in_eval(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook of a frozen BatchNorm: normalise with the running statistics and leave
    them unchanged, whatever ``model.train()`` set."""
    module.training = False


def apply_freeze(model: nn.Module, policy: str) -> None:
    """Freeze per the ``freeze`` knob: ``none``; ``backbone`` (train the head only); ``N``
    (train the last N backbone blocks and the head). Frozen parameters get requires_grad False
    (so ``param_groups`` leaves them out of the optimizer, weight decay included) and frozen
    BatchNorm layers keep evaluating with their running statistics, so frozen tensors stay
    bit-identical through training."""
    if policy == "none":
        return
    blocks = backbone_blocks(model)
    if policy != "backbone" and not policy.isdigit():
        raise ConfigError(f"knob 'freeze': must be none, backbone or a block count N, got "
                          f"{policy!r}")
    n = 0 if policy == "backbone" else int(policy)
    if n > len(blocks):
        raise ConfigError(f"knob 'freeze': {type(model).__name__} has {len(blocks)} backbone "
                          f"blocks, so N must be <= {len(blocks)}, got {n}")
    trained = [head_module(model), *blocks[len(blocks) - n:]]
    keep = {id(p) for m in trained for p in m.parameters()}
    trained_modules = {id(s) for m in trained for s in m.modules()}
    for p in model.parameters():
        if id(p) not in keep:
            p.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, _BatchNorm) and id(module) not in trained_modules:
            module.eval()
            if not getattr(module, "_cnn_tuner_frozen", False):
                module.register_forward_pre_hook(_stay_in_eval)
                module._cnn_tuner_frozen = True


def param_groups(model: nn.Module, *, lr: float, backbone_lr_mult: float,
                 weight_decay: float) -> list[dict]:
    """Optimizer groups: {backbone, head} x {decay, no_decay}, trainable parameters only.

    The backbone gets ``lr * backbone_lr_mult`` (each group also records its ``lr_mult`` for
    schedules that set the LR themselves); biases and norm scales (1-D tensors) get no weight
    decay, which would only pull them towards 0 without regularising. Empty groups are dropped.
    """
    head = {id(p) for p in head_module(model).parameters()}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {
        (part, decay): [] for part in ("backbone", "head") for decay in (True, False)}
    for p in model.parameters():
        if p.requires_grad:
            groups["head" if id(p) in head else "backbone", p.ndim > 1].append(p)
    out = []
    for (part, decay), params in groups.items():
        if params:
            mult = backbone_lr_mult if part == "backbone" else 1.0
            out.append({"name": f"{part}_{'decay' if decay else 'no_decay'}", "params": params,
                        "lr": lr * mult, "lr_mult": mult,
                        "weight_decay": weight_decay if decay else 0.0})
    return out
