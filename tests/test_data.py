"""Dataset registry: real files in torchvision's on-disk formats, written small into tmp_path."""

from __future__ import annotations

import gzip
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from trainables import recipe
from trainables.data import _LOADERS, DataSplits, list_datasets, load_data
from trainables.errors import ConfigError

SPLITS = ("train", "val", "test")


def rows(x: torch.Tensor) -> list[bytes]:
    return [r.numpy().tobytes() for r in x]


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_data("digits")


# -- registry --------------------------------------------------------------------------------------

def test_registry_matches_the_recipe_choices():
    assert list_datasets() == sorted(recipe.DATASETS)
    assert set(_LOADERS) == set(recipe.DATASETS)  # a loader for every name, no other


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(ConfigError) as e:
        load_data("imagenet")
    msg = str(e.value)
    assert "imagenet" in msg and "\n" not in msg
    assert all(name in msg for name in recipe.DATASETS)


@pytest.mark.parametrize("kwargs", [{"val_fraction": 0.0}, {"val_fraction": 1.2},
                                    {"image_size": 0}, {"split_seed": -1}])
def test_bad_arguments_are_config_errors(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        load_data("digits", **kwargs)


# -- digits --------------------------------------------------------------------------------------

def test_digits_shapes_dtypes_and_split_sizes(digits):
    n = 1797
    assert digits.name == "digits" and digits.num_classes == 10 and len(digits.classes) == 10
    assert digits.in_channels == 1 and digits.image_size == 32
    for s in SPLITS:
        x, y = getattr(digits, f"{s}_x"), getattr(digits, f"{s}_y")
        assert x.dtype == torch.uint8 and x.is_contiguous() and x.shape[1:] == (1, 32, 32)
        assert y.dtype == torch.int64 and y.shape == (len(x),)
        assert set(y.tolist()) == set(range(10))  # stratified: every class in every split
    assert len(digits.train_y) + len(digits.val_y) + len(digits.test_y) == n
    assert len(digits.test_y) == round(0.2 * n)
    rest = n - len(digits.test_y)
    assert len(digits.val_y) == round(0.1 * rest)
    assert int(digits.train_x.max()) > 200  # 0..16 scaled to 0..255, not left at 0..16


def test_digits_mean_std_are_the_train_split_statistics(digits):
    x = digits.train_x.double() / 255
    assert digits.mean[0] == pytest.approx(x.mean().item(), rel=1e-6)
    assert digits.std[0] == pytest.approx(x.std(unbiased=False).item(), rel=1e-6)


def test_digits_splits_partition_the_source_exactly():
    # At the native 8x8 nothing is resized, so every split row is a source row.
    d = load_data("digits", image_size=8)
    source = np.rint(load_digits().images * 255 / 16).astype(np.uint8)
    got = Counter(rows(d.train_x)) + Counter(rows(d.val_x)) + Counter(rows(d.test_x))
    assert got == Counter(r.tobytes() for r in source[:, None])


def test_digits_splits_do_not_overlap(digits):
    hashes = {s: set(rows(getattr(digits, f"{s}_x"))) for s in SPLITS}
    assert not hashes["train"] & hashes["val"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["val"] & hashes["test"]


def test_same_seed_same_splits_other_seed_other_splits(digits):
    again = load_data("digits")
    for s in SPLITS:
        assert torch.equal(getattr(again, f"{s}_x"), getattr(digits, f"{s}_x"))
        assert torch.equal(getattr(again, f"{s}_y"), getattr(digits, f"{s}_y"))
    other = load_data("digits", split_seed=1)
    assert set(rows(other.test_x)) != set(rows(digits.test_x))
    assert set(rows(other.val_x)) != set(rows(digits.val_x))


def test_val_fraction_is_honoured_per_class():
    d = load_data("digits", val_fraction=0.3)
    rest = len(d.train_y) + len(d.val_y)
    assert len(d.val_y) == round(0.3 * rest)
    per_class = torch.bincount(d.val_y, minlength=10) / torch.bincount(
        torch.cat([d.train_y, d.val_y]), minlength=10)
    assert per_class.min() > 0.27 and per_class.max() < 0.33


def test_image_size_is_honoured(digits):
    d = load_data("digits", image_size=16)
    assert d.train_x.shape[1:] == (1, 16, 16) and d.image_size == 16
    # Same split, only resized: the labels are the ones of the 32x32 load.
    assert torch.equal(d.test_y, digits.test_y)


def test_to_returns_a_new_object(digits):
    moved = digits.to("cpu")
    assert moved is not digits and torch.equal(moved.train_x, digits.train_x)
    assert moved.classes == digits.classes and moved.mean == digits.mean


# -- synthetic -----------------------------------------------------------------------------------

def test_synthetic_is_seeded_and_learnable():
    d = load_data("synthetic", image_size=16, split_seed=3)
    assert d.in_channels == 3 and d.image_size == 16 and d.num_classes == 10
    assert len(d.train_y) + len(d.val_y) == 1000 and len(d.test_y) == 200
    assert torch.equal(load_data("synthetic", image_size=16, split_seed=3).train_x, d.train_x)
    assert not torch.equal(load_data("synthetic", image_size=16, split_seed=4).train_x, d.train_x)
    # A nearest-class-mean classifier fitted on train must do far better than chance (10%).
    flat = d.train_x.flatten(1).float()
    means = torch.stack([flat[d.train_y == c].mean(0) for c in range(10)])
    pred = torch.cdist(d.test_x.flatten(1).float(), means).argmin(1)
    assert (pred == d.test_y).float().mean() > 0.9


# -- MNIST / FashionMNIST idx files ----------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def make_idx_dataset(root: Path, folder: str, gz: bool = False, n_train: int = 50,
                     n_test: int = 20) -> dict[str, np.ndarray]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}_x"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}_y"] = np.arange(n, dtype=np.uint8) % 10
        write_idx(raw / f"{prefix}-images-idx3-ubyte", arrays[f"{prefix}_x"], gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", arrays[f"{prefix}_y"], gz)
    return arrays


@pytest.mark.parametrize("name,folder,gz", [("mnist", "MNIST", False),
                                            ("fashion_mnist", "FashionMNIST", True)])
def test_idx_datasets_load_with_official_test_split(tmp_path, name, folder, gz):
    arrays = make_idx_dataset(tmp_path, folder, gz)
    d = load_data(name, data_dir=str(tmp_path), image_size=28)
    assert d.num_classes == 10 and d.in_channels == 1
    assert torch.equal(d.test_x[:, 0], torch.from_numpy(arrays["t10k_x"]))
    assert torch.equal(d.test_y, torch.from_numpy(arrays["t10k_y"].astype(np.int64)))
    assert len(d.val_y) == 5 and len(d.train_y) == 45
    source = Counter(r.tobytes() for r in arrays["train_x"][:, None])
    assert Counter(rows(d.train_x)) + Counter(rows(d.val_x)) == source
    resized = load_data(name, data_dir=str(tmp_path))  # 28 -> the default 32
    assert resized.train_x.shape[1:] == (1, 32, 32) and resized.train_x.dtype == torch.uint8


def test_download_true_with_files_present_reads_them_offline(tmp_path):
    make_idx_dataset(tmp_path, "MNIST")
    d = load_data("mnist", data_dir=str(tmp_path), download=True)
    assert len(d.test_y) == 20


def test_truncated_idx_file_is_named(tmp_path):
    make_idx_dataset(tmp_path, "MNIST")
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ConfigError, match="truncated") as e:
        load_data("mnist", data_dir=str(tmp_path))
    assert str(path) in str(e.value)


# -- CIFAR pickles -------------------------------------------------------------------------------

def dump(path: Path, obj: object, protocol: int) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def cifar_batch(n: int, label_key: bytes, num_classes: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"fake", label_key: [i % num_classes for i in range(n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"img%d.png" % i for i in range(n)]}


def make_cifar10(root: Path, protocol: int = 2) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    dump(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 10,
                                   b"num_vis": 3072}, protocol)
    for i in range(1, 6):
        dump(folder / f"data_batch_{i}", cifar_batch(10, b"labels", 10, i), protocol)
    test = cifar_batch(20, b"labels", 10, 99)
    dump(folder / "test_batch", test, protocol)
    return test


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_from_pickled_batches(tmp_path, protocol):
    test = make_cifar10(tmp_path, protocol)
    d = load_data("cifar10", data_dir=str(tmp_path), val_fraction=0.2)
    assert d.classes[0] == "airplane" and d.num_classes == 10 and d.in_channels == 3
    assert len(d.train_y) == 40 and len(d.val_y) == 10
    assert torch.equal(d.test_x, torch.from_numpy(test[b"data"].reshape(-1, 3, 32, 32)))
    assert d.test_y.tolist() == test[b"labels"]
    assert d.train_x.is_contiguous() and d.train_x.dtype == torch.uint8


def test_cifar100_from_pickled_files(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    dump(folder / "meta", {b"fine_label_names": [b"c%d" % i for i in range(100)],
                           b"coarse_label_names": [b"s%d" % i for i in range(20)]}, 2)
    dump(folder / "train", cifar_batch(200, b"fine_labels", 100, 1), 2)
    test = cifar_batch(20, b"fine_labels", 100, 2)
    dump(folder / "test", test, 2)
    d = load_data("cifar100", data_dir=str(tmp_path), image_size=16)
    assert d.num_classes == 100 and d.classes[99] == "c99"
    assert d.test_x.shape == (20, 3, 16, 16) and d.test_y.tolist() == test[b"fine_labels"]
    assert len(d.train_y) == 180 and len(d.val_y) == 20


@pytest.mark.parametrize("name,where,expected", [
    ("mnist", "MNIST/raw", "train-images-idx3-ubyte"),
    ("fashion_mnist", "FashionMNIST/raw", "t10k-labels-idx1-ubyte"),
    ("cifar10", "cifar-10-batches-py", "data_batch_5"),
    ("cifar100", "cifar-100-python", "meta"),
])
def test_missing_files_name_directory_files_and_download(tmp_path, name, where, expected):
    with pytest.raises(ConfigError) as e:
        load_data(name, data_dir=str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / where) in msg and expected in msg
    assert "download: true" in msg and "\n" not in msg
    assert not (tmp_path / "nowhere").exists()  # nothing created without download


class Payload:
    """Runs a shell command when unpickled by a trusting loader."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_cifar_pickle_is_refused_before_it_runs(tmp_path):
    make_cifar10(tmp_path)
    # Control: the payload is live, a plain pickle.load runs it.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.exists()

    marker = tmp_path / "pwned"
    evil = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    dump(evil, {b"data": Payload(marker), b"labels": []}, 2)
    with pytest.raises(ConfigError, match="refused") as e:
        load_data("cifar10", data_dir=str(tmp_path))
    assert str(evil) in str(e.value) and "system" in str(e.value)
    assert not marker.exists()


def test_truncated_cifar_pickle_is_named(tmp_path):
    make_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ConfigError, match="truncated or garbled") as e:
        load_data("cifar10", data_dir=str(tmp_path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


# -- image folders --------------------------------------------------------------------------------

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def write_class_images(folder: Path, n: int) -> None:
    """Per class n solid-colour PNGs of mixed sizes and modes (RGB, grey-convertible RGBA)."""
    for name, colour in COLOURS.items():
        (folder / name).mkdir(parents=True)
        for i in range(n):
            size = (40, 24) if i % 2 else (20, 30)
            img = Image.new("RGB", size, colour)
            (img.convert("RGBA") if i % 3 == 0 else img).save(folder / name / f"{i}.png")


def test_imagefolder_single_folder_is_split_and_decoded(tmp_path):
    write_class_images(tmp_path, 10)
    (tmp_path / "red" / "notes.txt").write_text("not an image")  # ignored
    d = load_data("imagefolder", data_dir=str(tmp_path), image_size=16)
    assert d.classes == sorted(COLOURS) and d.in_channels == 3 and d.image_size == 16
    assert len(d.test_y) == 6 and len(d.train_y) + len(d.val_y) == 24 and len(d.val_y) == 2
    for s in SPLITS:
        x, y = getattr(d, f"{s}_x"), getattr(d, f"{s}_y")
        for img, label in zip(x, y, strict=True):
            colour = torch.tensor(COLOURS[d.classes[label]], dtype=torch.uint8)
            assert torch.equal(img, colour.view(3, 1, 1).expand(3, 16, 16))
    assert torch.equal(load_data("imagefolder", data_dir=str(tmp_path), image_size=16).val_y,
                       d.val_y)


def test_imagefolder_resizes_shorter_side_then_centre_crops(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    img = np.zeros((20, 60, 3), dtype=np.uint8)  # 60 wide, 20 high: black borders, white middle
    img[:, 10:50] = 255
    for cls in ("a", "b"):
        for i in range(5):
            Image.fromarray(img).save(tmp_path / cls / f"{i}.png")
    for size in (20, 10):
        d = load_data("imagefolder", data_dir=str(tmp_path), image_size=size, val_fraction=0.2)
        assert d.train_x.shape[1:] == (3, size, size)
        assert bool((d.train_x == 255).all())  # the black borders were cropped away


def test_imagefolder_with_train_test_val_folders(tmp_path):
    write_class_images(tmp_path / "train", 6)
    write_class_images(tmp_path / "test", 2)
    d = load_data("imagefolder", data_dir=str(tmp_path), image_size=8, val_fraction=1 / 6)
    assert len(d.test_y) == 6 and len(d.val_y) == 3 and len(d.train_y) == 15
    write_class_images(tmp_path / "val", 1)
    d = load_data("imagefolder", data_dir=str(tmp_path), image_size=8)
    assert len(d.test_y) == 6 and len(d.val_y) == 3 and len(d.train_y) == 18


def test_imagefolder_errors_name_the_place(tmp_path):
    with pytest.raises(ConfigError, match="not found") as e:
        load_data("imagefolder", data_dir=str(tmp_path / "absent"))
    assert str(tmp_path / "absent") in str(e.value)

    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"")
    with pytest.raises(ConfigError, match="no class subfolders"):
        load_data("imagefolder", data_dir=str(tmp_path / "flat"))

    write_class_images(tmp_path / "ok", 3)
    (tmp_path / "ok" / "empty").mkdir()
    (tmp_path / "ok" / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ConfigError, match="no images") as e:
        load_data("imagefolder", data_dir=str(tmp_path / "ok"))
    assert str(tmp_path / "ok" / "empty") in str(e.value)

    (tmp_path / "ok" / "empty" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ConfigError, match="cannot decode") as e:
        load_data("imagefolder", data_dir=str(tmp_path / "ok"))
    assert str(tmp_path / "ok" / "empty" / "broken.png") in str(e.value)
    assert "\n" not in str(e.value)
