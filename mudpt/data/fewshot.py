"""Few-shot sampling identical to the CoOp/Dassl reference, and its ``split_fewshot`` caches.

The reference seeds Python's ``random`` with the run's seed and then, for each list to
sample (train, then val), groups the items by label in order of first appearance and
draws ``random.sample(items, K)`` per label.  We draw from a private
``random.Random(seed)`` instead of the global generator: its stream is the very same as
``random.seed(seed)`` followed by module-level calls, so the sampled items are identical,
while the caller's global random state is left alone.

Cached samples live in ``<dataset>/split_fewshot/shot_{K}-seed_{S}.pkl`` holding
``{"train": [Datum, ...], "val": [...]}`` (ImageNet: ``{"train": [...]}``).  The reference
pickles ``dassl.data.datasets.base_dataset.Datum`` objects.  We read them with a
restricted unpickler that maps exactly that class onto our :class:`Datum` and refuses any
other global, so no ``dassl`` install is needed and a hostile pickle cannot run code.  Our
own caches are written in the same format (same class reference, same attribute names),
so the reference code can read them too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import random
import sys
import threading
import types
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from mudpt.core.errors import CorruptFileError, UnsafePickleError
from mudpt.data.items import Datum
from mudpt.core.files import atomic_write_bytes

log = logging.getLogger(__name__)

#: Module and class name under which the reference code pickles its data items.
REFERENCE_DATUM_MODULE = "dassl.data.datasets.base_dataset"
REFERENCE_DATUM_NAME = "Datum"
_ALLOWED_GLOBALS = {
    (REFERENCE_DATUM_MODULE, REFERENCE_DATUM_NAME): Datum,
    (Datum.__module__, Datum.__qualname__): Datum,
}


def group_by_label(items: Iterable[Datum]) -> dict[int, list[Datum]]:
    """Group items by label, keys in order of first appearance (as the reference does)."""
    groups: dict[int, list[Datum]] = defaultdict(list)
    for item in items:
        groups[item.label].append(item)
    return groups


def sample_fewshot(items: Sequence[Datum], num_shots: int, rng: random.Random,
                   repeat: bool = False) -> list[Datum]:
    """Draw ``num_shots`` items per label exactly as the reference ``generate_fewshot_dataset``.

    A class with fewer than ``num_shots`` items keeps all of them (``repeat=False``, the
    reference default for these datasets) or is filled up with ``rng.choices``
    (``repeat=True``).  ``num_shots < 1`` returns the list unchanged.
    """
    if num_shots < 1:
        return list(items)
    sampled: list[Datum] = []
    for members in group_by_label(items).values():
        if len(members) >= num_shots:
            sampled.extend(rng.sample(members, num_shots))
        elif repeat:
            sampled.extend(rng.choices(members, k=num_shots))
        else:
            sampled.extend(members)
    return sampled


def fewshot_cache_path(dataset_dir: str | os.PathLike, num_shots: int, seed: int) -> Path:
    """The reference's cache location: ``<dataset_dir>/split_fewshot/shot_{K}-seed_{S}.pkl``."""
    return Path(dataset_dir) / "split_fewshot" / f"shot_{num_shots}-seed_{seed}.pkl"


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str):
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise UnsafePickleError(
                f"{self._source}: refusing to load the global '{module}.{name}'. Few-shot and "
                f"split caches may only contain '{REFERENCE_DATUM_MODULE}.{REFERENCE_DATUM_NAME}' "
                "items inside plain lists and dicts; this file was not written by the CoOp/Dassl "
                "reference code or by mudpt. Delete it (it is re-created on demand) if you do not "
                "trust it.")
        return target


def load_reference_pickle(path: str | os.PathLike):
    """Load a cache pickled by the reference code (or by us) without importing ``dassl``.

    Only plain containers and the reference ``Datum`` class (mapped onto ours) are allowed;
    any other global raises :class:`UnsafePickleError` naming the file and the global.
    """
    path = Path(path)
    with path.open("rb") as handle:
        try:
            return _RestrictedUnpickler(handle, str(path)).load()
        except UnsafePickleError:
            raise
        except Exception as error:  # truncated / not a pickle at all
            raise CorruptFileError(
                f"{path}: cannot read this cache pickle ({type(error).__name__}: {error}). "
                "Delete it; it is re-created on demand.") from error


# Our caches name the reference's class so that the reference code reads them. ``pickle``
# writes a class by reference only when it can find it under its module name, and ``dassl`` is
# usually not installed: while one cache is being written, a stand-in class is registered under
# the reference's module path (and removed afterwards), and every Datum is pickled as an instance
# of it with the reference's attribute names. The output is byte for byte the reference's own
# ``pickle.dump``.
_PICKLE_LOCK = threading.Lock()


@contextlib.contextmanager
def _reference_datum_class():
    """The reference Datum class: dassl's own when it is imported, else a temporary stand-in."""
    module = sys.modules.get(REFERENCE_DATUM_MODULE)
    if module is not None and hasattr(module, REFERENCE_DATUM_NAME):
        yield getattr(module, REFERENCE_DATUM_NAME)
        return
    with _PICKLE_LOCK:
        parts = REFERENCE_DATUM_MODULE.split(".")
        added = [name for name in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if name not in sys.modules]
        for name in added:
            sys.modules[name] = types.ModuleType(name)
        stand_in = type(REFERENCE_DATUM_NAME, (), {"__module__": REFERENCE_DATUM_MODULE,
                                                   "__qualname__": REFERENCE_DATUM_NAME})
        setattr(sys.modules[REFERENCE_DATUM_MODULE], REFERENCE_DATUM_NAME, stand_in)
        try:
            yield stand_in
        finally:
            for name in reversed(added):
                sys.modules.pop(name, None)


def _to_reference_objects(obj, datum_class, memo: dict):
    """Copy dicts/lists/tuples, turning each Datum into an instance of the reference class with
    the reference's attribute names and order (shared items stay shared)."""
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, Datum):
        converted = datum_class.__new__(datum_class)
        converted.__dict__.update(_impath=obj.path, _label=int(obj.label), _domain=int(obj.domain),
                                  _classname=obj.classname)
    elif isinstance(obj, dict):
        converted = {key: _to_reference_objects(value, datum_class, memo) for key, value in obj.items()}
    elif isinstance(obj, list):
        converted = [_to_reference_objects(value, datum_class, memo) for value in obj]
    elif isinstance(obj, tuple):
        converted = tuple(_to_reference_objects(value, datum_class, memo) for value in obj)
    else:
        return obj
    memo[id(obj)] = converted
    return converted


def dumps_reference_pickle(obj) -> bytes:
    """Pickle ``obj`` (dicts/lists of :class:`Datum`) exactly as the reference code would."""
    with _reference_datum_class() as datum_class:
        return pickle.dumps(_to_reference_objects(obj, datum_class, {}), protocol=pickle.HIGHEST_PROTOCOL)


def save_fewshot_cache(path: str | os.PathLike, data: dict) -> bool:
    """Write a few-shot cache atomically; returns False (with a warning) if not writable."""
    try:
        atomic_write_bytes(path, dumps_reference_pickle(data))
    except OSError as error:
        log.warning("could not write the few-shot cache %s (%s); continuing without it",
                    path, error)
        return False
    log.info("saved few-shot split to %s", path)
    return True


def load_fewshot_cache(path: str | os.PathLike) -> dict:
    """Read a ``split_fewshot`` cache and check its structure."""
    data = load_reference_pickle(path)
    if not isinstance(data, dict) or "train" not in data:
        raise CorruptFileError(f"{path}: expected a dict with a 'train' list (and usually 'val') of "
                         f"data items, got {type(data).__name__}. Delete it to re-create it.")
    for key, items in data.items():
        if not isinstance(items, list) or not all(isinstance(item, Datum) for item in items):
            raise CorruptFileError(f"{path}: entry {key!r} must be a list of data items. "
                             "Delete the file to re-create it.")
    return data
