"""Dataset files in torchvision's on-disk layouts and ImageFolder trees, read into numpy arrays.

A ``data_dir`` filled by torchvision (or by ``download: true``, which calls torchvision) works
as is. Nothing touches the network unless ``download`` is true; a file lock makes the trials of
one node download once. User files are untrusted: CIFAR pickles go through an unpickler that only
rebuilds numpy arrays, and every unreadable file is a ``ConfigError`` naming that file.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainables.errors import ConfigError, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class RawData:
    """What a loader returns: native-size numpy arrays; a split left None is carved from train."""

    classes: list[str]
    train_x: np.ndarray  # uint8 (N, C, H, W)
    train_y: np.ndarray  # int64 (N,)
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None
    val_x: np.ndarray | None = None
    val_y: np.ndarray | None = None


# -- files in torchvision's layouts ---------------------------------------------------------------

def _ensure_files(folder: Path, files: list[str], *, name: str, root: Path, download: bool,
                  fetch: Callable[[], Any], present: Callable[[Path, str], bool],
                  note: str = "") -> None:
    """Download with torchvision if asked and needed, else refuse naming the missing files.

    A file lock in ``root`` makes concurrent trials on one node download once; the others wait
    and then find the files.
    """
    def missing() -> list[str]:
        return [f for f in files if not present(folder, f)]

    if missing() and download:
        from filelock import FileLock

        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / f".{name}.download.lock")):
            if missing():
                try:
                    fetch()
                except (OSError, RuntimeError) as e:
                    raise ConfigError(f"downloading {name} failed ({first_line(e)}); check the "
                                      "network or put the files there yourself",
                                      where=str(folder)) from None
    lacking = missing()
    if lacking:
        raise ConfigError(f"{name} files not found: expected {', '.join(lacking)}{note} in this "
                          "directory; set `download: true` (--set download=true) to fetch them",
                          where=str(folder))


_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_CLASSES = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five",
                  "6 - six", "7 - seven", "8 - eight", "9 - nine"]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                    "Sneaker", "Bag", "Ankle boot"]


def _idx_path(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an idx file of uint8 (magic 0x0801 labels, 0x0803 images), optionally gzipped."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ConfigError(f"cannot read idx file ({e})", where=str(path)) from None
    magic = 0x0800 | ndim
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise ConfigError(f"not an idx file of uint8 with {ndim} dimension(s): expected magic "
                          f"number {magic}, got {int.from_bytes(raw[:4], 'big')}", where=str(path))
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != int(np.prod(dims)):
        raise ConfigError(f"truncated or garbled idx file: header says {dims} = "
                          f"{int(np.prod(dims))} bytes of data, file holds {len(raw) - header}",
                          where=str(path))
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _checked_labels(labels: np.ndarray, n: int, num_classes: int, where: Path) -> np.ndarray:
    try:
        y = np.asarray(labels).astype(np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise ConfigError("labels must be integers", where=str(where)) from None
    if len(y) != n:
        raise ConfigError(f"{len(y)} labels for {n} images", where=str(where))
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ConfigError(f"labels must be in [0, {num_classes}), got {y.min()}..{y.max()}",
                          where=str(where))
    return y


def load_idx_dataset(root: Path, download: bool, key: str, tv_name: str,
                      classes: list[str]) -> RawData:
    folder = root / tv_name / "raw"

    def fetch() -> None:
        import torchvision.datasets as tvd

        getattr(tvd, tv_name)(str(root), train=True, download=True)

    _ensure_files(folder, list(_IDX_FILES), name=key, root=root, download=download, fetch=fetch,
                  present=lambda d, f: _idx_path(d, f) is not None, note=" (each may be .gz)")
    arrays = {}
    for prefix in ("train", "t10k"):
        img_path = _idx_path(folder, f"{prefix}-images-idx3-ubyte")
        lbl_path = _idx_path(folder, f"{prefix}-labels-idx1-ubyte")
        assert img_path is not None and lbl_path is not None
        x = _read_idx(img_path, 3)[:, None]
        arrays[prefix] = (x, _checked_labels(_read_idx(lbl_path, 1), len(x), len(classes),
                                             lbl_path))
    return RawData(classes=list(classes), train_x=arrays["train"][0], train_y=arrays["train"][1],
                test_x=arrays["t10k"][0], test_y=arrays["t10k"][1])


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """The one use of ``_codecs.encode`` in protocol-2 pickles: bytes written by Python 3."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """Rebuilds only numpy arrays (plus dicts, lists, numbers, strings, which need no globals).

    A pickle can call any importable function while it loads; a CIFAR batch needs none but
    numpy's array reconstruction, so anything else is refused before it can run.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # latin1: Python 2 numpy pickles need it
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise ConfigError(f"refused to unpickle {module}.{name}: a CIFAR batch holds only numpy "
                          "arrays, lists and strings (file tampered with or not CIFAR)",
                          where=str(self.path))


def _unpickle_cifar(path: Path) -> dict[str, Any]:
    """Load one CIFAR pickle safely; keys come back as str whatever protocol wrote them."""
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, path).load()  # type: ignore[arg-type]
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - a garbled pickle can raise almost anything
        raise ConfigError(f"truncated or garbled CIFAR pickle ({type(e).__name__}: "
                          f"{first_line(e) if str(e) else ''})", where=str(path)) from None
    if not isinstance(obj, dict):
        raise ConfigError(f"a CIFAR file holds a dict, got {type(obj).__name__}", where=str(path))
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _field(entry: dict[str, Any], key: str, path: Path) -> Any:
    if key not in entry:
        raise ConfigError(f"CIFAR file lacks the {key!r} entry (has {sorted(entry)})",
                          where=str(path))
    return entry[key]


def _read_cifar_batches(folder: Path, files: list[str], label_key: str,
                        num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in files:
        path = folder / name
        entry = _unpickle_cifar(path)
        data = _field(entry, "data", path)
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == 3 * 32 * 32):
            raise ConfigError(f"'data' must be a uint8 array of shape (N, 3072), got "
                              f"{getattr(data, 'dtype', type(data).__name__)} "
                              f"{getattr(data, 'shape', '')}", where=str(path))
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(_checked_labels(_field(entry, label_key, path), len(data), num_classes, path))
    return np.concatenate(xs), np.concatenate(ys)


def _label_names(folder: Path, meta: str, key: str) -> list[str]:
    path = folder / meta
    names = _field(_unpickle_cifar(path), key, path)
    if not isinstance(names, list | tuple) or not names:
        raise ConfigError(f"{key!r} must be a non-empty list of names", where=str(path))
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def load_cifar(root: Path, download: bool, *, key: str, subdir: str, tv_name: str,
                train: list[str], test: str, meta: str, names_key: str,
                label_key: str) -> RawData:
    folder = root / subdir

    def fetch() -> None:
        import torchvision.datasets as tvd

        getattr(tvd, tv_name)(str(root), train=True, download=True)

    _ensure_files(folder, [*train, test, meta], name=key, root=root, download=download,
                  fetch=fetch, present=lambda d, f: (d / f).is_file())
    classes = _label_names(folder, meta, names_key)
    train_x, train_y = _read_cifar_batches(folder, train, label_key, len(classes))
    test_x, test_y = _read_cifar_batches(folder, [test], label_key, len(classes))
    return RawData(classes=classes, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)


# -- image folders ------------------------------------------------------------------------------

def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _decode(path: Path, size: int) -> np.ndarray:
    """RGB uint8 (3, size, size): shorter side resized to ``size``, then centre-cropped."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
            if (new_w, new_h) != (w, h):
                im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
            left, top = (new_w - size) // 2, (new_h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ConfigError(f"cannot decode image ({type(e).__name__}: {first_line(e)})",
                          where=str(path)) from None


def _read_image_classes(folder: Path, classes: list[str],
                        size: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    if not _class_dirs(folder):
        raise ConfigError("no class subfolders (expected <class>/<image> folders, one per "
                          "class)", where=str(folder))
    for class_dir in _class_dirs(folder):
        if class_dir.name not in classes:
            raise ConfigError(f"class folder {class_dir.name!r} is not among the training "
                              f"classes ({', '.join(classes)})", where=str(folder))
        files = sorted(p for p in class_dir.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ConfigError(f"class folder holds no images (extensions "
                              f"{', '.join(IMAGE_EXTENSIONS)})", where=str(class_dir))
        xs += [_decode(p, size) for p in files]
        ys += [classes.index(class_dir.name)] * len(files)
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def load_imagefolder(root: Path, image_size: int) -> RawData:
    """``root/<class>/<image>``, or ``root/{train,test[,val]}/<class>/<image>`` for fixed splits.

    Images become RGB whatever their mode, so grey and RGBA files can be mixed.
    """
    if not root.is_dir():
        raise ConfigError("image folder not found (expected <data_dir>/<class>/<image> or "
                          "<data_dir>/{train,test,val}/<class>/<image>)", where=str(root))
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    train_dir = root / "train" if has_splits else root
    classes = [p.name for p in _class_dirs(train_dir)]
    if not classes:
        raise ConfigError("no class subfolders (expected <class>/<image> folders, one per "
                          "class)", where=str(train_dir))
    train_x, train_y = _read_image_classes(train_dir, classes, image_size)
    raw = RawData(classes=classes, train_x=train_x, train_y=train_y)
    if has_splits:
        raw.test_x, raw.test_y = _read_image_classes(root / "test", classes, image_size)
        if (root / "val").is_dir():
            raw.val_x, raw.val_y = _read_image_classes(root / "val", classes, image_size)
    return raw
