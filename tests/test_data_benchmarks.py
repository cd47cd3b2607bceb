"""The 15 benchmark readers on fake trees: counts, class names, label order, split building."""

import json
import os
import random

import pytest

import mudpt.data as data
from fake_benchmarks import FAKE_BENCHMARKS, make_fake_benchmark, write_image

BUILDABLE = ("caltech101", "dtd", "eurosat", "food101", "oxford_pets", "sun397", "ucf101",
             "oxford_flowers", "stanford_cars")


def _counts(ds):
    return {"train": len(ds.train), "val": len(ds.val), "test": len(ds.test)}


@pytest.mark.parametrize("name", FAKE_BENCHMARKS)
def test_reader_counts_classnames_and_labels(tmp_path, name):
    fake = make_fake_benchmark(tmp_path, name)
    ds = data.load_dataset(name, root=tmp_path)
    assert ds.name == name
    assert ds.classnames == fake.classnames
    assert _counts(ds) == fake.counts
    for item in ds.train + ds.val + ds.test:
        assert os.path.isabs(item.path) and os.path.isfile(item.path)
        assert item.impath == item.path
        assert ds.classnames[item.label] == item.classname


@pytest.mark.parametrize("name", BUILDABLE)
def test_split_file_built_from_annotations_and_reused(tmp_path, name):
    fake = make_fake_benchmark(tmp_path, name, with_split_file=False)
    ds = data.load_dataset(name, root=tmp_path, seed=3)
    assert ds.classnames == fake.classnames
    assert _counts(ds) == fake.counts
    split_files = list(fake.dataset_dir.glob("split_zhou_*.json"))
    assert len(split_files) == 1
    rows = json.loads(split_files[0].read_text())
    assert {k: len(v) for k, v in rows.items()} == fake.counts
    assert all(not row[0].startswith("/") for row in rows["train"])
    # A second load reads the saved file (whatever the seed) and gives the same lists.
    again = data.load_dataset(name, root=tmp_path, seed=7)
    assert [i.path for i in again.train] == [i.path for i in ds.train]
    assert [i.path for i in again.test] == [i.path for i in ds.test]


def _independent_folder_split(image_dir, seed, ignored=(), renames=None):
    """The reference recipe written out plainly, with the global random module."""
    random.seed(seed)
    categories = sorted(c for c in os.listdir(image_dir) if not c.startswith(".") and c not in ignored)
    train, val, test = [], [], []
    for label, category in enumerate(categories):
        files = [os.path.join(image_dir, category, f) for f in os.listdir(os.path.join(image_dir, category))
                 if not f.startswith(".")]
        random.shuffle(files)
        n_train, n_val = round(len(files) * 0.5), round(len(files) * 0.2)
        name = (renames or {}).get(category, category)
        train += [(f, label, name) for f in files[:n_train]]
        val += [(f, label, name) for f in files[n_train:n_train + n_val]]
        test += [(f, label, name) for f in files[n_train + n_val:]]
    return train, val, test


def _triples(items):
    return [(i.path, i.label, i.classname) for i in items]


def test_built_folder_split_and_fewshot_match_reference_random_stream(tmp_path):
    fake = make_fake_benchmark(tmp_path, "eurosat", with_split_file=False, per_class=12)
    ds = data.load_dataset("eurosat", root=tmp_path, seed=2, shots=2)
    train, val, test = _independent_folder_split(fake.dataset_dir / "2750", 2,
                                                 renames=data.benchmarks.EUROSAT_CLASSNAMES)
    assert _triples(ds.test) == test
    # The reference draws the few-shot sample from the same stream, right after the split.
    expected_train, expected_val = [], []
    for source, k, out in ((train, 2, expected_train), (val, 2, expected_val)):
        groups = {}
        for triple in source:
            groups.setdefault(triple[1], []).append(triple)
        for members in groups.values():
            out.extend(random.sample(members, k) if len(members) >= k else members)
    assert _triples(ds.train) == expected_train
    assert _triples(ds.val) == expected_val


def test_flowers_split_built_from_mat_labels_like_the_reference(tmp_path):
    fake = make_fake_benchmark(tmp_path, "oxford_flowers", with_split_file=False)
    ds = data.load_dataset("oxford_flowers", root=tmp_path, seed=4)
    # Reference recipe: labels grouped in order of first appearance, each group shuffled.
    random.seed(4)
    labels = [3, 1, 2] * 10
    groups = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(str(fake.dataset_dir / "jpg" / f"image_{index + 1:05d}.jpg"))
    expected_train = []
    for label, paths in groups.items():
        random.shuffle(paths)
        expected_train += [(p, label - 1, fake.classnames[label - 1]) for p in paths[:5]]
    assert _triples(ds.train) == expected_train


def test_cars_split_built_from_mat_annotations(tmp_path):
    fake = make_fake_benchmark(tmp_path, "stanford_cars", with_split_file=False)
    ds = data.load_dataset("stanford_cars", root=tmp_path)
    assert ds.classnames == ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2007 BMW X5 SUV"]
    assert all("/cars_test/" in i.path for i in ds.test)
    rows = json.loads((fake.dataset_dir / "split_zhou_StanfordCars.json").read_text())
    assert rows["test"][0][0].startswith("cars_test/")


def test_unreadable_mat_annotations_name_the_file(tmp_path):
    from mudpt.core.errors import CorruptFileError

    fake = make_fake_benchmark(tmp_path, "oxford_flowers", with_split_file=False)
    (fake.dataset_dir / "imagelabels.mat").write_bytes(b"\x89HDF\r\n" + b"\0" * 200)
    with pytest.raises(CorruptFileError, match=r"imagelabels\.mat: cannot read this MATLAB file"):
        data.load_dataset("oxford_flowers", root=tmp_path)


def test_caltech_ignores_background_and_renames(tmp_path):
    make_fake_benchmark(tmp_path, "caltech101", with_split_file=False)
    ds = data.load_dataset("caltech101", root=tmp_path)
    assert "BACKGROUND_Google" not in ds.classnames and "Faces_easy" not in ds.classnames
    assert ds.classnames == ["face", "accordion", "airplane", "anchor"]


def test_imagenet_val_is_test_and_preprocessed_pickle_is_written_and_honoured(tmp_path):
    fake = make_fake_benchmark(tmp_path, "imagenet")
    ds = data.load_dataset("imagenet", root=tmp_path)
    assert _triples(ds.val) == _triples(ds.test)
    pkl = fake.dataset_dir / "preprocessed.pkl"
    assert pkl.is_file()
    # Directory order of files is kept (not sorted), as os.listdir returns it.
    first_class = sorted(os.listdir(fake.dataset_dir / "images" / "train"))[0]
    listed = os.listdir(fake.dataset_dir / "images" / "train" / first_class)
    assert [os.path.basename(i.path) for i in ds.train if i.label == 0] == listed
    # The cached lists fix the order from now on, even if the folder changes.
    write_image(fake.dataset_dir / "images" / "train" / first_class / "zz_new.jpg", 5)
    again = data.load_dataset("imagenet", root=tmp_path)
    assert _triples(again.train) == _triples(ds.train)
    assert any("preprocessed.pkl" in note for note in again.notes)


def test_imagenet_fewshot_samples_train_only(tmp_path):
    make_fake_benchmark(tmp_path, "imagenet")
    ds = data.load_dataset("imagenet", root=tmp_path, shots=2, seed=1)
    assert len(ds.train) == 2 * 4 and len(ds.test) == 12 and len(ds.val) == 12
    cache = data.load_fewshot_cache(ds.fewshot_cache)
    assert set(cache) == {"train"}


def test_imagenet_a_r_labels_follow_sorted_wnids(tmp_path):
    for name in ("imagenet_a", "imagenet_r"):
        fake = make_fake_benchmark(tmp_path, name)
        ds = data.load_dataset(name, root=tmp_path, shots=16)  # shots ignored: test only
        assert ds.train == [] and ds.val == []
        assert ds.classnames == fake.classnames == ["goldfish", "tiger shark", "electric ray"]
        by_label = {}
        for item in ds.test:
            by_label.setdefault(item.label, set()).add(os.path.basename(os.path.dirname(item.path)))
        assert by_label == {0: {"n00000002"}, 1: {"n00000004"}, 2: {"n00000006"}}
        assert any("test-only" in note for note in ds.notes)


def test_imagenetv2_folder_index_is_label(tmp_path):
    make_fake_benchmark(tmp_path, "imagenetv2")
    ds = data.load_dataset("imagenetv2", root=tmp_path)
    for item in ds.test:
        assert os.path.basename(os.path.dirname(item.path)) == str(item.label)
    assert ds.classnames[2] == "great white shark"


def test_aliases_and_root_pointing_at_dataset_folder(tmp_path):
    fake = make_fake_benchmark(tmp_path, "oxford_pets")
    assert data.load_dataset("OxfordPets", root=tmp_path).name == "oxford_pets"
    assert data.load_dataset("oxford_pets", root=fake.dataset_dir).classnames == fake.classnames


def test_base_new_split_remaps_labels(tmp_path):
    make_fake_benchmark(tmp_path, "fgvc_aircraft")  # 4 classes: base 0,1 / new 2,3
    full = data.load_dataset("fgvc_aircraft", root=tmp_path)
    base = data.load_dataset("fgvc_aircraft", root=tmp_path, subsample="base")
    new = data.load_dataset("fgvc_aircraft", root=tmp_path, subsample="new")
    assert base.classnames == full.classnames[:2] and new.classnames == full.classnames[2:]
    for split in ("train", "val", "test"):
        assert _triples(getattr(base, split)) == [t for t in _triples(getattr(full, split)) if t[1] < 2]
        assert _triples(getattr(new, split)) == [(p, y - 2, c) for p, y, c in
                                                 _triples(getattr(full, split)) if y >= 2]


def test_base_new_odd_class_count_uses_ceil(tmp_path):
    make_fake_benchmark(tmp_path, "food101")  # 3 classes: base 2, new 1
    assert len(data.load_dataset("food101", root=tmp_path, subsample="base").classnames) == 2
    new = data.load_dataset("food101", root=tmp_path, subsample="new")
    assert new.classnames == ["baklava"] and {i.label for i in new.test} == {0}


# ------------------------------------------------------------------------------- errors
def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'no_such_set'.*caltech101.*oxford_pets"):
        data.load_dataset("no_such_set")


def test_missing_root_says_how_to_pass_it(monkeypatch):
    monkeypatch.delenv("MUDPT_DATA_ROOT", raising=False)
    with pytest.raises(ValueError, match=r"give root=\.\.\. \(the folder holding .*caltech-101/.*oxford_pets/"):
        data.load_dataset("dtd")


def test_root_from_environment(tmp_path, monkeypatch):
    make_fake_benchmark(tmp_path, "dtd")
    monkeypatch.setenv("MUDPT_DATA_ROOT", str(tmp_path))
    assert data.load_dataset("dtd").num_classes == 4


def test_missing_dataset_folder_names_path_and_docs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"sun397.*docs/DATASETS\.md"):
        data.load_dataset("sun397", root=tmp_path)


def test_missing_split_file_and_annotations(tmp_path):
    (tmp_path / "stanford_cars").mkdir()
    with pytest.raises(FileNotFoundError, match=r"cars_meta\.mat.*DATASETS\.md"):
        data.load_dataset("stanford_cars", root=tmp_path)


def test_split_naming_missing_images_reports_count_and_examples(tmp_path):
    fake = make_fake_benchmark(tmp_path, "dtd")
    removed = sorted((fake.dataset_dir / "images" / "banded").iterdir())[:7]
    for path in removed:
        path.unlink()
    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset("dtd", root=tmp_path)
    message = str(info.value)
    assert "7 image file(s) that do not exist" in message
    assert "and 2 more" in message and "banded" in message


def test_aircraft_unknown_variant_names_file_and_line(tmp_path):
    fake = make_fake_benchmark(tmp_path, "fgvc_aircraft")
    path = fake.dataset_dir / "images_variant_val.txt"
    lines = path.read_text().splitlines()
    lines[2] = "1000001 Boeing 999"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"images_variant_val\.txt, line 3: variant 'Boeing 999'"):
        data.load_dataset("fgvc_aircraft", root=tmp_path)


def test_bad_subsample_and_shots():
    with pytest.raises(ValueError, match="subsample must be one of"):
        data.load_dataset("dtd", root="/nonexistent", subsample="half")
    with pytest.raises(ValueError, match="shots must be an integer >= 0"):
        data.load_dataset("dtd", root="/nonexistent", shots=-1)


def test_numpy_integers_accepted_floats_refused(tmp_path):
    import numpy as np

    make_fake_benchmark(tmp_path, "dtd")
    ds = data.load_dataset("dtd", root=tmp_path, shots=np.int64(1), seed=np.int32(2))
    assert len(ds.train) == 4 and ds.fewshot_cache.name == "shot_1-seed_2.pkl"
    with pytest.raises(ValueError, match="seed must be an integer, got 1.5"):
        data.load_dataset("dtd", root=tmp_path, seed=1.5)
