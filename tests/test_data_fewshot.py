"""Few-shot sampling identical to the reference, and reading/writing its pickle caches."""

import os
import pickle
import random
import sys
import types

import pytest

import mudpt.data as data
from mudpt.core.errors import CorruptFileError
from mudpt.data.items import Datum
from fake_benchmarks import make_fake_benchmark

DASSL_MODULE = "dassl.data.datasets.base_dataset"


def independent_fewshot(items, num_shots, seed_first=None):
    """The reference algorithm written out plainly, on the global random module."""
    if seed_first is not None:
        random.seed(seed_first)
    groups = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    out = []
    for members in groups.values():
        out.extend(random.sample(members, num_shots) if len(members) >= num_shots else members)
    return out


def _items(n_per_class=(7, 3, 9, 5), shuffled=True):
    items = [Datum(f"/x/c{label}/{i}.jpg", label, f"class {label}")
             for label, n in enumerate(n_per_class) for i in range(n)]
    if shuffled:  # labels interleaved: grouping must follow first appearance
        random.Random(123).shuffle(items)
    return items


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
def test_sample_fewshot_equals_reference_algorithm(seed, shots):
    items = _items()
    ours = data.sample_fewshot(items, shots, random.Random(seed))
    assert ours == independent_fewshot(items, shots, seed_first=seed)
    # Short classes keep all their items; others get exactly K.
    counts = {}
    for item in ours:
        counts[item.label] = counts.get(item.label, 0) + 1
    assert counts == {label: min(n, shots) for label, n in enumerate((7, 3, 9, 5))}


def test_sampling_leaves_global_random_state_alone():
    random.seed(99)
    before = random.getstate()
    data.sample_fewshot(_items(), 2, random.Random(1))
    assert random.getstate() == before


def test_load_dataset_fewshot_train_then_val_from_one_stream(tmp_path):
    make_fake_benchmark(tmp_path, "dtd")  # 4 train, 2 val per class in the split file
    full = data.load_dataset("dtd", root=tmp_path)
    ds = data.load_dataset("dtd", root=tmp_path, shots=2, seed=5, use_cache=False)
    random.seed(5)
    assert ds.train == independent_fewshot(full.train, 2)
    assert ds.val == independent_fewshot(full.val, min(2, 4))
    assert ds.test == full.test
    assert data.load_dataset("dtd", root=tmp_path, shots=2, seed=5, use_cache=False).train == ds.train
    other = data.load_dataset("dtd", root=tmp_path, shots=2, seed=6, use_cache=False)
    assert other.train != ds.train


def test_cache_written_atomically_and_reused(tmp_path):
    fake = make_fake_benchmark(tmp_path, "dtd")
    ds = data.load_dataset("dtd", root=tmp_path, shots=1, seed=2)
    cache = fake.dataset_dir / "split_fewshot" / "shot_1-seed_2.pkl"
    assert ds.fewshot_cache == cache and cache.is_file()
    assert [p.name for p in cache.parent.iterdir()] == ["shot_1-seed_2.pkl"]  # no temp files left
    stored = data.load_fewshot_cache(cache)
    assert stored["train"] == ds.train and stored["val"] == ds.val
    again = data.load_dataset("dtd", root=tmp_path, shots=1, seed=2)
    assert again.train == ds.train and any("read from" in n for n in again.notes)


def test_base_classes_are_taken_after_sampling_all_classes(tmp_path):
    make_fake_benchmark(tmp_path, "dtd")
    everything = data.load_dataset("dtd", root=tmp_path, shots=2, seed=1, use_cache=False)
    base = data.load_dataset("dtd", root=tmp_path, shots=2, seed=1, subsample="base", use_cache=False)
    new = data.load_dataset("dtd", root=tmp_path, shots=2, seed=1, subsample="new", use_cache=False)
    assert [i.path for i in base.train] == [i.path for i in everything.train if i.label < 2]
    assert [i.path for i in new.train] == [i.path for i in everything.train if i.label >= 2]
    assert {i.label for i in new.train} == {0, 1}
    assert new.classnames == everything.classnames[2:]


class _FakeDasslModule:
    """Installs a stand-in ``dassl`` package so the test can pickle like the reference does."""

    def __enter__(self):
        module = types.ModuleType(DASSL_MODULE)

        class Datum:  # the reference class: attributes behind underscores
            def __init__(self, impath="", label=0, domain=0, classname=""):
                self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

        Datum.__module__, Datum.__qualname__ = DASSL_MODULE, "Datum"
        module.Datum = Datum
        self.names = ["dassl", "dassl.data", "dassl.data.datasets", DASSL_MODULE]
        for name in self.names[:-1]:
            sys.modules[name] = types.ModuleType(name)
        sys.modules[DASSL_MODULE] = module
        return Datum

    def __exit__(self, *exc):
        for name in self.names:
            sys.modules.pop(name, None)


def _write_reference_cache(path, train, val):
    with _FakeDasslModule() as RefDatum:
        payload = {"train": [RefDatum(p, y, 0, c) for p, y, c in train],
                   "val": [RefDatum(p, y, 0, c) for p, y, c in val]}
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL)
    assert "dassl" not in sys.modules


def test_reads_reference_pickle_without_dassl(tmp_path):
    fake = make_fake_benchmark(tmp_path, "dtd")
    full = data.load_dataset("dtd", root=tmp_path)
    # Deliberately not what our sampler would draw: the cache must win.
    chosen_train = [(i.path, i.label, i.classname) for i in full.train[::2]]
    chosen_val = [(i.path, i.label, i.classname) for i in full.val[:3]]
    _write_reference_cache(fake.dataset_dir / "split_fewshot" / "shot_16-seed_1.pkl",
                           chosen_train, chosen_val)
    ds = data.load_dataset("dtd", root=tmp_path, shots=16, seed=1)
    assert [(i.path, i.label, i.classname) for i in ds.train] == chosen_train
    assert [(i.path, i.label, i.classname) for i in ds.val] == chosen_val
    assert all(type(i) is Datum and i.domain == 0 for i in ds.train)


def test_reference_pickle_paths_from_another_machine_are_rerooted(tmp_path):
    fake = make_fake_benchmark(tmp_path, "dtd")
    full = data.load_dataset("dtd", root=tmp_path)
    prefix = str(fake.dataset_dir)
    foreign = [("/home/someone/DATA/dtd" + i.path[len(prefix):], i.label, i.classname)
               for i in full.train[:4]]
    _write_reference_cache(fake.dataset_dir / "split_fewshot" / "shot_4-seed_1.pkl", foreign, [])
    ds = data.load_dataset("dtd", root=tmp_path, shots=4, seed=1)
    assert [i.path for i in ds.train] == [i.path for i in full.train[:4]]
    assert any("re-rooted 4" in note for note in ds.notes)


def test_reference_pickle_naming_unknown_images_is_reported(tmp_path):
    fake = make_fake_benchmark(tmp_path, "dtd")
    _write_reference_cache(fake.dataset_dir / "split_fewshot" / "shot_1-seed_1.pkl",
                           [("/elsewhere/nothing_here.jpg", 0, "banded")], [])
    with pytest.raises(FileNotFoundError, match=r"(?s)shot_1-seed_1\.pkl names 1 image file\(s\).*nothing_here.*delete it"):
        data.load_dataset("dtd", root=tmp_path, shots=1, seed=1)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("payload", [
    {"train": [_Evil()]},
    {"train": [__import__("collections").OrderedDict()]},
])
def test_refuses_pickles_with_other_globals(tmp_path, payload):
    path = tmp_path / "dtd" / "split_fewshot" / "shot_1-seed_1.pkl"
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(data.UnsafePickleError, match=r"refusing to load the global '(posix|nt|os)\.system'"
                       r"|refusing to load the global 'collections\.OrderedDict'"):
        data.load_reference_pickle(path)
    make_fake_benchmark(tmp_path, "dtd")
    with pytest.raises(data.UnsafePickleError, match="shot_1-seed_1.pkl"):
        data.load_dataset("dtd", root=tmp_path, shots=1, seed=1)


def test_our_cache_is_byte_identical_to_a_reference_pickle_and_loads_there(tmp_path):
    items = [Datum("/d/a.jpg", 0, "cat"), Datum("/d/b.jpg", 1, "dog")]
    ours = data.fewshot.dumps_reference_pickle({"train": items, "val": items[:1]})
    with _FakeDasslModule() as RefDatum:
        ref_items = [RefDatum("/d/a.jpg", 0, 0, "cat"), RefDatum("/d/b.jpg", 1, 0, "dog")]
        reference = pickle.dumps({"train": ref_items, "val": ref_items[:1]},
                                 protocol=pickle.HIGHEST_PROTOCOL)
        loaded_there = pickle.loads(ours)
        assert isinstance(loaded_there["train"][1], RefDatum)
        assert loaded_there["train"][1]._classname == "dog"
        assert loaded_there["val"][0] is loaded_there["train"][0]
    assert ours == reference


def test_corrupt_cache_file_gives_clear_error(tmp_path):
    path = tmp_path / "bad.pkl"
    path.write_bytes(b"not a pickle")
    with pytest.raises(CorruptFileError, match=r"bad\.pkl: cannot read this cache pickle"):
        data.load_reference_pickle(path)


def test_unwritable_dataset_folder_still_samples(tmp_path, monkeypatch):
    make_fake_benchmark(tmp_path, "dtd")

    def read_only(path, payload):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(data.fewshot, "atomic_write_bytes", read_only)
    ds = data.load_dataset("dtd", root=tmp_path, shots=1, seed=1)
    assert len(ds.train) == 4 and ds.fewshot_cache is None
    random.seed(1)
    assert ds.train == independent_fewshot(data.load_dataset("dtd", root=tmp_path).train, 1)


@pytest.mark.parametrize("seed", [1, 2])
def test_repeat_mode_matches_random_choices(seed):
    items = _items((2, 6, 1))
    ours = data.sample_fewshot(items, 4, random.Random(seed), repeat=True)
    random.seed(seed)
    groups = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    expected = []
    for members in groups.values():
        expected += random.sample(members, 4) if len(members) >= 4 else random.choices(members, k=4)
    assert ours == expected and len(ours) == 12


def test_load_dataset_repeat_short_classes(tmp_path):
    make_fake_benchmark(tmp_path, "dtd")  # 4 train and 2 val images per class
    ds = data.load_dataset("dtd", root=tmp_path, shots=8, seed=1, use_cache=False,
                           repeat_short_classes=True)
    assert len(ds.train) == 4 * 8 and len(ds.val) == 4 * 4
    plain = data.load_dataset("dtd", root=tmp_path, shots=8, seed=1, use_cache=False)
    assert len(plain.train) == 4 * 4 and len(plain.val) == 4 * 2


def test_large_cache_is_byte_identical_to_reference_pickle():
    # Thousands of items: multi-frame output and long memo indices must still line up.
    triples = [(f"/data/dtd/images/c{i % 47}/img_{i:05d}.jpg", i % 47, f"class {i % 47}")
               for i in range(3000)]
    items = [Datum(p, y, c) for p, y, c in triples]
    ours = data.fewshot.dumps_reference_pickle({"train": items, "val": items[:10]})
    with _FakeDasslModule() as RefDatum:
        ref_items = [RefDatum(p, y, 0, c) for p, y, c in triples]
        reference = pickle.dumps({"train": ref_items, "val": ref_items[:10]},
                                 protocol=pickle.HIGHEST_PROTOCOL)
    assert len(ours) > 200_000 and ours == reference
    assert b"mudpt" not in ours
    # The stand-in module path existed only while the cache was written.
    data.fewshot.dumps_reference_pickle({"train": items[:2]})
    assert "dassl" not in sys.modules and DASSL_MODULE not in sys.modules


def test_a_dataset_copied_with_its_fewshot_cache_trains_on_the_copys_images(tmp_path):
    """The copy's cache holds the original's paths; the original still exists, so nothing was
    missing, and training read the old copy's images while the run named the new one."""
    import shutil
    from pathlib import Path

    make_fake_benchmark(tmp_path / "a", "dtd")
    first = data.load_dataset("dtd", root=tmp_path / "a", shots=2, seed=1)
    assert all(str(tmp_path / "a") in item.path for item in first.train)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert list((tmp_path / "b" / "dtd" / "split_fewshot").glob("*.pkl"))  # the cache came along
    copied = data.load_dataset("dtd", root=tmp_path / "b", shots=2, seed=1)
    assert all(item.path.startswith(str(tmp_path / "b")) for item in copied.train + copied.val)
    assert [Path(i.path).relative_to(tmp_path / "b") for i in copied.train] == \
        [Path(i.path).relative_to(tmp_path / "a") for i in first.train]  # the same sample
    assert any("re-rooted" in note and "few-shot cache" in note for note in copied.notes)


def test_a_fewshot_cache_naming_images_the_dataset_does_not_have_is_refused(tmp_path):
    make_fake_benchmark(tmp_path, "dtd")
    data.load_dataset("dtd", root=tmp_path, shots=2, seed=1)
    cache = next((tmp_path / "dtd" / "split_fewshot").glob("*.pkl"))
    stranger = tmp_path / "elsewhere" / "x.jpg"  # an existing image outside the dataset
    stranger.parent.mkdir()
    stranger.write_bytes(next((tmp_path / "dtd").rglob("*.jpg")).read_bytes())
    payload = data.load_fewshot_cache(cache)
    first = payload["train"][0]
    payload["train"][0] = Datum(str(stranger), first.label, first.classname)
    assert data.save_fewshot_cache(cache, payload)
    with pytest.raises(CorruptFileError, match=r"not images of the dataset.*Delete it to sample again"):
        data.load_dataset("dtd", root=tmp_path, shots=2, seed=1)
