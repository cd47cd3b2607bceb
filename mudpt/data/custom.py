"""Bring your own data: image-folder trees and CSV / JSON lists, no code needed.

Accepted sources (see docs/DATASETS.md):

* a folder of class folders (``<root>/<class>/<image>``): split deterministically per class,
  50% train / 20% val / 30% test, with a fixed per-class seed so that the test set never
  depends on the few-shot seed;
* a folder with ``train/``, ``val/`` and/or ``test/`` sub-trees, each of class folders (a
  missing ``val/`` gives an empty val split);
* a folder holding one ``split_zhou_<Name>.json`` (the CoOp split format) and its images;
* a ``.csv`` file with a header naming ``path`` and ``label`` and/or ``classname`` (and
  optionally ``split``); a ``.json`` file holding a list of such objects, or a
  ``split_zhou``-style ``{"train": [[path, label, classname], ...], ...}`` object.
  Relative paths are resolved against the list file's folder.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from pathlib import Path

from mudpt.core.errors import CorruptFileError
from mudpt.core.files import read_text
from mudpt.data.items import Datum
from mudpt.data.splits import DOCS_HINT, SPLIT_NAMES, classnames_from_items, read_split_json

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                              ".ppm", ".pgm", ".jfif"})
#: Seed of the automatic train/val/test split of folders and lists without explicit splits.
AUTO_SPLIT_SEED = 0
AUTO_SPLIT_PROPORTIONS = (0.5, 0.2)  # train, val; the rest is test
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder)
                  if entry.is_dir() and not entry.name.startswith("."))


def _images_in(folder: Path) -> list[str]:
    return sorted(str(folder / name) for name in os.listdir(folder) if _is_image(name))


def _auto_split(grouped: dict[int, list[tuple[str, str]]], notes: list[str], source: str):
    """Deterministic per-class split of sorted files.

    Each class is shuffled by its own generator, seeded from the fixed split seed and the
    class name, so adding a class (or images of another class) leaves a class's split alone.
    """
    p_train, p_val = AUTO_SPLIT_PROPORTIONS
    train, val, test = [], [], []
    for label in sorted(grouped):
        members = sorted(grouped[label])
        classname = members[0][1] if members else ""
        random.Random(f"{AUTO_SPLIT_SEED}:{classname}").shuffle(members)
        n_total = len(members)
        n_train = max(1, round(n_total * p_train)) if n_total else 0
        n_val = min(round(n_total * p_val), n_total - n_train)
        for position, (path, classname) in enumerate(members):
            target = train if position < n_train else val if position < n_train + n_val else test
            target.append(Datum(path, label, classname))
    notes.append(f"{source} has no explicit splits: split each class {p_train:.0%} train / "
                 f"{p_val:.0%} val / rest test (fixed, seeded by split seed {AUTO_SPLIT_SEED} "
                 "and class name)")
    return train, val, test


def read_image_folder(folder: Path, notes: list[str] | None = None):
    """Read an image-folder tree; returns ``(train, val, test, classnames)``."""
    notes = notes if notes is not None else []
    folder = Path(folder).absolute()
    split_dirs = {split: folder / split for split in SPLIT_NAMES if (folder / split).is_dir()}
    if split_dirs and set(split_dirs) != {"val"}:
        classnames = sorted({name for path in split_dirs.values() for name in _class_folders(path)})
        if not classnames:
            raise CorruptFileError(f"{folder}: the {', '.join(split_dirs)} folder(s) hold no class "
                             f"folders. {DOCS_HINT}")
        label_of = {name: label for label, name in enumerate(classnames)}
        lists = {split: [] for split in SPLIT_NAMES}
        for split, split_dir in split_dirs.items():
            for classname in _class_folders(split_dir):
                lists[split] += [Datum(path, label_of[classname], classname)
                                 for path in _images_in(split_dir / classname)]
        for split in SPLIT_NAMES:
            if split not in split_dirs:
                notes.append(f"{folder} has no {split}/ folder: the {split} split is empty")
        return lists["train"], lists["val"], lists["test"], classnames
    classnames = _class_folders(folder)
    if not classnames:
        raise CorruptFileError(f"{folder}: expected one sub-folder of images per class (or train/, "
                         f"val/, test/ sub-folders of class folders), found none. {DOCS_HINT}")
    grouped = {label: [(path, name) for path in _images_in(folder / name)]
               for label, name in enumerate(classnames)}
    empty = [name for label, name in enumerate(classnames) if not grouped[label]]
    if empty:
        raise CorruptFileError(f"{folder}: class folder(s) without images: {empty[:5]} (image "
                         f"extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    train, val, test = _auto_split(grouped, notes, str(folder))
    return train, val, test, classnames


def _rows_from_csv(path: Path):
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with io.StringIO(read_text(path), newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if reader.fieldnames is None:
            raise CorruptFileError(f"{path}: empty file; expected a header line such as "
                             "'path,classname,split'")
        fields = [name.strip().lower() for name in reader.fieldnames]
        reader.fieldnames = fields
        if "path" not in fields or not ({"label", "classname"} & set(fields)):
            raise CorruptFileError(f"{path}, line 1: header {fields} must name a 'path' column and a "
                             f"'label' and/or 'classname' column (optional: 'split'). {DOCS_HINT}")
        for row in reader:
            if None in row:
                raise CorruptFileError(f"{path}, line {reader.line_num}: more values than header columns")
            yield f"{path}, line {reader.line_num}", row


def _rows_from_json_list(path: Path, entries: list):
    for index, entry in enumerate(entries):
        where = f"{path}, entry {index}"
        if isinstance(entry, dict):
            yield where, {str(key).lower(): value for key, value in entry.items()}
        elif isinstance(entry, (list, tuple)) and len(entry) in (2, 3):
            row = {"path": entry[0]}
            second = entry[1]
            row["label" if isinstance(second, int) and not isinstance(second, bool)
                else "classname"] = second
            if len(entry) == 3:
                row["classname"] = entry[2]
            yield where, row
        else:
            raise CorruptFileError(f"{where}: expected an object with 'path' and 'label'/'classname' "
                             f"or a [path, label, classname] list, got {entry!r}")


def _read_classnames_file(folder: Path) -> list[str] | None:
    path = folder / "classnames.txt"
    if not path.is_file():
        return None
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def read_list_file(path: Path, notes: list[str] | None = None):
    """Read a CSV or JSON image list; returns ``(train, val, test, classnames)``."""
    notes = notes if notes is not None else []
    path = Path(path).absolute()
    base = path.parent
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as error:
            raise CorruptFileError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from error
        if isinstance(data, dict):  # split_zhou style
            train, val, test = read_split_json(path, base)
            return train, val, test, classnames_from_items(train, val, test, source=str(path))
        if not isinstance(data, list):
            raise CorruptFileError(f"{path}: expected a list of images or a split object, got "
                             f"{type(data).__name__}. {DOCS_HINT}")
        rows = _rows_from_json_list(path, data)
    elif suffix in (".csv", ".tsv"):
        rows = _rows_from_csv(path)
    else:
        raise CorruptFileError(f"{path}: unsupported list format {suffix!r}; use .csv, .tsv or .json. {DOCS_HINT}")

    parsed = []  # (where, path, label or None, classname or None, split or None)
    for where, row in rows:
        image = row.get("path")
        if not isinstance(image, str) or not image.strip():
            raise CorruptFileError(f"{where}: missing image path")
        label = row.get("label")
        if label is not None and label != "":
            try:
                label = int(label)
                if label < 0:
                    raise ValueError
            except (TypeError, ValueError):
                raise CorruptFileError(f"{where}: label {row.get('label')!r} is not a non-negative "
                                 "integer") from None
        else:
            label = None
        classname = row.get("classname")
        classname = str(classname).strip() if classname not in (None, "") else None
        if label is None and classname is None:
            raise CorruptFileError(f"{where}: needs a label or a classname")
        split = row.get("split")
        if split not in (None, ""):
            split_key = SPLIT_ALIASES.get(str(split).strip().lower())
            if split_key is None:
                raise CorruptFileError(f"{where}: split {split!r} is not one of train, val, test")
            split = split_key
        else:
            split = None
        full_path = image.strip()
        if not os.path.isabs(full_path):
            full_path = str(base / full_path)
        parsed.append((where, full_path, label, classname, split))
    if not parsed:
        raise CorruptFileError(f"{path}: the list holds no images")

    classnames = _resolve_list_classes(path, parsed)
    label_of = {name: label for label, name in enumerate(classnames)}
    items_with_split = []
    for where, image, label, classname, split in parsed:
        if label is None:
            label = label_of[classname]
        items_with_split.append((Datum(image, label, classnames[label]), split))

    splits_given = [split for _, split in items_with_split if split is not None]
    if splits_given and len(splits_given) != len(items_with_split):
        first = next(where for where, _image, _label, _name, split in parsed if split is None)
        raise CorruptFileError(f"{first}: some rows have a split and some do not; give every row one")
    if splits_given:
        lists = {split: [item for item, item_split in items_with_split if item_split == split]
                 for split in SPLIT_NAMES}
        return lists["train"], lists["val"], lists["test"], classnames
    grouped: dict[int, list[tuple[str, str]]] = {}
    for item, _ in items_with_split:
        grouped.setdefault(item.label, []).append((item.path, item.classname))
    train, val, test = _auto_split(grouped, notes, str(path))
    return train, val, test, classnames


def _resolve_list_classes(path: Path, parsed) -> list[str]:
    """Class names indexed by label from the rows (and an optional classnames.txt)."""
    names_file = _read_classnames_file(path.parent)
    labelled = {}
    for where, _image, label, classname, _split in parsed:
        if label is not None and classname is not None:
            known = labelled.setdefault(label, (classname, where))
            if known[0] != classname:
                raise CorruptFileError(f"{where}: label {label} is named {classname!r} but "
                                 f"{known[0]!r} at {known[1]}")
    if any(label is not None for _w, _i, label, _c, _s in parsed):
        if any(label is None for _w, _i, label, _c, _s in parsed):
            where = next(w for w, _i, label, _c, _s in parsed if label is None)
            raise CorruptFileError(f"{where}: some rows give a label and some do not; give every row "
                             "a label, or use class names only")
        count = max(label for _w, _i, label, _c, _s in parsed) + 1
        if names_file is not None:
            if len(names_file) < count:
                raise CorruptFileError(f"{path.parent / 'classnames.txt'} names {len(names_file)} "
                                 f"classes but labels go up to {count - 1}")
            for label, (classname, where) in labelled.items():
                if names_file[label] != classname:
                    raise CorruptFileError(f"{where}: label {label} is named {classname!r} but "
                                     f"classnames.txt says {names_file[label]!r}")
            return names_file
        missing = [label for label in range(count) if label not in labelled]
        if missing:
            raise CorruptFileError(f"{path}: labels {missing[:10]} have no class name; add a "
                             "'classname' column or a classnames.txt (one name per line, line "
                             "i = label i) beside the list")
        return [labelled[label][0] for label in range(count)]
    names = sorted({classname for _w, _i, _l, classname, _s in parsed})
    if names_file is not None:
        unknown = [name for name in names if name not in names_file]
        if unknown:
            raise CorruptFileError(f"{path}: class names {unknown[:5]} are not in "
                             f"{path.parent / 'classnames.txt'}")
        return names_file
    return names


def read_split_folder(folder: Path, split_file: Path, notes: list[str] | None = None):
    """A folder holding one ``split_zhou_*.json`` (a CoOp-style dataset we have no reader for).

    The file's relative paths are resolved against the first of ``images/``, the folder
    itself or one of its sub-folders in which the first listed image exists.
    """
    notes = notes if notes is not None else []
    try:
        rows = json.loads(read_text(split_file))
        first = next(entry[0] for split in SPLIT_NAMES for entry in rows.get(split, []))
    except (json.JSONDecodeError, AttributeError, StopIteration, TypeError, IndexError, KeyError):
        first = None
    candidates = [folder / "images", folder] + sorted(p for p in folder.iterdir() if p.is_dir())
    image_dir = next((c for c in candidates if first and (c / first).is_file()), folder)
    train, val, test = read_split_json(split_file, image_dir)
    notes.append(f"read the split file {split_file.name} (images under {image_dir})")
    return train, val, test, classnames_from_items(train, val, test, source=str(split_file))


def read_custom(path: Path, notes: list[str] | None = None):
    """Dispatch a bring-your-own path to the folder, split-file or list reader."""
    path = Path(path)
    if path.is_dir():
        split_files = sorted(path.glob("split_zhou_*.json"))
        if len(split_files) == 1:
            return read_split_folder(path.absolute(), split_files[0].absolute(), notes)
        return read_image_folder(path, notes)
    return read_list_file(path, notes)
