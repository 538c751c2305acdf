"""Model registry: small CNNs, torchvision classification models, pretrained loading.

``build_model(name, ...)`` builds a registry model (``list_models()``) or any torchvision
classification model by name, with the recipe's knobs applied the same way to both: BatchNorm
on/off and momentum, dropout before the classifier, a head sized for the task, the input conv
adapted to the image channels. ``pretrained`` is ``none``, a torchvision weights name (read from
torch hub's cache; downloaded only when asked) or a checkpoint written by this project.

Every model exposes the same two parts, head and backbone blocks (``trainables.parts``, where
freezing and parameter groups work on them). Files are read with
``torch.load(weights_only=True)``: a checkpoint that needs arbitrary unpickling is refused.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from trainables.checkpoint import load_checkpoint, read_tensors
from trainables.errors import ConfigError, did_you_mean, first_line
from trainables.parts import head_attr
from trainables.recipe import is_weights_name
from trainables.small_models import ResNetSmall, SimpleCNN

__all__ = ["build_model", "check_model_name", "check_runnable", "list_models", "missing_weights",
           "missing_weights_error", "register_model", "require_weights"]

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}
_AUX_HEADS = ("AuxLogits", "aux1", "aux2")  # inception_v3 / googlenet training-only heads
_EXAMPLES = "resnet18, mobilenet_v3_small, efficientnet_b0"


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a builder ``f(*, in_channels, num_classes, width, batch_norm, bn_momentum,
    dropout) -> nn.Module`` whose module has ``features`` (blocks) and ``head`` attributes."""
    def wrap(builder: ModelBuilder) -> ModelBuilder:
        _REGISTRY[name] = builder
        return builder
    return wrap


register_model("simple_cnn")(SimpleCNN)
register_model("resnet_small")(ResNetSmall)


def list_models() -> list[str]:
    """Registry model names. Any torchvision classification model name is accepted as well."""
    return sorted(_REGISTRY)


@functools.cache
def _torchvision_names() -> tuple[str, ...]:
    import torchvision  # lazy: ~seconds to import, and the small models do not need it

    return tuple(torchvision.models.list_models(module=torchvision.models))


def _check_name(name: str) -> None:
    if name in _REGISTRY or name in _torchvision_names():
        return
    hint = did_you_mean(name, [*_REGISTRY, *_torchvision_names()])
    raise ConfigError(f"knob 'model': unknown model {name!r}{hint}; registry models: "
                      f"{', '.join(list_models())}; any torchvision classification model name also "
                      f"works (e.g. {_EXAMPLES}; all {len(_torchvision_names())}: "
                      "torchvision.models.list_models(module=torchvision.models))")


def _resolve_weights(name: str, weights_name: str) -> Any:
    """The torchvision weights enum member ``name``/``weights_name`` (DEFAULT included)."""
    if name in _REGISTRY:
        raise ConfigError(f"knob 'pretrained': torchvision weights name {weights_name!r} needs a "
                          f"torchvision model, but model is {name!r} (a registry model: use none "
                          "or the path of a checkpoint written by `cnn-tuner train`)")
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    try:
        return enum[weights_name]
    except KeyError:
        valid = [w.name for w in enum] + ["DEFAULT"]
        raise ConfigError(f"knob 'pretrained': {weights_name!r} is not a weights name of "
                          f"torchvision model {name!r}; valid: {', '.join(valid)}") from None


def check_model_name(name: str, pretrained: str = "none") -> None:
    """Refuse an unknown model, or pretrained weights that cannot go with it, before any trial
    starts (a checkpoint file is opened to check it holds the same architecture)."""
    _check_name(name)
    if is_weights_name(pretrained):
        _resolve_weights(name, pretrained)
    elif pretrained != "none":
        _read_checkpoint(Path(pretrained), name)


# -- loading files --------------------------------------------------------------------------
def _read_checkpoint(path: Path, name: str) -> dict[str, Any]:
    """A cnn-tuner checkpoint holding a ``name`` model, or ConfigError naming the file."""
    ckpt = load_checkpoint(path)
    if ckpt["recipe"].get("model") != name:
        raise ConfigError(f"checkpoint holds a {ckpt['recipe'].get('model')!r} model, but knob "
                          f"'model' is {name!r}", where=str(path))
    return ckpt


def _hub_cache() -> Path:
    """torch hub's weights folder (``$TORCH_HOME/hub/checkpoints``, read at each call)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _hub_path(weights: Any) -> Path:
    """Where torch hub keeps (or would download) the file of a torchvision weights member."""
    return _hub_cache() / os.path.basename(urlparse(weights.url).path)


def _hub_state_dict(weights: Any, download: bool) -> dict[str, torch.Tensor]:
    """torchvision weights from torch hub's cache; the network is used only with download."""
    path = _hub_path(weights)
    if path.is_file():
        return read_tensors(path)
    if not download:
        raise missing_weights_error([str(path)])
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # trials starting together on one node fetch the file once: the others wait, then read it
        with FileLock(str(path.with_name(f".{path.name}.lock"))):
            if path.is_file():
                return read_tensors(path)
            return torch.hub.load_state_dict_from_url(
                weights.url, map_location="cpu", progress=False, check_hash=True,
                weights_only=True)
    except (OSError, RuntimeError) as e:
        raise ConfigError(f"knob 'pretrained': could not download {weights.url} to {path} "
                          f"({type(e).__name__}: {e})") from None


# -- module surgery -------------------------------------------------------------------------
def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    return next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


def _adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Input-conv weights for another channel count (as timm's adapt_input_conv): grayscale sums
    the colour filters (same response to a grey image); otherwise the filters are repeated and
    rescaled so the activation scale stays that of the original channel count."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def _replace_input_conv(model: nn.Module, in_channels: int, *, keep_weights: bool) -> None:
    name, conv = _first_conv(model)
    if conv.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    if keep_weights:
        with torch.no_grad():
            new.weight.copy_(_adapt_input_conv(conv.weight, in_channels))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    _set_submodule(model, name, new)
    if getattr(model, "transform_input", False):  # inception's RGB re-normalisation
        model.transform_input = False


def _configure_head(model: nn.Module, num_classes: int, dropout: float) -> None:
    """Size the final layer for the task and put the dropout knob in the classifier: set p on
    its Dropout layers, or insert one before the final layer (even at p=0, so checkpoint keys do
    not depend on the knob)."""
    attr = head_attr(model)
    head = getattr(model, attr)
    layers = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    path, last = layers[-1]
    if isinstance(last, nn.Linear) and last.out_features != num_classes:
        last = nn.Linear(last.in_features, num_classes, bias=last.bias is not None)
    elif isinstance(last, nn.Conv2d) and last.out_channels != num_classes:  # squeezenet
        last = nn.Conv2d(last.in_channels, num_classes, last.kernel_size)
    dropouts = [m for m in head.modules() if isinstance(m, nn.Dropout)]
    for d in dropouts:
        d.p = dropout
    if not dropouts:
        last = nn.Sequential(nn.Dropout(dropout), last)
    if path:
        _set_submodule(head, path, last)
    else:
        setattr(model, attr, last)


def _build_torchvision(name: str, *, in_channels: int, num_classes: int, batch_norm: bool,
                       bn_momentum: float, dropout: float, weights: Any,
                       download: bool) -> nn.Module:
    import torchvision

    init = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
    if weights is None:  # init_weights: torchvision's own init, and silences its FutureWarning
        model = torchvision.models.get_model(name, num_classes=num_classes, **init)
    else:
        # The builder kwargs torchvision sets itself when given weights; we load the file here
        # instead of letting torchvision do it, to keep weights_only=True and no network.
        kwargs: dict[str, Any] = {"num_classes": len(weights.meta["categories"])}
        if name in ("googlenet", "inception_v3"):
            kwargs.update(transform_input=True, aux_logits=True, init_weights=False)
        if name.startswith("vit_"):
            kwargs["image_size"] = weights.meta["min_size"][0]
        if name == "maxvit_t":
            kwargs["input_size"] = weights.meta["min_size"]
        model = torchvision.models.get_model(name, **kwargs)
        state = _hub_state_dict(weights, download)
        legacy = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|"
                            r"running_mean|running_var))$")  # old densenet keys, as torchvision
        state = {(legacy.sub(r"\1\2", k)): v for k, v in state.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(f"knob 'pretrained': cached {weights} does not fit {name!r} "
                              f"({first_line(e)})") from None
    if getattr(model, "aux_logits", False):  # training-time aux heads would change the output
        model.aux_logits = False
        for aux in _AUX_HEADS:
            if hasattr(model, aux):
                setattr(model, aux, None)
    _replace_input_conv(model, in_channels, keep_weights=weights is not None)
    _configure_head(model, num_classes, dropout)
    for path, module in list(model.named_modules()):
        if isinstance(module, _BatchNorm):
            if batch_norm:
                module.momentum = bn_momentum
            else:
                _set_submodule(model, path, nn.Identity())
    return model


def _load_checkpoint(model: nn.Module, ckpt: dict[str, Any], path: str, num_classes: int) -> None:
    """Copy every checkpoint tensor whose name and shape match. The head is skipped when the
    class count differs and the input conv adapted when the channel count differs; any other
    missing tensor means another architecture (width, batch_norm) and is refused."""
    source = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()
              if isinstance(v, torch.Tensor)}  # a torch.compile'd model saves _orig_mod. keys
    head_prefix = head_attr(model) + "."
    conv_key = _first_conv(model)[0] + ".weight"
    other_classes = ckpt.get("num_classes") != num_classes
    loaded, missing = {}, []
    for key, target in model.state_dict().items():
        src = source.get(key)
        if src is not None and src.shape == target.shape:
            loaded[key] = src
        elif (key == conv_key and src is not None and src.ndim == 4
              and src.shape[0] == target.shape[0] and src.shape[2:] == target.shape[2:]):
            loaded[key] = _adapt_input_conv(src, target.shape[1])
        elif not (key.startswith(head_prefix) and other_classes and src is not None):
            missing.append(key)
    if missing:
        r = ckpt["recipe"]
        raise ConfigError(f"{len(missing)} tensors of the model are missing from the checkpoint or "
                          f"have another shape (first: {missing[0]}); width and batch_norm must "
                          f"match the checkpoint's (width={r.get('width')}, "
                          f"batch_norm={r.get('batch_norm')})", where=path)
    model.load_state_dict(loaded, strict=False)


def build_model(name: str, *, in_channels: int, num_classes: int, width: int = 32,
                batch_norm: bool = True, bn_momentum: float = 0.1, dropout: float = 0.0,
                pretrained: str = "none", download: bool = False) -> nn.Module:
    """Build ``name`` for images with ``in_channels`` channels and ``num_classes`` classes.

    ``width`` applies to the registry models only (torchvision models have fixed widths).
    Initialisation draws from torch's global RNG: seed it first for reproducible models.
    """
    _check_name(name)
    _check_checkpoint_file(pretrained)
    weights = _resolve_weights(name, pretrained) if is_weights_name(pretrained) else None
    ckpt = None if weights is not None or pretrained == "none" else _read_checkpoint(
        Path(pretrained), name)
    if name in _REGISTRY:
        model = _REGISTRY[name](in_channels=in_channels, num_classes=num_classes, width=width,
                                batch_norm=batch_norm, bn_momentum=bn_momentum, dropout=dropout)
    else:
        model = _build_torchvision(name, in_channels=in_channels, num_classes=num_classes,
                                   batch_norm=batch_norm, bn_momentum=bn_momentum,
                                   dropout=dropout, weights=weights, download=download)
    if ckpt is not None:
        _load_checkpoint(model, ckpt, pretrained, num_classes)
    return model


# -- weights files present before trials start ----------------------------------------------
def missing_weights(model: str, pretrained: str, download: bool = False) -> list[str]:
    """The file loading ``pretrained`` into ``model`` needs and this machine lacks ([] or one
    path): a checkpoint file, or torchvision weights absent from torch hub's cache (none when
    ``download``: the trial fetches them). A pair the Recipe refuses (weights name on a registry
    model, a name the model has no weights for) needs no file here."""
    if pretrained == "none":
        return []
    if not is_weights_name(pretrained):
        return [] if Path(pretrained).is_file() else [pretrained]
    if download or model not in _torchvision_names():
        return []
    try:
        path = _hub_path(_resolve_weights(model, pretrained))
    except ConfigError:
        return []
    return [] if path.is_file() else [str(path)]


def missing_weights_error(missing: Iterable[str], *, node: str | None = None) -> ConfigError:
    """One line naming every file of ``missing`` (``missing_weights`` paths) and the fix;
    ``node`` names the machine that lacks them (a cluster worker whose cache differs)."""
    names = list(dict.fromkeys(missing))  # one file can serve several pairs
    cached = [f for f in names if Path(f).parent == _hub_cache()]
    files = [f for f in names if f not in cached]
    on = f" on node {node}" if node else ""
    parts = []
    if cached:
        parts.append(f"not in torch hub's cache{on}: {', '.join(cached)}; set download: true "
                     "(--set download=true) to fetch them (no network by default), or copy "
                     "them there")
    if files:
        parts.append(f"no checkpoint file{on} at {', '.join(files)} (expected a checkpoint.pt "
                     "written by `cnn-tuner train`, or a torchvision weights name such as "
                     "IMAGENET1K_V1)")
    return ConfigError("knob 'pretrained': " + "; ".join(parts))


def _check_checkpoint_file(pretrained: str, node: str | None = None) -> None:
    """A ``pretrained`` that is a path must name a file (here, or on ``node``)."""
    if pretrained != "none" and not is_weights_name(pretrained) and not Path(pretrained).is_file():
        raise missing_weights_error([pretrained], node=node)


def check_runnable(model: str, pretrained: str = "none", *, download: bool | None = None,
                   node: str | None = None) -> None:
    """Whether a recipe's model can be built here, in one place (the Recipe's own rules are pure):
    the model exists, ``pretrained`` is a weights name it has or a checkpoint file holding it, and,
    unless ``download`` is None (a check of the recipe, not of this machine), its weights file is
    on this machine or may be downloaded. The space check calls it once per (model, pretrained)
    pair a space can produce, a trial with its ``node`` before training; ``build_model`` refuses
    the same things with the same messages while it builds (the loop needs no separate call)."""
    _check_checkpoint_file(pretrained, node)
    check_model_name(model, pretrained)
    if download is not None:
        missing = missing_weights(model, pretrained, download)
        if missing:
            raise missing_weights_error(missing, node=node)


def require_weights(models: Iterable[str], pretrained: Iterable[str], *,
                    download: bool) -> None:
    """Refuse, before any trial starts, a run whose weights files are not all here: every
    model x pretrained value a space can choose (as the dataset is loaded on the driver first).
    Every missing file is named at once, so one fix covers the run."""
    missing = [f for m in sorted(models) for p in sorted(pretrained)
               for f in missing_weights(m, p, download)]
    if missing:
        raise missing_weights_error(missing)
