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

import logging
import os
import pickle
import random
import sys
import types
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from mudpt.data.items import Datum
from mudpt.files import atomic_write_bytes

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


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referenced a global other than the reference data-item class."""


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
            raise pickle.UnpicklingError(
                f"{path}: cannot read this cache pickle ({type(error).__name__}: {error}). "
                "Delete it; it is re-created on demand.") from error


# Our caches must name the reference's class, but ``pickle`` only writes a class it can
# import, and ``dassl`` is usually not installed.  So items are pickled (by the fast C
# pickler) as instances of a stand-in class whose module name has exactly the length of the
# reference module's name; that one name is then swapped in the output.  Equal lengths keep
# every length field and frame size valid, so the result is byte for byte what the
# reference's own ``pickle.dump`` writes.
_ALIAS_MODULE = "mudpt.data._dassl_datum_alias___"
assert len(_ALIAS_MODULE) == len(REFERENCE_DATUM_MODULE)


class _ReferenceDatum:
    """Stand-in carrying the reference Datum's attributes, only ever used while pickling."""


_ReferenceDatum.__module__ = _ALIAS_MODULE
_ReferenceDatum.__qualname__ = _ReferenceDatum.__name__ = REFERENCE_DATUM_NAME
sys.modules.setdefault(_ALIAS_MODULE, types.ModuleType(_ALIAS_MODULE))
setattr(sys.modules[_ALIAS_MODULE], REFERENCE_DATUM_NAME, _ReferenceDatum)


def _to_reference_objects(obj, memo: dict):
    """Copy dicts/lists/tuples, turning each Datum into a _ReferenceDatum (sharing preserved)."""
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, Datum):
        stand_in = _ReferenceDatum()
        # Attribute names and insertion order of the reference Datum's __init__.
        stand_in.__dict__.update(_impath=obj.path, _label=int(obj.label),
                                 _domain=int(obj.domain), _classname=obj.classname)
        converted = stand_in
    elif isinstance(obj, dict):
        converted = {key: _to_reference_objects(value, memo) for key, value in obj.items()}
    elif isinstance(obj, list):
        converted = [_to_reference_objects(value, memo) for value in obj]
    elif isinstance(obj, tuple):
        converted = tuple(_to_reference_objects(value, memo) for value in obj)
    else:
        return obj
    memo[id(obj)] = converted
    return converted


def dumps_reference_pickle(obj) -> bytes:
    """Pickle ``obj`` (dicts/lists of :class:`Datum`) exactly as the reference code would."""
    blob = pickle.dumps(_to_reference_objects(obj, {}), protocol=pickle.HIGHEST_PROTOCOL)
    # The class is saved (once) before the first item's fields, so the first occurrence of
    # the stand-in's module name is that class reference: SHORT_BINUNICODE <len> <name>.
    alias = bytes([pickle.SHORT_BINUNICODE[0], len(_ALIAS_MODULE)]) + _ALIAS_MODULE.encode()
    position = blob.find(alias)
    if position < 0:
        return blob  # no data items in obj
    following = blob[position + len(alias):position + len(alias) + 9]
    if following != b"\x94\x8c\x05Datum\x94":
        raise AssertionError("unexpected pickle layout around the data-item class reference")
    target = bytes([pickle.SHORT_BINUNICODE[0], len(REFERENCE_DATUM_MODULE)])
    return blob[:position] + target + REFERENCE_DATUM_MODULE.encode() + blob[position + len(alias):]


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
        raise ValueError(f"{path}: expected a dict with a 'train' list (and usually 'val') of "
                         f"data items, got {type(data).__name__}. Delete it to re-create it.")
    for key, items in data.items():
        if not isinstance(items, list) or not all(isinstance(item, Datum) for item in items):
            raise ValueError(f"{path}: entry {key!r} must be a list of data items. "
                             "Delete the file to re-create it.")
    return data
