"""The Recipe: one typed, validated record of every training knob.

Every knob is a dataclass field whose metadata carries its doc, unit, valid range, strategy
family and the condition under which it matters. Defaults live here and nowhere else; search
spaces, the CLI and the README's knob table all read ``KNOBS``.

Ranges refuse what is meaningless (a dropout of 1.5, a negative lr), not what is merely bad: a
diverging learning rate is a result, not an input error.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainables.errors import ConfigError, did_you_mean, first_line

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder", "synthetic")
OPTIMIZERS = ("sgd", "nesterov", "adamw")
LR_SCHEDULES = ("constant", "step", "exponential", "plateau", "cosine", "onecycle")
CROPS = ("none", "pad_crop", "random_resized_crop")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FAMILIES = (
    "data", "model", "batch_norm", "regularization", "optimizer", "lr_schedule",
    "augmentation", "early_stopping", "transfer", "precision",
)
# The batch size at which `lr` is the actual learning rate (see the `lr` knob).
LR_REFERENCE_BATCH = 128
# torchvision weight enum members look like IMAGENET1K_V1, DEFAULT, COCO_V1 ...
_WEIGHTS_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def knob(default: Any, doc: str, family: str, *, low: float | None = None,
         high: float | None = None, low_open: bool = False, high_open: bool = False,
         choices: tuple | None = None, when: dict[str, tuple] | None = None,
         unit: str = "") -> Any:
    """A Recipe field with its rule. ``when`` = {other_knob: values for which this one matters}."""
    return field(default=default, metadata=dict(
        doc=doc, family=family, low=low, high=high, low_open=low_open, high_open=high_open,
        choices=choices, when=when or {}, unit=unit))


@dataclass(frozen=True)
class Recipe:
    """Every knob of one training run. Build with ``Recipe.from_dict`` / ``from_yaml``."""

    # -- data -------------------------------------------------------------------------------
    dataset: str = knob("digits", "dataset to train on", "data", choices=DATASETS)
    data_dir: str = knob("data", "folder holding the dataset files (ignored by digits/synthetic)",
                         "data", unit="path")
    download: bool = knob(False, "download the dataset into data_dir, and pretrained weights "
                          "into torch hub's cache, if missing (never by default: no network at "
                          "run time)", "data")
    val_fraction: float = knob(0.1, "fraction of the training split held out for validation",
                               "data", low=0.0, high=0.5, low_open=True)
    image_size: int = knob(32, "side of the square images the model sees (resized if needed)",
                           "data", low=8, high=1024, unit="pixels")
    split_seed: int = knob(0, "seed of the train/val split; fixed across trials so val_acc is "
                           "comparable", "data", low=0, high=2**31 - 1)
    # -- model ------------------------------------------------------------------------------
    model: str = knob("simple_cnn", "simple_cnn | resnet_small | a torchvision classification "
                      "model name (resnet18, mobilenet_v3_small, efficientnet_b0, ...)", "model")
    width: int = knob(32, "channels of the first stage of simple_cnn / resnet_small (doubled per "
                      "stage); torchvision models ignore it", "model", low=4, high=1024,
                      unit="channels")
    batch_norm: bool = knob(True, "BatchNorm after every conv (false: no BatchNorm module at all)",
                            "batch_norm")
    bn_momentum: float = knob(0.1, "BatchNorm running-statistics momentum (torch convention: "
                              "weight of the new batch)", "batch_norm", low=0.0, high=1.0,
                              low_open=True, when={"batch_norm": (True,)})
    sync_bn: bool = knob(False, "data-parallel trials: SyncBatchNorm, batch statistics over the "
                         "global batch of every worker instead of each worker's shard (no effect "
                         "on one worker)", "batch_norm", when={"batch_norm": (True,)})
    dropout: float = knob(0.0, "dropout probability before the classifier", "regularization",
                          low=0.0, high=1.0, high_open=True, unit="probability")
    # -- optimisation -----------------------------------------------------------------------
    optimizer: str = knob("nesterov", "sgd (momentum) | nesterov | adamw", "optimizer",
                          choices=OPTIMIZERS)
    lr: float = knob(0.2, f"peak learning rate at a batch of {LR_REFERENCE_BATCH} images; "
                     "scaled linearly with batch_size for SGD and by its square root for AdamW, "
                     "so lr and batch_size tune independently", "optimizer", low=0.0,
                     low_open=True, unit=f"per {LR_REFERENCE_BATCH} images")
    momentum: float = knob(0.9, "SGD momentum", "optimizer", low=0.0, high=1.0, high_open=True,
                           when={"optimizer": ("sgd", "nesterov")})
    weight_decay: float = knob(5e-4, "weight decay on conv/linear weights (not on biases or norm "
                               "parameters): L2 for SGD, decoupled for AdamW", "regularization",
                               low=0.0, high=1.0, high_open=True)
    label_smoothing: float = knob(0.0, "label smoothing of the cross-entropy targets",
                                  "regularization", low=0.0, high=1.0, high_open=True)
    batch_size: int = knob(128, "training batch size; the global batch of a data-parallel "
                           "trial, split evenly across its workers", "optimizer", low=1, high=65536,
                           unit="images")
    epochs: int = knob(12, "training epochs (the budget ASHA's max_t counts in)", "optimizer",
                       low=1, high=10000, unit="epochs")
    seed: int = knob(0, "seed of weights init, batch order and augmentation", "optimizer",
                     low=0, high=2**31 - 1)
    # -- learning-rate schedule -------------------------------------------------------------
    lr_schedule: str = knob("onecycle", "constant | step | exponential | plateau | cosine | "
                            "onecycle", "lr_schedule", choices=LR_SCHEDULES)
    step_size: int = knob(5, "epochs between decays of the step schedule", "lr_schedule", low=1,
                          high=10000, unit="epochs", when={"lr_schedule": ("step",)})
    gamma: float = knob(0.1, "decay factor: per step_size epochs (step) or per epoch "
                        "(exponential)", "lr_schedule", low=0.0, high=1.0, low_open=True,
                        when={"lr_schedule": ("step", "exponential")})
    plateau_factor: float = knob(0.1, "LR multiplier when val_loss stops improving",
                                 "lr_schedule", low=0.0, high=1.0, low_open=True, high_open=True,
                                 when={"lr_schedule": ("plateau",)})
    plateau_patience: int = knob(2, "epochs without val_loss improvement before a plateau decay",
                                 "lr_schedule", low=0, high=10000, unit="epochs",
                                 when={"lr_schedule": ("plateau",)})
    warmup_epochs: float = knob(0.0, "linear LR warm-up from lr/10 (onecycle: its rising "
                                "phase; 0 = onecycle's default 30%); may be fractional",
                                "lr_schedule", low=0.0, high=10000, unit="epochs")
    # -- augmentation (per image, independent random parameters) ----------------------------
    aug_crop: str = knob("pad_crop", "none | pad_crop (pad, then random crop back) | "
                         "random_resized_crop", "augmentation", choices=CROPS)
    aug_crop_padding: int = knob(2, "zero padding on each side before the random crop",
                                 "augmentation", low=0, high=256, unit="pixels",
                                 when={"aug_crop": ("pad_crop",)})
    aug_crop_scale_min: float = knob(0.35, "smallest area fraction random_resized_crop keeps",
                                     "augmentation", low=0.0, high=1.0, low_open=True,
                                     when={"aug_crop": ("random_resized_crop",)})
    aug_hflip: float = knob(0.0, "probability of a horizontal flip", "augmentation", low=0.0,
                            high=1.0, unit="probability")
    aug_vflip: float = knob(0.0, "probability of a vertical flip", "augmentation", low=0.0,
                            high=1.0, unit="probability")
    aug_rotation: float = knob(0.0, "maximum rotation, uniform in [-deg, +deg]", "augmentation",
                               low=0.0, high=180.0, unit="degrees")
    aug_color_jitter: float = knob(0.0, "brightness/contrast/saturation jitter strength s: "
                                   "factors uniform in [1-s, 1+s]", "augmentation", low=0.0,
                                   high=1.0)
    aug_random_erasing: float = knob(0.0, "probability of erasing one random rectangle",
                                     "augmentation", low=0.0, high=1.0, unit="probability")
    mixup_alpha: float = knob(0.0, "mixup Beta(alpha, alpha) (0 = off)", "augmentation",
                              low=0.0, high=10.0)
    cutmix_alpha: float = knob(0.0, "cutmix Beta(alpha, alpha) (0 = off; with mixup, one of the "
                               "two per batch)", "augmentation", low=0.0, high=10.0)
    # -- early stopping (within one trial; ASHA stops across trials) ------------------------
    early_stop_patience: int = knob(0, "stop after this many epochs without val_acc improving "
                                    "by early_stop_min_delta (0 = off)", "early_stopping",
                                    low=0, high=10000, unit="epochs")
    early_stop_min_delta: float = knob(0.0, "smallest val_acc gain that counts as improvement",
                                       "early_stopping", low=0.0, high=1.0,
                                       when={"early_stop_patience": "positive"})
    # -- transfer learning ------------------------------------------------------------------
    pretrained: str = knob("none", "none | a torchvision weights name (IMAGENET1K_V1, DEFAULT) | "
                           "path to a checkpoint.pt written by `cnn-tuner train`", "transfer")
    freeze: str = knob("none", "none | backbone (train the head only) | N (train the last N "
                       "backbone blocks and the head); needs pretrained", "transfer",
                       when={"pretrained": "not none"})
    backbone_lr_mult: float = knob(1.0, "backbone LR = lr x this (the head gets lr)", "transfer",
                                   low=0.0, high=100.0)
    # -- precision and speed ----------------------------------------------------------------
    precision: str = knob("auto", "auto (bf16 on CUDA where supported, else fp16; fp32 on CPU) "
                          "| fp32 | bf16 | fp16 (CUDA only, with GradScaler)", "precision",
                          choices=PRECISIONS)
    channels_last: bool = knob(False, "channels_last memory format for model and batches",
                               "precision")
    compile: bool = knob(False, "torch.compile the model (slow first epoch, faster after)",
                         "precision")

    # ---------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str | None = None) -> Recipe:
        """Build and validate; unknown keys, wrong types and out-of-range values are refused."""
        if not isinstance(values, dict):
            raise ConfigError(f"a recipe must be a mapping of knob: value, got "
                              f"{type(values).__name__}", where=where)
        unknown = sorted(set(values) - set(KNOBS))
        if unknown:
            raise ConfigError(f"unknown knob {unknown[0]!r}{_suggest(unknown[0])}; valid knobs: "
                              f"{', '.join(KNOBS)}", where=where)
        try:
            coerced = {name: KNOBS[name].coerce(v) for name, v in values.items()}
            recipe = cls(**coerced)
            recipe.validate()
        except ConfigError as e:
            if where:
                raise e.at(where) from None
            raise
        return recipe

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
        """Read a YAML recipe (safe_load only); ``overrides`` win over the file."""
        data = load_yaml_mapping(path, what="recipe")
        data.update(overrides or {})
        return cls.from_dict(data, where=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def replace(self, **changes: Any) -> Recipe:
        return Recipe.from_dict({**self.to_dict(), **changes})

    def validate(self) -> None:
        """Conditional rules between knobs (ranges are checked per knob in ``coerce``). Pure:
        whether the model and its weights exist is ``trainables.models.check_runnable``'s job."""
        if self.freeze != "none" and self.pretrained == "none":
            raise ConfigError(f"knob 'freeze': {self.freeze!r} needs 'pretrained' (weights to "
                              "keep frozen), but pretrained is 'none'")
        if self.freeze not in ("none", "backbone") and not (
                self.freeze.isdigit() and int(self.freeze) >= 0):
            raise ConfigError(f"knob 'freeze': must be none, backbone or a block count N >= 0, "
                              f"got {self.freeze!r}")
        if self.optimizer == "nesterov" and self.momentum == 0:
            raise ConfigError("knob 'momentum': nesterov needs momentum > 0, got 0")
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(f"knob 'warmup_epochs': must be < epochs ({self.epochs}), got "
                              f"{self.warmup_epochs}")
        if self.lr_schedule == "step" and self.step_size >= self.epochs:
            warnings.warn(f"knob 'step_size' ({self.step_size}) >= epochs ({self.epochs}): the "
                          "step schedule never decays the LR", stacklevel=2)
        if not self.batch_norm and self.pretrained != "none":
            warnings.warn("batch_norm: false with pretrained weights drops the pretrained "
                          "BatchNorm statistics", stacklevel=2)

    def check_device(self, device_type: str) -> None:
        """Rules that depend on where the recipe runs (called once the device is known)."""
        if self.precision == "fp16" and device_type != "cuda":
            raise ConfigError(f"knob 'precision': fp16 needs a CUDA device, but this run is on "
                              f"{device_type} (use bf16 or fp32, or give the run a GPU)")

    @property
    def data_key(self) -> tuple:
        """The knobs that decide the data splits; trials sharing them share one dataset."""
        return tuple(getattr(self, k) for k in DATA_KNOBS)


@dataclass(frozen=True)
class KnobSpec:
    """A knob's rule, read from its Recipe field."""

    name: str
    type: type
    default: Any
    doc: str
    family: str
    low: float | None
    high: float | None
    low_open: bool
    high_open: bool
    choices: tuple | None
    when: dict
    unit: str

    def range_text(self) -> str:
        if self.choices:
            return " | ".join(map(str, self.choices))
        if self.type is bool:
            return "true | false"
        if self.low is None and self.high is None:
            return "text"
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open or self.high is None else "]"
        return f"{lo}{_fmt(self.low)}, {_fmt(self.high) if self.high is not None else 'inf'}{hi}"

    def check_range(self, value: float) -> None:
        """Raise ConfigError if a number is outside this knob's valid range."""
        ok = not (isinstance(value, float) and math.isnan(value))
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if not ok:
            raise ConfigError(f"knob {self.name!r}: must be in {self.range_text()}, got {value!r}")

    def coerce(self, value: Any) -> Any:
        """Value as this knob's type, or ConfigError naming the knob, the rule and the value."""
        v = _to_type(self, value)
        if self.choices is not None and v not in self.choices:
            raise ConfigError(f"knob {self.name!r}: must be one of {self.range_text()}, got "
                              f"{value!r}")
        if self.type in (int, float):
            self.check_range(v)
        return v


def _to_type(spec: KnobSpec, value: Any) -> Any:
    name, t = spec.name, spec.type
    bad = ConfigError(f"knob {name!r}: expected {t.__name__} ({spec.range_text()}), got "
                      f"{type(value).__name__} {value!r}")
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy / torch scalars from samplers
    if t is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if isinstance(value, bool):
        raise bad
    if t is int:
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise bad
    if t is float:
        if isinstance(value, numbers.Real):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as text
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if t is str:
        if name == "freeze" and isinstance(value, numbers.Integral):
            return str(int(value))
        if isinstance(value, str):
            return value
        if value is None and name in ("pretrained", "freeze"):
            return "none"
        raise bad
    raise AssertionError(f"knob {name} has unsupported type {t}")


def _fmt(x: float | None) -> str:
    return "inf" if x is None else (str(int(x)) if float(x).is_integer() else str(x))


def _suggest(name: str) -> str:
    return did_you_mean(name, KNOBS)


def is_weights_name(value: str) -> bool:
    """True for torchvision weight enum names (IMAGENET1K_V1, DEFAULT), False for paths."""
    return bool(_WEIGHTS_NAME.match(value)) and not Path(value).exists()


def load_yaml_mapping(path: str | Path, *, what: str) -> dict[str, Any]:
    """safe_load a YAML file that must hold a mapping; errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file not found", where=str(p))
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or first_line(e)
        raise ConfigError(f"{line}invalid YAML ({problem})", where=str(p)) from None
    except UnicodeDecodeError:
        raise ConfigError("not a text (YAML) file", where=str(p)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"a {what} file must hold a mapping of knob: value, got "
                          f"{type(data).__name__}", where=str(p))
    return data


def _build_knobs() -> dict[str, KnobSpec]:
    types = {"str": str, "int": int, "float": float, "bool": bool}
    return {f.name: KnobSpec(name=f.name, type=types[f.type] if isinstance(f.type, str) else f.type,
                             default=f.default, **f.metadata)
            for f in dataclasses.fields(Recipe)}


KNOBS: dict[str, KnobSpec] = _build_knobs()
DATA_KNOBS = tuple(k for k, s in KNOBS.items() if s.family == "data")
