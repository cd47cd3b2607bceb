"""Atomic file writes, shared by every package that writes results, caches or checkpoints.

A file is written to a temporary file in the same folder, flushed to disk and moved into place
with ``os.replace``, so a process killed at any moment leaves the old file or the new one,
never a torn one. Files get the permissions the user's umask gives a newly created file (as
``open()`` would), whichever writer made them.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "default_file_mode",
           "file_sha256"]

_SHA256_CACHE: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content, remembered per (path, size, modification time) so that a
    process hashes each large weight file once."""
    import hashlib

    path = os.path.abspath(os.fspath(path))
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _SHA256_CACHE[key] = digest.hexdigest()
    return _SHA256_CACHE[key]


def read_text(path: str | os.PathLike) -> str:
    """A text file the user wrote (a list, a split, class names) as UTF-8, a leading BOM dropped.
    Another encoding (Latin-1 / cp1252, as spreadsheet programs save) or binary bytes is a
    :class:`~mudpt.core.errors.CorruptFileError` naming the file, the line and what is expected."""
    from mudpt.core.errors import CorruptFileError

    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise CorruptFileError(
            f"{path}, line {line}: byte 0x{data[error.start]:02x} is not UTF-8 text; the file must be saved as "
            "UTF-8 (a spreadsheet program's 'CSV UTF-8'; `iconv -f cp1252 -t utf-8` converts a Windows / Latin-1 "
            "file)") from None


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file under this process's umask."""
    return 0o666 & ~_UMASK


def not_there(path: str | os.PathLike, expected: str = "file") -> str:
    """Why ``path`` is not the ``expected`` kind ("file" or "folder"): it does not exist, or it is
    the other kind (a folder given for a file is not "not found")."""
    path = Path(path)
    if expected == "file" and path.is_dir():
        return f"{path} is a folder, not a file"
    if expected == "folder" and path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder"
    return f"{path} does not exist"


def make_dir(path: str | os.PathLike, what: str = "") -> Path:
    """``mkdir -p``; a place that cannot be a folder or written is an
    :class:`~mudpt.core.errors.UnwritableError` naming it (``what``: "the output folder", ...)."""
    from mudpt.core.errors import unwritable

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise unwritable(path, error, what) from None
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], mode: int | None = None) -> None:
    """Atomically create ``path`` with ``write(temporary_path)`` (for writers that want a path,
    e.g. ``safetensors.torch.save_file``). ``mode``: permissions to give the file (default: what
    the umask gives a new file; the temporary file is private until it is moved into place)."""
    from mudpt.core.errors import UnwritableError, unwritable

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:  # read-only, not permitted, a file where the folder should be
        raise unwritable(path, error) from None
    os.close(handle)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException as error:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(error, OSError) and not isinstance(error, UnwritableError) and error.errno is not None:
            raise unwritable(path, error) from None  # e.g. the disk filled: the old file is intact
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, replace)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON; NumPy scalars, paths and tensors are converted."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
