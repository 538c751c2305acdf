"""Small text files of an experiment (settings, results, summary) on a path or a URI.

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


def join(base: str, name: str) -> str:
    return f"{str(base).rstrip('/')}/{name}"


def _resolve(path: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(path):
        try:
            return pafs.FileSystem.from_uri(str(path))
        except (ValueError, OSError) as e:
            raise ConfigError(f"storage URI not usable ({e})", where=str(path)) from None
    return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def write_text(path: str, text: str) -> None:
    fs, p = _resolve(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def read_text(path: str) -> str | None:
    """The file's text, or None when it does not exist."""
    fs, p = _resolve(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(p) as f:
        return f.read().decode()
