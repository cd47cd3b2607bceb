"""Reading images, and a torch dataset over lists of :class:`Datum`."""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from mudpt.core.errors import CorruptFileError, MissingFileError
from mudpt.data.items import Datum

log = logging.getLogger(__name__)

# PIL's integer modes wider than 8 bits (16-bit greyscale PNG/TIFF): ``convert("RGB")`` would
# clip them to white, so they are scaled to 8 bits first.
_WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class CorruptImageError(CorruptFileError, OSError):
    """An image file could not be opened or decoded."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: greyscale, palette, RGBA, CMYK, and 16-bit greyscale (scaled
    by 1/257, so its full range maps onto 0..255 instead of saturating)."""
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_INTEGER_MODES:
        values = np.asarray(image).astype(np.int64)
        if image.mode == "I" and values.max(initial=0) <= 255:
            scaled = values  # 8-bit data stored as 32-bit integers
        else:
            scaled = np.clip(values, 0, 65535) // 257
        return Image.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    return image.convert("RGB")


def read_image(path: str) -> Image.Image:
    """Open an image fully (so truncated files fail here) and convert it to 8-bit RGB."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except FileNotFoundError:
        raise MissingFileError(f"image file not found: {path}") from None
    except Image.DecompressionBombError as error:
        raise CorruptImageError(
            f"image {path} is too large to decode safely ({error}); PIL refuses images above "
            f"{Image.MAX_IMAGE_PIXELS:,} pixels. Downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if you "
            "trust the file.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise CorruptImageError(
            f"cannot read image {path}: {type(error).__name__}: {error}. Replace or remove the file "
            "(mudpt.data.check_images, or the full data check, lists every unreadable image of a dataset).") from error


class ImageDataset(Dataset):
    """``dataset[i] -> (image_tensor, label)`` over a list of :class:`Datum`.

    An unreadable or corrupt image raises :class:`CorruptImageError` naming the file.
    """

    def __init__(self, items: Sequence[Datum], transform: Callable | None):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        image = read_image(item.path)
        return (self.transform(image) if self.transform is not None else image), item.label


def build_loader(items: Sequence[Datum], transform: Callable | None, batch_size: int,
                 shuffle: bool, num_workers: int = 0, sampler=None, drop_last: bool = False,
                 generator: torch.Generator | None = None) -> DataLoader:
    """A DataLoader over ``ImageDataset(items, transform)``; memory is pinned when CUDA is
    available and workers are kept alive between epochs."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not items:
        raise ValueError("cannot build a loader over an empty list of images")
    dataset = ImageDataset(items, transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                      sampler=sampler, num_workers=num_workers, drop_last=drop_last,
                      generator=generator, pin_memory=torch.cuda.is_available(),
                      persistent_workers=num_workers > 0)


class _CheckDataset(Dataset):
    def __init__(self, items: Sequence[Datum]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        try:
            read_image(self.items[index].path)
            return ""
        except (CorruptImageError, MissingFileError) as error:
            return str(error)


def check_images(items: Sequence[Datum], num_workers: int = 0) -> list[tuple[str, str]]:
    """Open and decode every image of ``items``; ``[(path, reason)]`` of the unreadable ones."""
    dataset = _CheckDataset(items)
    loader = DataLoader(dataset, batch_size=64, num_workers=num_workers, collate_fn=list)
    reasons = [reason for batch in loader for reason in batch]
    return [(item.path, reason) for item, reason in zip(dataset.items, reasons) if reason]
