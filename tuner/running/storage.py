"""Small files of an experiment (settings, results, summary, reports) on a path or a URI.

Ray Tune writes its experiment folder through pyarrow's file systems, so ``--storage s3://...``
works for trials; these helpers put cnn-tuner's own files beside Ray's the same way, with the
same credentials (the environment's, e.g. an instance profile or AWS_* variables).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

from trainables.errors import ConfigError


def is_uri(path: str) -> bool:
    return "://" in str(path)


def check_folder_target(path: str | Path, param: str) -> None:
    """Refuse a local output path that exists as a file (``param`` names the argument)."""
    if not is_uri(str(path)) and Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(f"{param}: {path} exists and is not a folder")


def join(base: str, name: str) -> str:
    return f"{str(base).rstrip('/')}/{name}"


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system of a local path or URI, and the path within it."""
    if is_uri(path):
        try:
            return pafs.FileSystem.from_uri(str(path))
        except (ValueError, OSError) as e:
            raise ConfigError(f"storage URI not usable ({e})", where=str(path)) from None
    return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def write_text(path: str, text: str) -> None:
    fs, p = filesystem(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def read_text(path: str) -> str | None:
    """The file's text, or None when it does not exist."""
    fs, p = filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def mirror_experiment(uri: str, local: Path, skip_top: tuple[str, ...] = ()) -> None:
    """Copy an experiment's small files from ``uri`` into ``local``: everything except Ray's
    checkpoint folders (``checkpoint_*``, the bulk of it) and the top-level entries named in
    ``skip_top``. ConfigError when there is no such folder."""
    fs, root = filesystem(uri)
    root = root.rstrip("/")
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except (FileNotFoundError, OSError) as e:
        raise ConfigError(f"no such experiment folder ({e})", where=str(uri)) from None
    copied = 0
    for info in infos:
        rel = info.path[len(root):].lstrip("/")
        parts = rel.split("/")
        if info.type != pafs.FileType.File or parts[0] in skip_top or any(
                part.startswith("checkpoint_") or part in ("", ".", "..") for part in parts):
            continue  # (an object key with ".." parts must not write outside `local`)
        dest = local.joinpath(*parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as f:
            dest.write_bytes(f.read())
        copied += 1
    if not copied:  # object stores have no folders: an unknown prefix lists nothing
        raise ConfigError("no such experiment folder (nothing there)", where=str(uri))


def upload_dir(local: Path, uri: str) -> None:
    """Copy the folder ``local`` (recursively) to ``uri``."""
    fs, root = filesystem(uri)
    fs.create_dir(root, recursive=True)
    pafs.copy_files(str(local), root, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
