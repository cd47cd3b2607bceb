"""Torch datasets and loaders over lists of :class:`Datum`."""

from __future__ import annotations

import logging
import os
import tempfile
import weakref
from typing import Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from mudpt.data.items import Datum

log = logging.getLogger(__name__)


class CorruptImageError(OSError):
    """An image file could not be opened or decoded."""


def read_image(path: str) -> Image.Image:
    """Open an image fully (so truncated files fail here) and convert it to RGB."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise CorruptImageError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise CorruptImageError(
            f"cannot read image {path}: {type(error).__name__}: {error}. Replace or remove the "
            "file, or pass skip_corrupt=True to skip unreadable images.") from error


class _SkipLog:
    """Append-only file listing skipped images, shared with DataLoader workers.

    A file works with every process start method (fork, spawn, forkserver), where shared
    memory counters created in one context cannot be sent to another.  Each line is one path,
    written with a single append, which is atomic for such short writes.  The file is
    removed when the log of the creating process is garbage-collected.
    """

    def __init__(self, initial: Sequence[str] = ()):
        handle, self.path = tempfile.mkstemp(prefix="mudpt-skipped-", suffix=".txt")
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.writelines(f"{p}\n" for p in initial)
        weakref.finalize(self, _remove_quietly, self.path)

    def add(self, path: str) -> None:
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(path.replace("\n", " ") + "\n")

    def paths(self) -> list[str]:
        try:
            with open(self.path, encoding="utf-8") as file:
                return [line.rstrip("\n") for line in file]
        except FileNotFoundError:
            return []

    def __deepcopy__(self, memo):
        return _SkipLog(self.paths())


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class ImageDataset(Dataset):
    """``dataset[i] -> (image_tensor, label)`` over a list of :class:`Datum`.

    An unreadable or corrupt image raises :class:`CorruptImageError` naming the file.  With
    ``skip_corrupt=True`` the next readable item of the list is returned in its place, a
    warning names the file, and the skip is recorded: :attr:`skipped` is the number of files
    skipped so far and :attr:`skipped_paths` their paths, counted across DataLoader worker
    processes; :meth:`skipped_report` words it for a log line.
    """

    def __init__(self, items: Sequence[Datum], transform: Callable | None,
                 skip_corrupt: bool = False):
        self.items = list(items)
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self._skip_log = _SkipLog() if skip_corrupt else None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def skipped_paths(self) -> list[str]:
        """Paths of the skipped files (all worker processes together), in order of skipping."""
        return self._skip_log.paths() if self._skip_log is not None else []

    @property
    def skipped(self) -> int:
        """How many unreadable files were skipped (all worker processes together)."""
        return len(self.skipped_paths)

    def skipped_report(self) -> str:
        paths = self.skipped_paths
        if not paths:
            return "no unreadable images were skipped"
        return f"skipped {len(paths)} unreadable image(s) (e.g. {', '.join(paths[:3])})"

    def _load(self, item: Datum):
        image = read_image(item.path)
        return self.transform(image) if self.transform is not None else image

    def __getitem__(self, index: int):
        item = self.items[index]
        if not self.skip_corrupt:
            return self._load(item), item.label
        for offset in range(len(self.items)):
            candidate = self.items[(index + offset) % len(self.items)]
            try:
                return self._load(candidate), candidate.label
            except CorruptImageError as error:
                self._skip_log.add(candidate.path)
                log.warning("skipping unreadable image: %s", error)
        raise CorruptImageError(f"none of the {len(self.items)} images of this dataset could be "
                                f"read (first: {self.items[0].path})")


def build_loader(items: Sequence[Datum], transform: Callable | None, batch_size: int,
                 shuffle: bool, num_workers: int = 0, sampler=None, drop_last: bool = False,
                 generator: torch.Generator | None = None, skip_corrupt: bool = False
                 ) -> DataLoader:
    """A DataLoader over ``ImageDataset(items, transform, skip_corrupt)``.

    ``loader.dataset`` is the :class:`ImageDataset` (see its ``skipped`` count).  Memory is
    pinned when CUDA is available; workers are kept alive between epochs.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not items:
        raise ValueError("cannot build a loader over an empty list of images")
    dataset = ImageDataset(items, transform, skip_corrupt=skip_corrupt)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                      sampler=sampler, num_workers=num_workers, drop_last=drop_last,
                      generator=generator, pin_memory=torch.cuda.is_available(),
                      persistent_workers=num_workers > 0)
