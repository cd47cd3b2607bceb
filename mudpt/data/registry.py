"""Dataset registry and :func:`load_dataset`, the one entry point to every data source."""

from __future__ import annotations

import dataclasses
import logging
import operator
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

from mudpt.core.classnames import validate_classnames
from mudpt.core.errors import ConfigError, CorruptFileError, MissingFileError
from mudpt.core.plugins import load_plugins
from mudpt.data.fewshot import (fewshot_cache_path, load_fewshot_cache, sample_fewshot,
                                save_fewshot_cache)
from mudpt.data.items import Datum
from mudpt.data.splits import (DOCS_HINT, SUBSAMPLE_CHOICES, find_missing_files,
                               missing_files_error, subsample_classes)

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


@dataclass
class ReadContext:
    """What every dataset reader gets: ``reader(ctx) -> (train, val, test, classnames)``.

    Attributes:
        dir: the dataset's folder (a benchmark's folder under the data root, or a registered
            dataset's ``root`` / ``default_root``; it may not exist yet for a reader that
            generates its data on demand).
        rng: the load's seeded generator (``random.Random(seed)``): a split file a reader builds
            on the fly draws from it first, the few-shot sample next, as the reference does.
        notes: human-readable remarks on how the splits were obtained (:meth:`note` adds one).

    It is also path-like (``os.fspath(ctx)``, ``Path(ctx)``, ``ctx / "images"`` give ``dir``),
    so a reader written as ``reader(root)`` keeps working.
    """

    dir: Path
    rng: random.Random = field(default_factory=lambda: random.Random(1))
    notes: list = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def __fspath__(self) -> str:
        return str(self.dir)

    def __truediv__(self, other) -> Path:
        return self.dir / other


Reader = Callable[[ReadContext], tuple]
#: Environment variable consulted when ``root`` is not given for a benchmark dataset.
ROOT_ENV_VAR = "MUDPT_DATA_ROOT"


@dataclass
class LoadedDataset:
    """What :func:`load_dataset` returns.

    Attributes:
        name: registry name (or the path for bring-your-own data).
        train, val, test: lists of :class:`Datum` (few-shot sampled / class-subsampled).
        classnames: class names, index = label (after base/new re-mapping: the subset's).
        dataset_dir: folder holding the dataset's files, when there is one.
        shots, seed, subsample: the arguments the split was made with.
        fewshot_cache: the ``split_fewshot`` pickle read or written, if any.
        notes: human-readable remarks on how the splits were obtained.
        fingerprint: ``{"content", "sample"}``: SHA-256 digests of every listed item (relative
            path, label, class name) before sampling, and of the items used here (with file
            sizes). Two loads with equal fingerprints read the same images in the same order.
    """

    name: str
    train: list[Datum]
    val: list[Datum]
    test: list[Datum]
    classnames: list[str]
    dataset_dir: Path | None = None
    shots: int = 0
    seed: int = 1
    subsample: str = "all"
    fewshot_cache: Path | None = None
    notes: list[str] = field(default_factory=list)
    fingerprint: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def summary(self) -> str:
        """One line: name, class count and split sizes."""
        return (f"{self.name}: {self.num_classes} classes, train {len(self.train)}, "
                f"val {len(self.val)}, test {len(self.test)} (shots={self.shots}, seed={self.seed}, "
                f"subsample={self.subsample})")


@dataclass
class DatasetSpec:
    """A registered dataset.

    ``reader(ctx: ReadContext) -> (train, val, test, classnames)`` for every dataset, built-in
    benchmarks (``builtin=True``: their folder is ``folder`` under the data root) and registered
    ones alike.
    """

    name: str
    reader: Callable
    default_root: PathLike | Callable[[], PathLike] | None = None
    folder: str | None = None  # benchmark folder under the data root
    builtin: bool = False
    test_only: bool = False  # only a test split (ImageNet variants): shots are ignored
    sample_val: bool = True  # few-shot sampling of val too (min(K, 4) shots)
    val_is_test: bool = False  # ImageNet: its val split is the test split
    cache_fewshot: bool = True
    description: str = ""
    aliases: tuple[str, ...] = ()
    supports_subsample: bool = True  # base/new halves; False: asking for them is an error
    transfer_targets: tuple[str, ...] = ()  # cross-dataset targets of a model trained on it
    domain_shifts: tuple[str, ...] = ()  # its shifted versions (domain generalisation)


_REGISTRY: dict[str, DatasetSpec] = {}
_ALIASES: dict[str, str] = {}


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _register_spec(spec: DatasetSpec) -> None:
    _REGISTRY[spec.name] = spec
    for alias in (spec.name, *spec.aliases):
        _ALIASES[_normalise(alias)] = spec.name


def register_dataset(name: str, reader: Reader, default_root: PathLike | Callable[[], PathLike] | None = None,
                     *, test_only: bool = False, cache_fewshot: bool = False,
                     description: str = "", supports_subsample: bool = True,
                     transfer_targets: Sequence[str] = (), domain_shifts: Sequence[str] = ()) -> None:
    """Register a dataset under ``name``.

    Args:
        name: the name passed to :func:`load_dataset`.
        reader: ``reader(ctx: ReadContext) -> (train, val, test, classnames)`` with lists of
            :class:`Datum` (or ``(path, label, classname)`` tuples) and the class names
            indexed by label; ``ctx.dir`` is the dataset's folder, ``ctx.rng`` the load's seeded
            generator, ``ctx.note(text)`` records a remark (the built-in benchmarks' readers
            have the same signature).
        default_root: folder (or zero-argument callable returning one, e.g. generating data
            on demand) used when :func:`load_dataset` gets ``root=None``.
        test_only: the dataset has only a test split; ``shots`` is ignored for it.
        cache_fewshot: write/read few-shot caches in ``<root>/split_fewshot/``.  Sampling is
            deterministic either way; the cache pins the sample if the data change.
        description: one line shown by listings.
        supports_subsample: whether base/new class halves make sense for it (False: asking for
            them is an error, as for the ImageNet variants, which the reference never subsamples).
        transfer_targets: the datasets a model trained on this one is evaluated on in the
            cross-dataset protocol (the default targets of ``mudpt sweep --protocol xd``).
        domain_shifts: this dataset's shifted versions, evaluated in the domain-generalisation
            protocol (the default targets of ``--protocol dg``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    if not callable(reader):
        raise TypeError(f"reader for dataset {name!r} must be callable, got {type(reader).__name__}")
    _register_spec(DatasetSpec(name=name, reader=reader, default_root=default_root,
                               test_only=test_only, cache_fewshot=cache_fewshot,
                               description=description, supports_subsample=supports_subsample,
                               transfer_targets=tuple(transfer_targets), domain_shifts=tuple(domain_shifts)))


def available_datasets() -> list[str]:
    """Sorted names of every registered dataset (benchmarks, plug-ins, user-registered)."""
    load_plugins()
    return sorted(_REGISTRY)


def get_dataset_spec(name: str) -> DatasetSpec | None:
    """The registered spec for ``name`` (aliases such as ``caltech-101`` or ``OxfordPets`` work)."""
    key = _ALIASES.get(_normalise(name))
    if key is None:
        load_plugins()
        key = _ALIASES.get(_normalise(name))
    return _REGISTRY.get(key) if key else None


def _benchmark_dataset_dir(spec: DatasetSpec, root: PathLike | None) -> Path:
    if root is None:
        root = os.environ.get(ROOT_ENV_VAR) or None
    if root is None:
        folders = ", ".join(f"{s.folder}/" for s in _REGISTRY.values() if s.builtin)
        raise ConfigError(f"dataset {spec.name!r} needs its data: give root=... (the folder holding "
                          f"{folders}), or set ${ROOT_ENV_VAR}. {DOCS_HINT}", field="root")
    root = Path(os.path.expanduser(str(root))).absolute()
    candidate = root / spec.folder
    if candidate.is_dir():
        return candidate
    if root.name == spec.folder and root.is_dir():  # root already points at the dataset folder
        return root
    raise MissingFileError(f"dataset folder not found: {candidate} (dataset {spec.name!r} is "
                            f"expected in a folder named '{spec.folder}' under the data root "
                            f"{root}). {DOCS_HINT}", field="root")


def _resolve_default_root(spec: DatasetSpec) -> Path:
    default_root = spec.default_root
    if default_root is None:
        raise ConfigError(f"dataset {spec.name!r} has no default location: give root=...", field="root")
    if callable(default_root):
        default_root = default_root()
    return Path(default_root)


def _coerce_items(items, source: str, split: str) -> list[Datum]:
    if items is None:
        return []
    out = []
    for index, item in enumerate(items):
        if isinstance(item, Datum):
            out.append(item)
        elif isinstance(item, (tuple, list)) and len(item) == 3:
            out.append(Datum(str(item[0]), int(item[1]), str(item[2])))
        else:
            raise TypeError(f"{source}: item {index} of '{split}' is {item!r}; expected a Datum "
                            "or a (path, label, classname) tuple")
    return out


def _check_labels(classnames: Sequence[str], lists: dict[str, list[Datum]], source: str) -> None:
    count = len(classnames)
    for split, items in lists.items():
        for item in items:
            if not 0 <= item.label < count:
                raise CorruptFileError(f"{source}: item {item.path} in '{split}' has label {item.label}, "
                                 f"outside 0..{count - 1} for the {count} class names")


def reroot_items(items: Sequence[Datum], dataset_dir: Path) -> tuple[list[Datum], int]:
    """Map image paths that do not exist onto ``dataset_dir``.

    Caches written by the reference hold absolute paths of the machine that wrote them.  For
    a path that does not exist, we keep the longest tail of its components that does exist
    under ``dataset_dir`` (e.g. ``/old/data/oxford_pets/images/x.jpg`` becomes
    ``<dataset_dir>/images/x.jpg``).  The depth found for one item is tried first for the
    next ones.  Returns the new list and how many paths were changed; paths that cannot be
    mapped are left unchanged (reported later as missing).
    """
    out, changed, depth_hint = [], 0, None
    for item in items:
        if os.path.isfile(item.path):
            out.append(item)
            continue
        new_path, depth_hint = _tail_onto(item.path, dataset_dir, os.path.isfile, depth_hint)
        if new_path is None:
            out.append(item)
        else:
            out.append(dataclasses.replace(item, path=new_path))
            changed += 1
    return out, changed


def _tail_onto(path: str, dataset_dir, accept, depth_hint=None) -> tuple:
    """``(dataset_dir joined with the longest tail of path's components that accept() takes, its
    depth)``, or ``(None, depth_hint)``; the depth that worked for the previous item is tried first."""
    parts = [part for part in re.split(r"[\\/]+", path) if part]
    depths = ([depth_hint] if depth_hint is not None else []) + list(range(len(parts)))
    for depth in depths:
        if depth < len(parts):
            candidate = os.path.join(str(dataset_dir), *parts[depth:])
            if accept(candidate):
                return candidate, depth
    return None, depth_hint


def _validate_files(lists: dict[str, list[Datum]], source: str, dataset_dir: Path | None,
                    notes: list[str], hint: str = DOCS_HINT) -> dict[str, list[Datum]]:
    missing = find_missing_files(item for items in lists.values() for item in items)
    if missing and dataset_dir is not None:
        rerooted = {}
        total_changed = 0
        for split, items in lists.items():
            rerooted[split], changed = reroot_items(items, dataset_dir)
            total_changed += changed
        if total_changed:
            notes.append(f"re-rooted {total_changed} image paths of {source} onto {dataset_dir}")
            log.info(notes[-1])
            lists = rerooted
            missing = find_missing_files(item for items in lists.values() for item in items)
    if missing:
        raise missing_files_error(missing, source, hint)
    return lists


def _cached_items_of_listing(cached: dict, lists: dict, dataset_dir: Path | None, cache_path: Path,
                             notes: list) -> dict:
    """A few-shot cache's items as items of the dataset being read: an item the listing does not
    have is re-rooted onto ``dataset_dir`` by the longest tail of its path that the listing has (a
    cache copied with its dataset, or written on another machine). One that maps onto none is an
    error: training on it would read another copy's images while the run names this one."""
    listed = {os.path.normpath(item.path) for items in lists.values() for item in items}
    if not listed:
        return cached
    out, changed, foreign, depth = {}, 0, [], None
    for split, items in cached.items():
        out[split] = []
        for item in items:
            if os.path.normpath(item.path) in listed:
                out[split].append(item)
                continue
            mapped = None
            if dataset_dir is not None:
                mapped, depth = _tail_onto(item.path, dataset_dir, lambda c: os.path.normpath(c) in listed, depth)
            if mapped is None:
                if os.path.isfile(item.path):  # a missing one is reported as missing, below
                    foreign.append(item.path)
                out[split].append(item)
            else:
                out[split].append(dataclasses.replace(item, path=os.path.normpath(mapped)))
                changed += 1
    if foreign:
        raise CorruptFileError(
            f"few-shot cache {cache_path} lists {len(foreign)} image(s) that are not images of the dataset in "
            f"{dataset_dir}, e.g. {foreign[0]}: it was written for other data (another copy, or images since "
            "removed). Delete it to sample again.", field="dataset")
    if changed:
        notes.append(f"re-rooted {changed} image paths of the few-shot cache {cache_path} onto {dataset_dir}")
    return out


def _relative(path: str, base: str) -> str:
    return path[len(base):].lstrip("/\\") if base and path.startswith(base) else path


def _digest(classnames: Sequence[str], lists: dict[str, list[Datum]], base: Path | None,
            sizes: bool = False) -> str:
    """SHA-256 over the class names and every item (relative path, label, class name[, size])."""
    import hashlib

    prefix = str(base) if base is not None else ""
    digest = hashlib.sha256("\x1f".join(classnames).encode("utf-8"))
    for split in sorted(lists):
        rows = [f"{_relative(i.path, prefix)}\t{i.label}\t{i.classname}" + (
            f"\t{os.path.getsize(i.path) if os.path.isfile(i.path) else -1}" if sizes else "") for i in lists[split]]
        digest.update(f"\x1e{split}\x1e".encode("utf-8") + "\n".join(rows).encode("utf-8"))
    return digest.hexdigest()


def _as_int(value, what: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be an integer, got {value!r}", field=what)
    try:
        return operator.index(value)  # int, numpy integers; not floats or strings
    except TypeError:
        raise ConfigError(f"{what} must be an integer, got {value!r}", field=what) from None


def _looks_like_path(text: str) -> bool:
    return ("/" in text or os.sep in text or text.startswith((".", "~"))
            or text.lower().endswith((".csv", ".json", ".tsv")))


def dataset_identity(name_or_path) -> str:
    """What a dataset argument names, spelled one way: a registered name as it is, a path as its
    resolved absolute form (``data/tiny``, ``./data/tiny`` and ``/abs/data/tiny`` are one
    dataset). Compare datasets with this, never by their spelling."""
    text = str(name_or_path)
    if not _looks_like_path(text) and get_dataset_spec(text) is not None:
        return text
    path = Path(os.path.expanduser(text))
    return str(path.resolve()) if (path.exists() or _looks_like_path(text)) else text


def _resolve_source(name_or_path, root, notes: list[str]):
    """(spec or None, root): a registered name, or a path (possibly a benchmark's own folder)."""
    if isinstance(name_or_path, str) and not _looks_like_path(name_or_path):
        spec = get_dataset_spec(name_or_path)
        if spec is not None:
            return spec, root
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        # A benchmark's own folder given as a path (e.g. /data/oxford_pets): read it as that
        # benchmark rather than as a tree of class folders.
        for spec in _REGISTRY.values():
            if spec.builtin and spec.folder == path.name and _has_benchmark_marker(path):
                notes.append(f"{path} is laid out as the {spec.name!r} benchmark; reading it as such")
                return spec, path
    return None, root


def _has_benchmark_marker(folder: Path) -> bool:
    markers = ("classnames.txt", "variants.txt", "preprocessed.pkl")
    return any(folder.glob("split_zhou_*.json")) or any((folder / m).is_file() for m in markers)


@dataclass
class _Source:
    """Where a load reads from: the dataset's name, folder, reader and how it is sampled."""

    name: str
    dataset_dir: Path
    read: Callable[[ReadContext], tuple]
    test_only: bool = False
    sample_val: bool = True
    val_is_test: bool = False
    cache_dir: Path | None = None

    @property
    def label(self) -> str:
        return f"dataset {self.name!r}"


def _resolve(name_or_path, root, subsample: str, notes: list, use_cache: bool) -> _Source:
    """Step 1: a registered dataset (its folder under the root) or the user's own data."""
    spec, root = _resolve_source(name_or_path, root, notes)
    if spec is not None:
        if subsample != "all" and not spec.supports_subsample:
            raise ConfigError(
                f"dataset {spec.name!r} has no base/new class split (the reference protocols evaluate it on all "
                f"of its classes, e.g. as a domain-generalisation target); use subsample='all' instead of "
                f"{subsample!r}", field="subsample")
        if spec.builtin:
            dataset_dir = _benchmark_dataset_dir(spec, root)
        else:
            # No existence check here: a registered reader may generate its data on demand.
            dataset_dir = (Path(os.path.expanduser(str(root))).absolute() if root is not None
                           else _resolve_default_root(spec))
        return _Source(spec.name, dataset_dir, spec.reader, spec.test_only, spec.sample_val, spec.val_is_test,
                       dataset_dir if (spec.cache_fewshot and use_cache) else None)
    path = Path(os.path.expanduser(str(name_or_path)))
    if not path.exists():
        valid = ", ".join(available_datasets())
        raise ConfigError(f"unknown dataset {str(name_or_path)!r}: it is neither a registered "
                          f"name ({valid}) nor an existing folder or .csv/.json file. "
                          f"{DOCS_HINT}", field="dataset")
    from mudpt.data.custom import read_custom

    return _Source(str(path), path.absolute() if path.is_dir() else path.absolute().parent,
                   lambda ctx: read_custom(path, notes=ctx.notes))


def _read(source: _Source, ctx: ReadContext) -> tuple[list[str], dict]:
    """Step 2: the reader's lists, as :class:`Datum` s with labels checked against the classes."""
    result = source.read(ctx)
    if not isinstance(result, tuple) or len(result) != 4:
        raise TypeError(f"reader of {source.label} must return (train, val, test, classnames), got "
                        f"{type(result).__name__}")
    train, val, test, classnames = result
    # the methods' own check, so that what `data check` passes `train` accepts
    classnames = validate_classnames([str(classname) for classname in classnames], source=source.label)
    lists = {split: _coerce_items(items, source.label, split)
             for split, items in (("train", train), ("val", val), ("test", test))}
    _check_labels(classnames, lists, source.label)
    return classnames, lists


def _sample(source: _Source, classnames: list, lists: dict, shots: int, seed: int, rng: random.Random,
            notes: list, check_files: bool, repeat_short_classes: bool) -> tuple[dict, Path | None]:
    """Step 4: the few-shot sample (read from or written to the dataset's cache where it has one)."""
    cache_path = None
    if shots >= 1 and source.test_only:
        notes.append(f"{source.name} is a test-only dataset: shots={shots} ignored")
    elif shots >= 1:
        cache_path = fewshot_cache_path(source.cache_dir, shots, seed) if source.cache_dir else None
        if cache_path is not None and cache_path.is_file():
            cached = load_fewshot_cache(cache_path)
            cached_lists = {"train": cached["train"]}
            if source.sample_val:
                cached_lists["val"] = cached.get("val", [])
            _check_labels(classnames, cached_lists, str(cache_path))
            cached_lists = _cached_items_of_listing(cached_lists, lists, source.dataset_dir, cache_path, notes)
            if check_files:
                cached_lists = _validate_files(
                    cached_lists, f"few-shot cache {cache_path}", source.dataset_dir, notes,
                    hint="The cache lists images that are not in this dataset folder (even after "
                         "re-rooting its paths onto it): delete it to sample again, or fix the "
                         "dataset folder. See docs/DATASETS.md.")
            lists = {**lists, **cached_lists}
            notes.append(f"few-shot split read from {cache_path}")
        else:
            lists = {**lists, "train": sample_fewshot(lists["train"], shots, rng, repeat_short_classes)}
            payload = {"train": lists["train"]}
            if source.sample_val:
                lists["val"] = sample_fewshot(lists["val"], min(shots, 4), rng, repeat_short_classes)
                payload["val"] = lists["val"]
            if cache_path is not None:
                if save_fewshot_cache(cache_path, payload):
                    notes.append(f"few-shot split sampled and saved to {cache_path}")
                else:
                    cache_path = None
            else:
                notes.append("few-shot split sampled (no cache for this dataset)")
    if source.val_is_test:
        lists = {**lists, "val": lists["test"]}
    return lists, cache_path


def load_dataset(name_or_path: PathLike, root: PathLike | None = None, shots: int = 0,
                 seed: int = 1, subsample: str = "all", *, check_files: bool = True,
                 use_cache: bool = True, repeat_short_classes: bool = False) -> LoadedDataset:
    """Load a benchmark, registered or bring-your-own dataset: resolve where it is, read its
    lists, validate them (labels, files), sample the few-shot split, take the class subset.

    Args:
        name_or_path: a registered name (see :func:`available_datasets`; aliases like
            ``caltech-101`` or ``OxfordPets`` work) or a path to your own data: an image-folder
            tree, or a ``.csv`` / ``.json`` list (see docs/DATASETS.md).
        root: for benchmarks, the folder holding ``caltech-101/``, ``oxford_pets/``, ...
            (default: ``$MUDPT_DATA_ROOT``); for registered datasets, their folder (default:
            their ``default_root``).
        shots: K >= 1 samples K training images per class (and min(K, 4) validation images)
            exactly as the CoOp reference does; 0 keeps the full splits.
        seed: few-shot seed S (cache ``split_fewshot/shot_{K}-seed_{S}.pkl``).
        subsample: ``"all"``, ``"base"`` (first ceil(C/2) classes) or ``"new"`` (the rest);
            labels re-mapped to 0.. within the subset.  Applied after few-shot sampling.
        check_files: verify that every listed image exists (as the reference does).
        use_cache: read and write ``split_fewshot`` caches where the dataset has them.
        repeat_short_classes: a class with fewer than K items is filled up to K by drawing
            with replacement (``random.choices``) instead of keeping its items once.  The
            current reference keeps them (the default here); Dassl versions before 2022
            repeated them.  It only matters for classes smaller than K.
    """
    if subsample not in SUBSAMPLE_CHOICES:
        raise ConfigError(f"subsample must be one of {SUBSAMPLE_CHOICES}, got {subsample!r}", field="subsample")
    shots, seed = _as_int(shots, "shots"), _as_int(seed, "seed")
    if shots < 0:
        raise ConfigError(f"shots must be an integer >= 0, got {shots!r}", field="shots")
    notes: list[str] = []
    source = _resolve(name_or_path, root, subsample, notes, use_cache)
    # One generator for the whole load, as the reference seeds once before building the
    # dataset: a split file built on the fly draws first, the few-shot sample next.
    ctx = ReadContext(source.dataset_dir, random.Random(seed), notes)
    classnames, lists = _read(source, ctx)
    if check_files:
        lists = _validate_files(lists, source.label, source.dataset_dir, notes)
    content_digest = _digest(classnames, lists, source.dataset_dir)
    lists, cache_path = _sample(source, classnames, lists, shots, seed, ctx.rng, notes, check_files,
                                repeat_short_classes)
    classnames, train, val, test = subsample_classes(
        classnames, lists["train"], lists["val"], lists["test"], subsample=subsample)
    fingerprint = {"content": content_digest,
                   "sample": _digest(classnames, {"train": train, "val": val, "test": test}, source.dataset_dir,
                                     sizes=True)}
    name, dataset_dir = source.name, source.dataset_dir
    dataset = LoadedDataset(name=name, train=train, val=val, test=test, classnames=classnames,
                            dataset_dir=dataset_dir, shots=shots, seed=seed, subsample=subsample,
                            fewshot_cache=cache_path, notes=notes, fingerprint=fingerprint)
    log.info(dataset.summary())
    return dataset
