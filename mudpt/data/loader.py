"""Torch datasets and loaders over lists of :class:`Datum`."""

from __future__ import annotations

import logging
import multiprocessing
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


class ImageDataset(Dataset):
    """``dataset[i] -> (image_tensor, label)`` over a list of :class:`Datum`.

    An unreadable or corrupt image raises :class:`CorruptImageError` naming the file.  With
    ``skip_corrupt=True`` the next readable item of the list is returned in its place and
    the file is counted: :attr:`skipped` is the number of files skipped so far, counted
    across DataLoader worker processes; :meth:`skipped_report` words it for a log line.
    """

    def __init__(self, items: Sequence[Datum], transform: Callable | None,
                 skip_corrupt: bool = False):
        self.items = list(items)
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        # A shared counter so that skips inside worker processes reach the parent.
        self._skip_count = multiprocessing.get_context().Value("i", 0)
        self.skipped_paths: list[str] = []  # files skipped in this process

    def __getstate__(self):
        state = self.__dict__.copy()
        # A shared counter may only travel to a process being started (DataLoader workers);
        # any other copy (deepcopy, torch.save) gets its own counter, starting at the count so far.
        if multiprocessing.context.get_spawning_popen() is None:
            state["_skip_count"] = None
            state["_skipped_so_far"] = self.skipped
        return state

    def __setstate__(self, state):
        skipped_so_far = state.pop("_skipped_so_far", 0)
        self.__dict__.update(state)
        if self._skip_count is None:
            self._skip_count = multiprocessing.get_context().Value("i", skipped_so_far)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def skipped(self) -> int:
        """How many unreadable files were skipped (all worker processes together)."""
        return int(self._skip_count.value)

    def skipped_report(self) -> str:
        count = self.skipped
        if count == 0:
            return "no unreadable images were skipped"
        examples = f" (e.g. {', '.join(self.skipped_paths[:3])})" if self.skipped_paths else ""
        return f"skipped {count} unreadable image(s){examples}"

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
                with self._skip_count.get_lock():
                    self._skip_count.value += 1
                self.skipped_paths.append(candidate.path)
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
