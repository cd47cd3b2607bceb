"""Split files of the CoOp family (``split_zhou_*.json``), split building and base/new classes.

A split file holds ``{"train": [[relpath, label, classname], ...], "val": [...], "test": [...]}``
with paths relative to the dataset's image folder.  When a benchmark's split file is missing,
the reference builds it from the dataset's own annotations with the run's seeded ``random``
(:func:`read_and_split_folders`, :func:`split_trainval`) and writes it; we do the same with the
same proportions, the same rounding and the same order of random calls.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from mudpt.core.errors import ConfigError, CorruptFileError, MissingFileError
from mudpt.core.files import atomic_write_bytes, read_text
from mudpt.core.vocabulary import SUBSAMPLES
from mudpt.data.items import Datum

DOCS_HINT = "See docs/DATASETS.md for the expected layout."
SPLIT_NAMES = ("train", "val", "test")
SUBSAMPLE_CHOICES = SUBSAMPLES  # core/vocabulary.py


def listdir_nohidden(path: str | os.PathLike, sort: bool = False) -> list[str]:
    """Entries of a folder without hidden ones, in directory order unless ``sort``.

    The reference lists image files in ``os.listdir`` order (not sorted); keeping that order
    is what makes seeded sampling pick the same files on the same file system.
    """
    names = [name for name in os.listdir(path) if not name.startswith(".")]
    if sort:
        names.sort()
    return names


def read_split_json(json_path: str | os.PathLike, image_dir: str | os.PathLike,
                    ) -> tuple[list[Datum], list[Datum], list[Datum]]:
    """Read a ``split_zhou``-style JSON file; paths are resolved against ``image_dir``.

    Returns ``(train, val, test)``; a missing ``val`` or ``test`` key gives an empty list.
    Malformed entries raise ``ValueError`` naming the file, the split and the entry index.
    """
    json_path = Path(json_path)
    if not json_path.is_file():
        raise MissingFileError(f"split file not found: {json_path}. {DOCS_HINT}")
    try:
        split = json.loads(read_text(json_path))
    except json.JSONDecodeError as error:
        raise CorruptFileError(f"{json_path}: not valid JSON (line {error.lineno}, column "
                         f"{error.colno}: {error.msg}). {DOCS_HINT}") from error
    if not isinstance(split, dict) or "train" not in split and "test" not in split:
        raise CorruptFileError(f"{json_path}: expected an object with 'train', 'val' and 'test' lists "
                         f"of [relative_path, label, classname]. {DOCS_HINT}")
    image_dir = str(image_dir)
    lists = []
    for split_name in SPLIT_NAMES:
        entries = split.get(split_name, [])
        if not isinstance(entries, list):
            raise CorruptFileError(f"{json_path}: '{split_name}' must be a list, got "
                             f"{type(entries).__name__}")
        items = []
        for index, entry in enumerate(entries):
            if (not isinstance(entry, (list, tuple)) or len(entry) != 3
                    or not isinstance(entry[0], str) or not isinstance(entry[2], str)):
                raise CorruptFileError(f"{json_path}: entry {index} of '{split_name}' is {entry!r}; "
                                 "expected [relative_path, label, classname]")
            try:
                label = int(entry[1])
            except (TypeError, ValueError):
                raise CorruptFileError(f"{json_path}: entry {index} of '{split_name}' has label "
                                 f"{entry[1]!r}; expected an integer") from None
            items.append(Datum(os.path.join(image_dir, entry[0]), label, entry[2]))
        lists.append(items)
    return lists[0], lists[1], lists[2]


def write_split_json(json_path: str | os.PathLike, image_dir: str | os.PathLike,
                     train: Sequence[Datum], val: Sequence[Datum], test: Sequence[Datum]) -> None:
    """Write a ``split_zhou``-style JSON file (paths relative to ``image_dir``), atomically."""
    prefix = str(image_dir)

    def relative(items):
        rows = []
        for item in items:
            path = item.path
            if path.startswith(prefix):
                path = path[len(prefix):]
            rows.append([path.lstrip("/").lstrip(os.sep), int(item.label), item.classname])
        return rows

    payload = {"train": relative(train), "val": relative(val), "test": relative(test)}
    text = json.dumps(payload, indent=4, separators=(",", ": "))
    atomic_write_bytes(json_path, text.encode("utf-8"))


def read_and_split_folders(image_dir: str | os.PathLike, rng: random.Random,
                           p_train: float = 0.5, p_val: float = 0.2,
                           ignored: Iterable[str] = (), new_classnames: Mapping[str, str] | None = None,
                           sort_files: bool = False,
                           ) -> tuple[list[Datum], list[Datum], list[Datum]]:
    """Split a class-folder tree into train/val/test per class (the reference's DTD recipe).

    Class folders are sorted (label = index); each class's files, in directory order (or
    sorted with ``sort_files``), are shuffled with ``rng`` and cut at ``round(n * p_train)``
    and ``round(n * p_val)``.  ``new_classnames`` renames folders (e.g. EuroSAT's readable
    names).  Classes too small for three non-empty parts raise ``ValueError``.
    """
    image_dir = str(image_dir)
    ignored = set(ignored)
    categories = sorted(name for name in listdir_nohidden(image_dir) if name not in ignored
                        and os.path.isdir(os.path.join(image_dir, name)))
    train, val, test = [], [], []
    for label, category in enumerate(categories):
        category_dir = os.path.join(image_dir, category)
        images = [os.path.join(category_dir, name)
                  for name in listdir_nohidden(category_dir, sort=sort_files)]
        rng.shuffle(images)
        n_total = len(images)
        n_train = round(n_total * p_train)
        n_val = round(n_total * p_val)
        if n_train <= 0 or n_val <= 0 or n_total - n_train - n_val <= 0:
            raise CorruptFileError(f"class folder {category_dir} has {n_total} images: too few to split "
                             f"into {p_train:.0%} train, {p_val:.0%} val and the rest test "
                             "(each part needs at least one image)")
        classname = (new_classnames or {}).get(category, category)
        train += [Datum(path, label, classname) for path in images[:n_train]]
        val += [Datum(path, label, classname) for path in images[n_train:n_train + n_val]]
        test += [Datum(path, label, classname) for path in images[n_train + n_val:]]
    return train, val, test


def split_trainval(trainval: Sequence[Datum], rng: random.Random, p_val: float = 0.2,
                   ) -> tuple[list[Datum], list[Datum]]:
    """Split a trainval list into train and val per label, as the reference does.

    Labels in order of first appearance; each label's indices are shuffled with ``rng``; the
    first ``round(n * p_val)`` go to val.  Output keeps the per-label grouping.
    """
    indices_by_label: dict[int, list[int]] = {}
    for index, item in enumerate(trainval):
        indices_by_label.setdefault(item.label, []).append(index)
    train, val = [], []
    for label, indices in indices_by_label.items():
        n_val = round(len(indices) * p_val)
        if n_val <= 0:
            raise CorruptFileError(f"label {label} has only {len(indices)} trainval images: too few to "
                             f"hold out {p_val:.0%} for validation")
        rng.shuffle(indices)
        for position, index in enumerate(indices):
            (val if position < n_val else train).append(trainval[index])
    return train, val


def subsample_classes(classnames: Sequence[str], *lists: Sequence[Datum], subsample: str = "all"):
    """Keep the base (first ``ceil(C/2)`` labels) or new (the rest) classes, re-mapping labels.

    Returns ``(subset_classnames, list1, list2, ...)``; with ``"all"`` everything is returned
    unchanged.  Labels are re-mapped to ``0..`` in the original label order within the half.
    """
    if subsample not in SUBSAMPLE_CHOICES:
        raise ConfigError(f"subsample must be one of {SUBSAMPLE_CHOICES}, got {subsample!r}", field="subsample")
    if subsample == "all":
        return (list(classnames), *[list(items) for items in lists])
    labels = list(range(len(classnames)))
    half = math.ceil(len(labels) / 2)
    selected = labels[:half] if subsample == "base" else labels[half:]
    relabel = {old: new for new, old in enumerate(selected)}
    outputs = [[dataclasses.replace(item, label=relabel[item.label]) for item in items
                if item.label in relabel] for items in lists]
    return ([classnames[old] for old in selected], *outputs)


def classnames_from_items(*lists: Sequence[Datum], source: str = "") -> list[str]:
    """Class names indexed by label, read from the items (the reference's ``lab2cname``)."""
    mapping: dict[int, str] = {}
    for items in lists:
        for item in items:
            known = mapping.setdefault(item.label, item.classname)
            if known != item.classname:
                raise CorruptFileError(f"{source}: label {item.label} is named both {known!r} and "
                                 f"{item.classname!r}")
    if not mapping:
        return []
    count = max(mapping) + 1
    missing = [label for label in range(count) if label not in mapping]
    if missing or min(mapping) < 0:
        raise CorruptFileError(f"{source}: labels must be 0..{count - 1} with every label present; "
                         f"missing {missing[:10]}")
    return [mapping[label] for label in range(count)]


def find_missing_files(items: Iterable[Datum]) -> list[str]:
    """Paths of items whose image file does not exist (order kept, duplicates dropped)."""
    missing, seen = [], set()
    for item in items:
        if item.path not in seen:
            seen.add(item.path)
            if not os.path.isfile(item.path):
                missing.append(item.path)
    return missing


def missing_files_error(missing: Sequence[str], source: str, hint: str = DOCS_HINT,
                        show: int = 5) -> MissingFileError:
    """A FileNotFoundError giving how many images are missing and the first few paths."""
    listing = "\n  ".join(missing[:show])
    more = f"\n  ... and {len(missing) - show} more" if len(missing) > show else ""
    return MissingFileError(f"{source} names {len(missing)} image file(s) that do not exist, "
                             f"e.g.:\n  {listing}{more}\n{hint}")
