"""The world's classification datasets, written in the benchmark's on-disk layout.

Each dataset is a folder ``<world root>/<folder>/`` holding ``images/<class>/<split>_<i>.png`` and
``split_zhou_<Name>.json`` (``{"train"|"val"|"test": [[relpath, label, classname], ...]}``, paths
relative to ``images/``), exactly like the CoOp family's benchmark folders, plus a
``classnames.txt`` and a ``world.json`` describing how it was made. The data layer reads them like
any other dataset.

Datasets (all registered with :mod:`mudpt.data` as ``world_*``):

* ``world_source`` — colour x shape compositions (64 classes), the world's "ImageNet". Its label
  order puts half of the compositions first so that the base/new split (first half / second
  half) gives "new" classes that are colour-shape combinations never seen in tuning, while every
  colour and every shape occurs in both halves.
* ``world_source_<style>`` — the source's test classes rendered in a style never seen in
  pretraining (test only): the domain-generalisation targets.
* target datasets with other label spaces (``world_shape``, ``world_fill``, ``world_size``,
  ``world_count``, ``world_position``, ``world_background``) for cross-dataset transfer.

Generation is deterministic (seeded per dataset, class and split), cached on disk under
``<cache>/world/<version>-seed<seed>-<scale>/`` and done on demand, one dataset at a time, into a
temporary folder renamed into place, so interrupted or concurrent generation never leaves half
a dataset behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from mudpt.core.errors import ConfigError, CorruptFileError, unwritable
from mudpt.world import generator as G

WORLD_VERSION = "v5"
SOURCE = "world_source"
# The rendering of world_source: a style pretraining never sees, so that there is a gap between
# pretraining and downstream data for prompt tuning to close (see docs/WORLD.md).
SOURCE_STYLE = "warm"
DEFAULT_SEED = 0

# Images per class and split for each scale. "default" is what the demo and the benchmarks use;
# "small" keeps tests fast.
# A dataset with few classes gets more images per class, so that every test split holds at least
# ``min_test`` images (accuracy estimates on 60 images would be too noisy to compare methods).
SCALES = {
    "default": {"train": 40, "val": 8, "test": 20, "min_test": 480},
    "small": {"train": 16, "val": 4, "test": 6, "min_test": 48},
}


def split_counts(scale: str, n_classes: int) -> dict[str, int]:
    """Images per class of each split for a dataset of ``n_classes`` classes at ``scale``."""
    counts = SCALES[scale]
    factor = max(1, -(-counts["min_test"] // (counts["test"] * n_classes)))
    return {split: counts[split] * factor for split in ("train", "val", "test")}


def source_compositions() -> list[tuple[int, int]]:
    """(colour, shape) index pairs in label order: base half first, then new half.

    Base = compositions with ``(colour + shape) % 8 < 4``: a Latin-square split in which every
    colour and every shape has four base and four new compositions, so new classes combine
    known words in unseen ways.
    """
    n = len(G.COLOURS)
    pairs = [(c, s) for c in range(n) for s in range(len(G.SHAPES))]
    base = [p for p in pairs if (p[0] + p[1]) % n < n // 2]
    new = [p for p in pairs if (p[0] + p[1]) % n >= n // 2]
    return base + new


@dataclass(frozen=True)
class WorldDataset:
    """How one world dataset is made.

    Attributes:
        name: registry name (``world_*``).
        folder: folder under the world root.
        split_name: the ``Name`` of ``split_zhou_<Name>.json``.
        classnames: class names in label order.
        constraints: label -> keyword arguments of :func:`generator.sample_scenes`.
        splits: which splits exist ("train", "val", "test").
        scene_defaults: keyword arguments applied to every class's scenes.
        description: one line for docs and ``mudpt world list``.
    """

    name: str
    folder: str
    split_name: str
    classnames: tuple[str, ...]
    constraints: Callable[[int], dict]
    splits: tuple[str, ...] = ("train", "val", "test")
    scene_defaults: dict = field(default_factory=dict)
    description: str = ""


def _source_constraints(style: int = 0) -> Callable[[int], dict]:
    pairs = source_compositions()

    def constraints(label: int) -> dict:
        colour, shape = pairs[label]
        return {"colour": colour, "shape": shape, "n_objects": 1, "style": style}

    return constraints


def _source_classnames() -> tuple[str, ...]:
    return tuple(f"{G.COLOURS[c]} {G.SHAPES[s]}" for c, s in source_compositions())


def _build_registry() -> dict[str, WorldDataset]:
    datasets = [
        WorldDataset("world_source", "world_source", "WorldSource", _source_classnames(),
                     _source_constraints(G.STYLES.index(SOURCE_STYLE)),
                     description="colour x shape compositions (64 classes) photographed under warm light, a "
                                 "rendering never seen in pretraining; base/new splits compositions"),
        WorldDataset("world_source_plain", "world_source_plain", "WorldSourcePlain", _source_classnames(),
                     _source_constraints(0), splits=("test",),
                     description="the source's classes in the pretraining rendering (no gap); test only"),
    ]
    for style_index, style in enumerate(G.STYLES):
        if style in ("plain", SOURCE_STYLE):
            continue
        datasets.append(WorldDataset(
            f"world_source_{style}", f"world_source_{style}", f"WorldSource{style.capitalize()}",
            _source_classnames(), _source_constraints(style_index), splits=("test",),
            description=f"the source's classes rendered {style} (never seen in pretraining); test only"))
    datasets += [
        WorldDataset("world_shape", "world_shape", "WorldShape", G.SHAPES,
                     lambda label: {"shape": label, "n_objects": 1},
                     description="8 shapes, any colour"),
        WorldDataset("world_fill", "world_fill", "WorldFill", ("solid", "striped", "outlined"),
                     lambda label: {"fill": label, "n_objects": 1},
                     description="fill style of a single object"),
        WorldDataset("world_size", "world_size", "WorldSize", G.SIZES,
                     lambda label: {"size": label, "n_objects": 1},
                     description="size of a single object"),
        WorldDataset("world_count", "world_count", "WorldCount",
                     ("one shape", "two shapes", "three shapes"),
                     lambda label: {"n_objects": label + 1},
                     description="number of objects (captions mention counts only sometimes)"),
        WorldDataset("world_position", "world_position", "WorldPosition",
                     tuple(f"{r} {c}".replace("middle centre", "centre") for r in G.ROWS for c in G.COLUMNS),
                     lambda label: {"cell": label, "n_objects": 1, "size": 0},
                     description="grid cell of a single small object (captions rarely mention it)"),
        WorldDataset("world_background", "world_background", "WorldBackground", G.BACKGROUNDS,
                     lambda label: {"background": label},
                     description="background kind"),
    ]
    return {d.name: d for d in datasets}


WORLD_DATASETS: dict[str, WorldDataset] = _build_registry()
# Protocol roles of the source: its cross-dataset targets (other label spaces) and its domain
# shifts (renderings never seen in pretraining). Not world_source_plain: it is the source in
# the pretraining rendering, a no-gap control, not a shift.
TRANSFER_TARGETS = ("world_shape", "world_fill", "world_size", "world_count", "world_position", "world_background")
DOMAIN_SHIFTS = tuple(f"world_source_{style}" for style in G.STYLES if style not in ("plain", SOURCE_STYLE))


def available_world_datasets() -> list[str]:
    """Names of the world's datasets."""
    return list(WORLD_DATASETS)


def cache_dir() -> Path:
    """The cache folder: ``$MUDPT_CACHE/world`` or ``~/.cache/mudpt/world``."""
    base = os.environ.get("MUDPT_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "mudpt") / "world"


def world_root(seed: int = DEFAULT_SEED, scale: str = "default", cache: str | os.PathLike | None = None) -> Path:
    """Root folder holding the world's dataset folders for a seed and scale."""
    if scale not in SCALES:
        raise ConfigError(f"unknown world scale {scale!r}; expected one of {sorted(SCALES)}")
    base = Path(cache) if cache is not None else cache_dir()
    return base / f"{WORLD_VERSION}-seed{seed}-{scale}"


def _get(name: str) -> WorldDataset:
    try:
        return WORLD_DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown world dataset {name!r}; expected one of {available_world_datasets()}") from None


def _split_seed(seed: int, dataset: WorldDataset, label: int, split: str) -> list[int]:
    # Seed by names, not positions, so that adding a dataset never changes another one.
    key = [ord(ch) for ch in f"{dataset.name}/{split}"]
    return [seed, label, *key]


def render_class(dataset: WorldDataset, label: int, split: str, count: int, seed: int) -> np.ndarray:
    """Render ``count`` images of one class and split (deterministic): uint8 (count, H, W, 3)."""
    rng = np.random.default_rng(_split_seed(seed, dataset, label, split))
    kwargs = dict(dataset.scene_defaults)
    kwargs.update(dataset.constraints(label))
    return G.render_scenes(G.sample_scenes(rng, count, **kwargs))


#: Sentences per class in a world dataset's descriptions (as many as the authors of CoPrompt ship
#: per class); they are written where CoPrompt's authors keep theirs, ``<root>/gpt_file/``.
DESCRIPTIONS_PER_CLASS = 10


def class_descriptions(name: str, seed: int = DEFAULT_SEED, per_class: int = DESCRIPTIONS_PER_CLASS) -> dict:
    """``{class name: [sentence, ...]}``: captions of scenes of each class by the world's caption
    generator, the world's stand-in for the language-model descriptions of a benchmark's
    classes (CoPrompt's ``gpt_file``). Deterministic in ``seed``."""
    dataset = _get(name)
    descriptions = {}
    for label, classname in enumerate(dataset.classnames):
        rng = np.random.default_rng(_split_seed(seed, dataset, label, "descriptions"))
        kwargs = dict(dataset.scene_defaults)
        kwargs.update(dataset.constraints(label))
        descriptions[classname] = G.caption_scenes(G.sample_scenes(rng, per_class, **kwargs), rng)
    return descriptions


def descriptions_path(name: str, root: str | os.PathLike) -> Path:
    """Where the descriptions of world dataset ``name`` under ``root`` are written: the authors'
    layout, ``<root>/gpt_file/<name>_prompt.json``."""
    return Path(root) / "gpt_file" / f"{name}_prompt.json"


def _ensure_descriptions(name: str, root: Path) -> None:
    """Write a complete world dataset's descriptions unless they are there (with the seed it was
    made with; atomically; a world made by an older mudpt gets them on its next use)."""
    path = descriptions_path(name, root)
    if path.is_file():
        return
    try:
        seed = int(json.loads((root / _get(name).folder / "world.json").read_text(encoding="utf-8"))["seed"])
        text = json.dumps(class_descriptions(name, seed), indent=1)
        path.parent.mkdir(exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        pass  # not ours to complete, or a read-only copy: CoPrompt then asks for a descriptions file


def _class_folder(classname: str) -> str:
    return classname.replace(" ", "_")


def write_dataset(name: str, root: str | os.PathLike, seed: int = DEFAULT_SEED, scale: str = "default",
                  progress: bool = False) -> Path:
    """Write dataset ``name`` under ``root/<folder>`` unless it is already there; return that folder.

    The dataset is written into a temporary sibling folder and renamed into place, so a reader
    never sees a partial dataset; when two processes race, the first rename wins and the other
    discards its copy.
    """
    dataset = _get(name)
    if scale not in SCALES:
        raise ConfigError(f"unknown world scale {scale!r}; expected one of {sorted(SCALES)}")
    counts = split_counts(scale, len(dataset.classnames))
    root = Path(root)
    final = root / dataset.folder
    if (final / "world.json").is_file():
        _ensure_descriptions(name, root)
        return final
    try:  # the world's data root (--root) must be writable the first time a dataset is made
        root.mkdir(parents=True, exist_ok=True)
        _write_root_marker(root, seed, scale)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dataset.folder}.tmp-", dir=root))
    except OSError as error:
        raise unwritable(root, error, f"the folder to generate the world's dataset {name!r} in") from None
    try:
        images = tmp / "images"
        split_rows: dict[str, list] = {"train": [], "val": [], "test": []}
        iterator = [(label, split) for split in dataset.splits for label in range(len(dataset.classnames))]
        if progress:
            from tqdm import tqdm
            iterator = tqdm(iterator, desc=f"generating {name}", leave=False)
        for label, split in iterator:
            classname = dataset.classnames[label]
            folder = _class_folder(classname)
            (images / folder).mkdir(parents=True, exist_ok=True)
            pixels = render_class(dataset, label, split, counts[split], seed)
            for i, image in enumerate(pixels):
                relpath = f"{folder}/{split}_{i:04d}.png"
                Image.fromarray(image).save(images / relpath, compress_level=1)
                split_rows[split].append([relpath, label, classname])
        (tmp / f"split_zhou_{dataset.split_name}.json").write_text(json.dumps(split_rows), encoding="utf-8")
        (tmp / "classnames.txt").write_text("\n".join(dataset.classnames) + "\n", encoding="utf-8")
        info = {"name": name, "world_version": WORLD_VERSION, "seed": seed, "scale": scale,
                "counts_per_class": {s: counts[s] for s in dataset.splits},
                "classnames": list(dataset.classnames), "description": dataset.description,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        # world.json is written last: its presence marks a complete dataset.
        (tmp / "world.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "world.json").is_file():
                raise
            # Another process finished the same dataset first; keep theirs.
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _ensure_descriptions(name, root)
    return final


ROOT_MARKER = "world-root.json"


def _write_root_marker(root: Path, seed: int, scale: str) -> None:
    """Record the seed and scale of a world root, so that datasets generated into it later (on
    demand, by a reader that only gets the root) match the ones already there."""
    marker = root / ROOT_MARKER
    wanted = {"world_version": WORLD_VERSION, "seed": seed, "scale": scale}
    if marker.is_file():
        existing = json.loads(marker.read_text(encoding="utf-8"))
        if existing != wanted:
            raise ConfigError(f"world root {root} holds world {existing} (see {marker}); refusing to add "
                             f"datasets of world {wanted} to it: use another folder")
        return
    tmp = root / f".{ROOT_MARKER}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(wanted) + "\n", encoding="utf-8")
    os.replace(tmp, marker)


def root_parameters(root: str | os.PathLike, seed: int = DEFAULT_SEED, scale: str = "default") -> tuple[int, str]:
    """(seed, scale) of the world root ``root``: from its marker file, else the given defaults."""
    marker = Path(root) / ROOT_MARKER
    if marker.is_file():
        try:
            info = json.loads(marker.read_text(encoding="utf-8"))
            return int(info["seed"]), str(info["scale"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise CorruptFileError(f"{marker}: expected {{'seed': int, 'scale': str}}, could not read it ({err})") from err
    return seed, scale


def ensure_dataset(name: str, root: str | os.PathLike | None = None, seed: int = DEFAULT_SEED,
                   scale: str = "default", progress: bool = False) -> Path:
    """Folder of world dataset ``name`` under ``root`` (default: the cache), generated if needed."""
    return write_dataset(name, root if root is not None else world_root(seed, scale), seed, scale, progress)


def generate_all(root: str | os.PathLike | None = None, seed: int = DEFAULT_SEED, scale: str = "default",
                 names: list[str] | None = None, progress: bool = True) -> Path:
    """Write every world dataset (or ``names``) under ``root``; return the root."""
    root = Path(root) if root is not None else world_root(seed, scale)
    for name in names or available_world_datasets():
        write_dataset(name, root, seed, scale, progress)
    return root


def read_world_dataset(name: str, dataset_dir: str | os.PathLike):
    """Read a written world dataset: ``(train, val, test, classnames)`` with ``Datum`` items."""
    from mudpt.data.splits import classnames_from_items, read_split_json

    dataset = _get(name)
    dataset_dir = Path(dataset_dir)
    json_path = dataset_dir / f"split_zhou_{dataset.split_name}.json"
    train, val, test = read_split_json(json_path, dataset_dir / "images")
    classnames = classnames_from_items(train, val, test, source=str(json_path))
    return train, val, test, classnames


def _reader_for(name: str, seed: int = DEFAULT_SEED, scale: str = "default"):
    """A data-layer reader for ``name``: ``reader(ctx)`` where ``ctx.dir`` is a folder holding the
    world's dataset folders (generated there on demand when missing)."""
    dataset = _get(name)

    def reader(ctx):
        root = Path(ctx.dir)
        folder = root / dataset.folder
        if not (folder / "world.json").is_file():
            if (folder / f"split_zhou_{dataset.split_name}.json").is_file():
                # A user-provided copy of the layout without our marker: read it as is.
                return read_world_dataset(name, folder)
            root_seed, root_scale = root_parameters(root, seed, scale)
            write_dataset(name, root, root_seed, root_scale, progress=False)
        _ensure_descriptions(name, root)
        return read_world_dataset(name, folder)

    reader.__name__ = f"read_{name}"
    reader.__doc__ = f"Reader of the world dataset {name!r} (generated on demand)."
    return reader


def register_world_datasets(seed: int = DEFAULT_SEED, scale: str = "default") -> None:
    """Register every world dataset with :mod:`mudpt.data`. With ``root=None`` they live in the
    cache (``world_root(seed, scale)``, resolved when loaded so ``$MUDPT_CACHE`` is honoured) and
    are generated there on first use."""
    from mudpt.data import register_dataset

    for name, dataset in WORLD_DATASETS.items():
        roles = dict(transfer_targets=TRANSFER_TARGETS, domain_shifts=DOMAIN_SHIFTS) if name == SOURCE else {}
        register_dataset(name, _reader_for(name, seed, scale),
                         default_root=lambda: world_root(seed, scale),
                         test_only=dataset.splits == ("test",), cache_fewshot=False,
                         description=dataset.description, **roles)
