"""Dataset registry: every dataset becomes uint8 tensors in memory, split train / val / test.

Whole datasets live in memory as uint8 (N, C, H, W) so the training loop can move them to the
GPU once and augment whole batches there, instead of decoding and transforming per sample in
DataLoader workers. uint8 keeps that four times smaller than float32.

Files are read from the layouts torchvision writes, so a ``data_dir`` filled by torchvision (or
by ``download: true``, which calls torchvision) works as is. Nothing touches the network unless
``download`` is true. User files are untrusted: CIFAR pickles go through an unpickler that only
rebuilds numpy arrays, and every unreadable file is a ``ConfigError`` naming that file.

Splits are stratified and seeded by ``split_seed`` alone, so every trial of a search sees the
same validation set and val_acc is comparable across trials.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainables.dataset_files import (
    FASHION_CLASSES,
    MNIST_CLASSES,
    RawData,
    load_cifar,
    load_idx_dataset,
    load_imagefolder,
)
from trainables.errors import ConfigError
from trainables.recipe import DATASETS, KNOBS

TEST_FRACTION = 0.2  # held-out test share for datasets without an official test split
_CHUNK_ELEMENTS = 1 << 22  # float work is done in chunks of ~4M values (16 MB) to bound memory


@dataclass
class DataSplits:
    """Three disjoint splits as uint8 (N, C, H, W) images and int64 (N,) labels.

    ``mean`` / ``std`` are per channel, over the train split, in [0, 1] units: the loop
    normalises with ``(x / 255 - mean) / std``. ``std`` is floored at 1/255 so a constant
    channel never divides by zero.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def to(self, device: torch.device | str) -> DataSplits:
        """A new DataSplits with every tensor on ``device`` (this one is left as it was)."""
        moved = {f: getattr(self, f).to(device) for f in
                 ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return dataclasses.replace(self, classes=list(self.classes), **moved)


Loader = Callable[..., RawData]  # loader(root: Path, *, download: bool, image_size: int, seed: int)
_LOADERS: dict[str, Loader] = {}  # one per name of trainables.recipe.DATASETS (the one list)


def _register(name: str) -> Callable[[Loader], Loader]:
    assert name in DATASETS, f"{name!r}: add it to trainables.recipe.DATASETS"  # internal

    def add(fn: Loader) -> Loader:
        _LOADERS[name] = fn
        return fn
    return add


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def load_data(dataset: str, *, data_dir: str = "data", download: bool = False,
              val_fraction: float = 0.1, image_size: int = 32, split_seed: int = 0) -> DataSplits:
    """Load ``dataset`` into memory and split it; the same arguments give the same tensors.

    Official test splits are kept; datasets without one (digits, a single image folder) hold out
    20% as test. ``val_fraction`` of what remains for training becomes the validation split.
    Images are resized to ``image_size`` squares (bilinear, antialiased when shrinking).
    """
    # the rules are the Recipe knobs': one place for every name and range
    for name, value in (("dataset", dataset), ("val_fraction", val_fraction),
                        ("image_size", image_size), ("split_seed", split_seed)):
        KNOBS[name].coerce(value)

    raw = _LOADERS[dataset](Path(data_dir), download=download, image_size=image_size,
                            seed=split_seed)
    # Independent streams: changing how val is carved never changes the test split.
    tr_x, tr_y = raw.train_x, raw.train_y
    if raw.test_x is None:
        keep, held = _stratified_split(tr_y, TEST_FRACTION, [split_seed, 0], what="test")
        raw.test_x, raw.test_y = tr_x[held], tr_y[held]
        tr_x, tr_y = tr_x[keep], tr_y[keep]
    if raw.val_x is None:
        keep, held = _stratified_split(tr_y, val_fraction, [split_seed, 1], what="validation")
        raw.val_x, raw.val_y = tr_x[held], tr_y[held]
        tr_x, tr_y = tr_x[keep], tr_y[keep]
    assert raw.test_y is not None and raw.val_y is not None

    train_x = _to_tensor(tr_x, image_size)
    mean, std = _channel_stats(train_x)
    return DataSplits(
        name=dataset,
        train_x=train_x, train_y=_labels(tr_y),
        val_x=_to_tensor(raw.val_x, image_size), val_y=_labels(raw.val_y),
        test_x=_to_tensor(raw.test_x, image_size), test_y=_labels(raw.test_y),
        num_classes=len(raw.classes), classes=list(raw.classes), mean=mean, std=std)


# -- splitting, resizing, statistics ------------------------------------------------------------

def load_recipe_data(recipe: Any) -> DataSplits:
    """The splits a Recipe's data knobs name (dataset, data_dir, download, val_fraction,
    image_size, split_seed)."""
    return load_data(recipe.dataset, data_dir=recipe.data_dir, download=recipe.download,
                     val_fraction=recipe.val_fraction, image_size=recipe.image_size,
                     split_seed=recipe.split_seed)


def _stratified_split(y: np.ndarray, fraction: float, seed: list[int],
                      what: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (keep, held) indices with ``fraction`` of every class held out.

    Each class gives floor(fraction * count) samples; the few left to reach
    round(fraction * N) go to the classes with the largest remainders (ties broken at random).
    Written out rather than sklearn's so tiny datasets (fewer samples than classes) still split.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    n_held = round(fraction * len(y))
    if n_held == 0 or n_held == len(y):
        knob = "val_fraction" if what == "validation" else "test fraction"
        raise ConfigError(f"{knob} {fraction} of {len(y)} images leaves an empty {what} or "
                          "training split; add images or change the fraction")
    exact = counts * fraction
    quota = np.floor(exact).astype(np.int64)
    order = rng.permutation(len(classes))
    order = order[np.argsort(-(exact - quota)[order], kind="stable")]
    quota[order[: n_held - int(quota.sum())]] += 1
    held = [rng.permutation(np.flatnonzero(y == c))[:q]
            for c, q in zip(classes, quota, strict=True)]
    held_idx = np.sort(np.concatenate(held))
    keep_idx = np.setdiff1d(np.arange(len(y)), held_idx, assume_unique=True)
    return keep_idx, held_idx


def _chunk(per_item: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, per_item))


def _to_tensor(x: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, C, size, size) contiguous tensor; bilinear resize (antialiased when shrinking)."""
    a = np.ascontiguousarray(x, dtype=np.uint8)
    t = torch.from_numpy(a if a.flags.writeable else a.copy())  # idx bytes are read-only
    n, c, h, w = t.shape
    if (h, w) == (size, size):
        return t.clone() if not t.is_contiguous() else t
    out = torch.empty((n, c, size, size), dtype=torch.uint8)
    step = _chunk(c * max(h * w, size * size))
    for i in range(0, n, step):
        f = F.interpolate(t[i:i + step].float(), size=(size, size), mode="bilinear",
                          align_corners=False, antialias=size < min(h, w))
        out[i:i + step] = f.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _labels(y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, in float64 chunks."""
    n, c, h, w = x.shape
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for part in x.split(_chunk(c * h * w)):
        f = part.to(torch.float64) / 255.0
        total += f.sum(dim=(0, 2, 3))
        squares += f.square().sum(dim=(0, 2, 3))
    count = max(1, n * h * w)
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1 / 255)
    return tuple(mean.tolist()), tuple(std.tolist())


# -- digits and synthetic (no files) -------------------------------------------------------------

@_register("digits")
def _digits(root: Path, *, download: bool, image_size: int, seed: int) -> RawData:
    """scikit-learn's 1,797 8x8 scans (values 0..16), scaled to 0..255; ships with sklearn."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    return RawData(classes=[str(c) for c in bunch.target_names], train_x=x,
                train_y=bunch.target.astype(np.int64))


@_register("synthetic")
def _synthetic(root: Path, *, download: bool, image_size: int, seed: int) -> RawData:
    """10 classes, each a smooth random colour pattern plus per-image noise: learnable, seeded.

    1,000 train+val and 200 test images, balanced. For smoke tests that need no files.
    """
    num_classes, n_train, n_test = 10, 1000, 200
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=g)
    patterns = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear",
                             align_corners=False)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        noise = 0.15 * torch.randn(n, 3, image_size, image_size, generator=g)
        x = (0.2 + 0.6 * patterns[y] + noise).clamp(0, 1).mul(255).round().to(torch.uint8)
        return x.numpy(), y.numpy().astype(np.int64)

    train_x, train_y = make(n_train)
    test_x, test_y = make(n_test)
    return RawData(classes=[f"class_{i}" for i in range(num_classes)], train_x=train_x,
                train_y=train_y, test_x=test_x, test_y=test_y)


# -- datasets read from files (trainables.dataset_files) -------------------------------

@_register("mnist")
def _mnist(root: Path, *, download: bool, image_size: int, seed: int) -> RawData:
    return load_idx_dataset(root, download, "mnist", "MNIST", MNIST_CLASSES)


@_register("fashion_mnist")
def _fashion_mnist(root: Path, *, download: bool, image_size: int, seed: int) -> RawData:
    return load_idx_dataset(root, download, "fashion_mnist", "FashionMNIST", FASHION_CLASSES)


@_register("cifar10")
def _cifar10(root: Path, *, download: bool, image_size: int, seed: int) -> RawData:
    return load_cifar(root, download, key="cifar10", subdir="cifar-10-batches-py",
                       tv_name="CIFAR10", train=[f"data_batch_{i}" for i in range(1, 6)],
                       test="test_batch", meta="batches.meta", names_key="label_names",
                       label_key="labels")


@_register("cifar100")
def _cifar100(root: Path, *, download: bool, image_size: int, seed: int) -> RawData:
    return load_cifar(root, download, key="cifar100", subdir="cifar-100-python",
                       tv_name="CIFAR100", train=["train"], test="test", meta="meta",
                       names_key="fine_label_names", label_key="fine_labels")


@_register("imagefolder")
def _imagefolder(root: Path, *, download: bool, image_size: int, seed: int) -> RawData:
    return load_imagefolder(root, image_size)


assert set(_LOADERS) == set(DATASETS), "every dataset name needs a loader"  # internal invariant
