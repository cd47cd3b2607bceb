"""Bring-your-own data (folders, CSV, JSON) and datasets registered by other packages."""

import json
import random

import pytest

import mudpt
import mudpt.data as data
from mudpt.data.items import Datum
from fake_benchmarks import make_fake_benchmark, write_image


def _tree(root, classes, per_class, suffix=".png"):
    for c_index, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"img{i:02d}{suffix}", c_index * 100 + i)


def test_flat_image_folder_gets_deterministic_split(tmp_path):
    _tree(tmp_path / "mine", ["zebra", "apple", "mango"], 10)
    (tmp_path / "mine" / "apple" / "notes.txt").write_text("not an image")
    ds = data.load_dataset(str(tmp_path / "mine"))
    assert ds.classnames == ["apple", "mango", "zebra"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (15, 6, 9)
    assert not any(i.path.endswith(".txt") for i in ds.train + ds.val + ds.test)
    all_paths = [i.path for i in ds.train + ds.val + ds.test]
    assert len(set(all_paths)) == 30
    # The split does not depend on the few-shot seed; the few-shot sample does.
    s1 = data.load_dataset(tmp_path / "mine", shots=2, seed=1)
    s2 = data.load_dataset(tmp_path / "mine", shots=2, seed=2)
    assert [i.path for i in s1.test] == [i.path for i in s2.test] == [i.path for i in ds.test]
    assert [i.path for i in s1.train] != [i.path for i in s2.train]
    assert len(s1.train) == 6 and len(s1.val) == 6
    random.seed(1)
    groups = {}
    for item in ds.train:
        groups.setdefault(item.label, []).append(item)
    expected = [x for members in groups.values() for x in random.sample(members, 2)]
    assert s1.train == expected
    assert any("no explicit splits" in note for note in ds.notes)


def test_folder_with_train_val_test_subtrees(tmp_path):
    _tree(tmp_path / "ds" / "train", ["b", "a"], 4)
    _tree(tmp_path / "ds" / "val", ["a", "b"], 1)
    _tree(tmp_path / "ds" / "test", ["a", "b", "c"], 2)
    ds = data.load_dataset(tmp_path / "ds", subsample="base")
    full = data.load_dataset(tmp_path / "ds")
    assert full.classnames == ["a", "b", "c"]
    assert (len(full.train), len(full.val), len(full.test)) == (8, 2, 6)
    assert ds.classnames == ["a", "b"] and len(ds.test) == 4
    for item in full.test:
        assert f"/test/{item.classname}/" in item.path


def test_missing_val_subtree_gives_empty_val(tmp_path):
    _tree(tmp_path / "ds" / "train", ["a", "b"], 2)
    _tree(tmp_path / "ds" / "test", ["a", "b"], 2)
    ds = data.load_dataset(tmp_path / "ds")
    assert ds.val == [] and any("no val/" in n for n in ds.notes)


def test_empty_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="expected one sub-folder of images per class"):
        data.load_dataset(tmp_path / "empty")
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"class folder\(s\) without images: \['cls'\]"):
        data.load_dataset(tmp_path / "noimg")


def _images(tmp_path, n=6):
    paths = []
    for i in range(n):
        paths.append(write_image(tmp_path / "imgs" / f"{i}.jpg", i))
    return paths


def test_csv_with_classnames_and_splits_relative_paths(tmp_path):
    _images(tmp_path)
    rows = ["path,classname,split", "imgs/0.jpg,dog,train", "imgs/1.jpg,cat,train",
            "imgs/2.jpg,dog,val", f"{tmp_path}/imgs/3.jpg,cat,test", "imgs/4.jpg,bird,test"]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    ds = data.load_dataset(str(tmp_path / "list.csv"))
    assert ds.classnames == ["bird", "cat", "dog"]
    assert [(i.path, i.label) for i in ds.train] == [(str(tmp_path / "imgs/0.jpg"), 2),
                                                    (str(tmp_path / "imgs/1.jpg"), 1)]
    assert len(ds.val) == 1 and len(ds.test) == 2


def test_csv_labels_with_classnames_file_and_auto_split(tmp_path):
    _images(tmp_path)
    (tmp_path / "classnames.txt").write_text("red fox\nbarn owl\n")
    rows = ["path,label"] + [f"imgs/{i}.jpg,{i % 2}" for i in range(6)]
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    ds = data.load_dataset(tmp_path / "l.csv")
    assert ds.classnames == ["red fox", "barn owl"]
    assert len(ds.train + ds.val + ds.test) == 6
    assert all(ds.classnames[i.label] == i.classname for i in ds.train + ds.val + ds.test)


@pytest.mark.parametrize("rows, pattern", [
    (["path,label", "imgs/0.jpg,dog"], r"l\.csv, line 2: label 'dog' is not a non-negative integer"),
    (["path,classname", "imgs/0.jpg,a", ",b"], r"l\.csv, line 3: missing image path"),
    (["file,name", "imgs/0.jpg,a"], r"l\.csv, line 1: header \['file', 'name'\] must name a 'path'"),
    (["path,classname,split", "imgs/0.jpg,a,train", "imgs/1.jpg,b,holdout"],
     r"l\.csv, line 3: split 'holdout' is not one of"),
    (["path,label", "imgs/0.jpg,0", "imgs/1.jpg,1"], r"labels \[0, 1\] have no class name"),
    (["path,label,classname", "imgs/0.jpg,0,a", "imgs/1.jpg,0,b"], r"l\.csv, line 3: label 0 is named 'b'"),
    (["path,classname", "imgs/0.jpg,a,extra"], r"l\.csv, line 2: more values than header"),
])
def test_csv_bad_rows_name_file_and_line(tmp_path, rows, pattern):
    _images(tmp_path, 2)
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=pattern):
        data.load_dataset(tmp_path / "l.csv")


def test_csv_missing_image_is_reported(tmp_path):
    _images(tmp_path, 2)
    (tmp_path / "l.csv").write_text("path,classname,split\nimgs/0.jpg,a,train\nimgs/9.jpg,a,test\n")
    with pytest.raises(FileNotFoundError, match=r"(?s)names 1 image file\(s\).*imgs/9\.jpg"):
        data.load_dataset(tmp_path / "l.csv")


def test_json_list_of_objects_and_triples(tmp_path):
    _images(tmp_path)
    objects = [{"path": f"imgs/{i}.jpg", "classname": "ab"[i % 2], "split": "train" if i < 4 else "test"}
               for i in range(6)]
    (tmp_path / "o.json").write_text(json.dumps(objects))
    ds = data.load_dataset(tmp_path / "o.json")
    assert ds.classnames == ["a", "b"] and len(ds.train) == 4 and len(ds.test) == 2
    triples = [[f"imgs/{i}.jpg", i % 3, "xyz"[i % 3]] for i in range(6)]
    (tmp_path / "t.json").write_text(json.dumps(triples))
    ds = data.load_dataset(tmp_path / "t.json")
    assert ds.classnames == ["x", "y", "z"] and len(ds.train + ds.val + ds.test) == 6


def test_json_split_zhou_object(tmp_path):
    _images(tmp_path)
    split = {"train": [["imgs/0.jpg", 0, "a"], ["imgs/1.jpg", 1, "b"]], "val": [],
             "test": [["imgs/2.jpg", 1, "b"]]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    ds = data.load_dataset(tmp_path / "split.json")
    assert ds.classnames == ["a", "b"] and ds.test[0].path == str(tmp_path / "imgs/2.jpg")
    train, val, test = data.read_split_json(tmp_path / "split.json", tmp_path)
    assert [i.label for i in train] == [0, 1] and val == []


def test_json_bad_entries(tmp_path):
    _images(tmp_path, 2)
    (tmp_path / "bad.json").write_text(json.dumps([{"path": "imgs/0.jpg"}]))
    with pytest.raises(ValueError, match=r"bad\.json, entry 0: needs a label or a classname"):
        data.load_dataset(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text('[{"path": "imgs/0.jpg",\n "label": }]')
    with pytest.raises(ValueError, match=r"broken\.json, line 2: not valid JSON"):
        data.load_dataset(tmp_path / "broken.json")
    (tmp_path / "split.json").write_text(json.dumps({"train": [["imgs/0.jpg", "x", "a"]]}))
    with pytest.raises(ValueError, match=r"split\.json: entry 0 of 'train' has label 'x'"):
        data.load_dataset(tmp_path / "split.json")


def test_write_then_read_split_json_roundtrip(tmp_path):
    paths = _images(tmp_path, 3)
    items = [Datum(str(p), i % 2, "ab"[i % 2]) for i, p in enumerate(paths)]
    data.write_split_json(tmp_path / "s.json", tmp_path / "imgs", items[:2], [], items[2:])
    rows = json.loads((tmp_path / "s.json").read_text())
    assert rows["train"][0] == ["0.jpg", 0, "a"]
    train, val, test = data.read_split_json(tmp_path / "s.json", tmp_path / "imgs")
    assert train == items[:2] and val == [] and test == items[2:]


def test_registered_dataset_with_callable_default_root(tmp_path):
    calls = []

    def make_root():
        calls.append(1)
        _tree(tmp_path / "gen" / "train", ["p", "q"], 3)
        _tree(tmp_path / "gen" / "test", ["p", "q"], 2)
        return tmp_path / "gen"

    def reader(root):
        train, val, test, names = data.read_image_folder(root)
        return [(i.path, i.label, i.classname) for i in train], val, test, names

    data.register_dataset("unit_test_generated", reader, default_root=make_root, test_only=False)
    try:
        assert "unit_test_generated" in data.available_datasets()
        ds = data.load_dataset("unit_test_generated", shots=2, seed=4)
        assert calls == [1] and ds.classnames == ["p", "q"]
        assert len(ds.train) == 4 and all(isinstance(i, Datum) for i in ds.train)
        ds2 = data.load_dataset("unit_test_generated", root=tmp_path / "gen")
        assert calls == [1] and len(ds2.train) == 6
    finally:
        data.registry._REGISTRY.pop("unit_test_generated", None)
        data.registry._ALIASES.pop("unittestgenerated", None)


def test_registered_reader_with_bad_labels_is_reported(tmp_path):
    write_image(tmp_path / "x.jpg")
    data.register_dataset("unit_test_bad", lambda root: ([Datum(str(tmp_path / "x.jpg"), 3, "a")], [], [], ["a"]),
                          default_root=tmp_path)
    try:
        with pytest.raises(ValueError, match=r"has label 3, outside 0\.\.0"):
            data.load_dataset("unit_test_bad")
    finally:
        data.registry._REGISTRY.pop("unit_test_bad", None)
        data.registry._ALIASES.pop("unittestbad", None)


def test_registered_without_root_or_default(tmp_path):
    data.register_dataset("unit_test_noroot", lambda root: ([], [], [], []))
    try:
        with pytest.raises(ValueError, match="has no default location: give root="):
            data.load_dataset("unit_test_noroot")
    finally:
        data.registry._REGISTRY.pop("unit_test_noroot", None)
        data.registry._ALIASES.pop("unittestnoroot", None)


def test_relative_path_is_not_mistaken_for_a_name(tmp_path, monkeypatch):
    _tree(tmp_path / "dtd", ["x", "y"], 3)  # a user's folder that happens to be called dtd
    monkeypatch.chdir(tmp_path)
    ds = data.load_dataset("./dtd")
    assert ds.classnames == ["x", "y"]


def test_benchmark_folder_given_as_path_is_read_as_the_benchmark(tmp_path):
    from fake_benchmarks import make_fake_benchmark

    fake = make_fake_benchmark(tmp_path, "eurosat")
    ds = data.load_dataset(str(fake.dataset_dir), shots=1)
    assert ds.name == "eurosat" and ds.classnames == fake.classnames
    assert ds.fewshot_cache is not None and ds.fewshot_cache.is_file()


def test_tsv_list(tmp_path):
    _images(tmp_path, 2)
    (tmp_path / "l.tsv").write_text("path\tclassname\tsplit\nimgs/0.jpg\ta b\ttrain\nimgs/1.jpg\tc\ttest\n")
    ds = data.load_dataset(tmp_path / "l.tsv")
    assert ds.classnames == ["a b", "c"] and len(ds.train) == 1


def test_data_commands_list_and_check(tmp_path, capsys):
    from mudpt.cli import main
    from fake_benchmarks import make_fake_benchmark

    assert main(["data", "list"]) == 0
    assert "imagenet_r" in capsys.readouterr().out
    make_fake_benchmark(tmp_path, "dtd")
    assert main(["data", "check", "dtd", "--root", str(tmp_path), "--shots", "2", "--subsample", "new"]) == 0
    out = capsys.readouterr().out
    assert "dtd: 2 classes, train 4, val 4, test 6" in out and "braided, bubbly" in out
    assert main(["data", "check", "sun397", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mudpt data check: error: dataset folder not found") and "(command line: --root)" in err
    assert len(err.strip().splitlines()) == 1


def test_csv_with_split_on_some_rows_only(tmp_path):
    _images(tmp_path, 3)
    (tmp_path / "l.csv").write_text("path,classname,split\nimgs/0.jpg,a,train\nimgs/1.jpg,b,\nimgs/2.jpg,a,test\n")
    with pytest.raises(ValueError, match=r"l\.csv, line 3: some rows have a split and some do not"):
        data.load_dataset(tmp_path / "l.csv")


def test_folder_with_a_coop_split_file(tmp_path):
    root = tmp_path / "my_coop_set"
    for i in range(4):
        write_image(root / "images" / "k" / f"{i}.jpg", i)
    split = {"train": [["k/0.jpg", 0, "kiwi"], ["k/1.jpg", 1, "lime"]], "val": [["k/2.jpg", 0, "kiwi"]],
             "test": [["k/3.jpg", 1, "lime"]]}
    (root / "split_zhou_MySet.json").write_text(json.dumps(split))
    ds = data.load_dataset(str(root), shots=1)
    assert ds.classnames == ["kiwi", "lime"] and ds.test[0].path == str(root / "images" / "k" / "3.jpg")
    assert len(ds.train) == 2 and any("split_zhou_MySet.json" in n for n in ds.notes)


def test_auto_split_of_a_class_is_stable_when_classes_are_added(tmp_path):
    _tree(tmp_path / "ds", ["ant", "bee"], 10)
    before = data.load_dataset(tmp_path / "ds")
    _tree(tmp_path / "ds", ["aardvark"], 10)  # sorts first: every label shifts by one
    after = data.load_dataset(tmp_path / "ds")
    for split in ("train", "val", "test"):
        old = {(i.path, i.classname) for i in getattr(before, split)}
        new = {(i.path, i.classname) for i in getattr(after, split) if i.classname != "aardvark"}
        assert old == new


@pytest.mark.parametrize("names,duplicate", [
    (["Cat", "cat", "dog"], "cat"), (["golden_retriever", "golden retriever", "dog"], "golden retriever"),
])
def test_data_check_refuses_the_duplicate_class_names_train_refuses(tmp_path, capsys, names, duplicate):
    from mudpt.cli import main
    from mudpt.methods.class_text import validate_classnames

    _images(tmp_path, 6)
    rows = "".join(f"imgs/{i}.jpg,{names[i % 3]},{'train' if i < 3 else 'test'}\n" for i in range(6))
    (tmp_path / "l.csv").write_text("path,classname,split\n" + rows)
    with pytest.raises(mudpt.UserError, match="class names must be distinct"):
        validate_classnames(names)  # what train's methods refuse
    assert main(["data", "check", str(tmp_path / "l.csv")]) == 2
    err = capsys.readouterr().err
    assert "class names must be distinct (the classes of" in err and "l.csv" in err
    assert duplicate in err.lower().replace("_", " ")


@pytest.mark.parametrize("names", [["dog", "cat", "dog"], ["cat ", "cat", "dog"]])
def test_a_split_file_naming_two_labels_alike_is_refused_by_data_check(tmp_path, capsys, names):
    from mudpt.cli import main

    root = tmp_path / "my_set"
    for i in range(6):
        write_image(root / "images" / f"{i}.jpg", i)
    split = {"train": [[f"{i}.jpg", i % 3, names[i % 3]] for i in range(3)],
             "val": [], "test": [[f"{i}.jpg", i % 3, names[i % 3]] for i in range(3, 6)]}
    (root / "split_zhou_MySet.json").write_text(json.dumps(split))
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err
    assert "class names must be distinct" in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["csv", "json", "classnames"])
@pytest.mark.parametrize("encoding", ["cp1252", "binary"])
def test_list_files_that_are_not_utf8_are_named_with_their_line(tmp_path, kind, encoding):
    from mudpt.core.errors import CorruptFileError

    _images(tmp_path, 6)
    name = "café" if encoding == "cp1252" else None
    if kind == "csv":
        text = "path,classname,split\nimgs/0.jpg,tea,train\nimgs/1.jpg,{},test\n"
        target = tmp_path / "l.csv"
    elif kind == "json":
        text = '[{{"path": "imgs/0.jpg", "classname": "tea"}},\n {{"path": "imgs/1.jpg", "classname": "{}"}}]'
        target = tmp_path / "l.json"
    else:
        make_fake_benchmark(tmp_path / "root", "imagenet_r")
        target = next((tmp_path / "root").rglob("classnames.txt"))
        lines = target.read_text().splitlines()
        text = "\n".join(lines[:1] + [lines[1].split(" ")[0] + " {}"] + lines[2:]) + "\n"
    data_bytes = (text.format(name).encode("cp1252") if name else
                  text.format("x").encode().replace(b"x", b"\xff\xfe\x00", 1))
    target.write_bytes(data_bytes)
    line = 3 if kind == "csv" else 2  # where the class name is
    with pytest.raises(CorruptFileError, match=rf"{target.name}, line {line}: byte 0x[0-9a-f]{{2}} is not UTF-8 "
                                               r"text.*saved as UTF-8"):
        if kind == "classnames":
            data.load_dataset("imagenet_r", root=tmp_path / "root")
        else:
            data.load_dataset(target)
