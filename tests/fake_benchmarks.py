"""Tiny fake copies of the benchmark layouts, for the tests (not part of the package).

``make_fake_benchmark(root, name)`` writes a few 8x8 images per class in the folder layout
of docs/DATASETS.md under ``root`` and returns what a correct reader must produce
(class names in label order and the split sizes), derived from the construction alone.
Nothing here is used at run time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image



@dataclass
class FakeBenchmark:
    """What a fake tree holds: the dataset folder, class names by label and split sizes."""

    name: str
    dataset_dir: Path
    classnames: list[str]
    counts: dict[str, int]
    notes: dict = field(default_factory=dict)


def write_image(path: Path, seed: int = 0, size: int = 8, fmt: str | None = None) -> Path:
    """Write a tiny image whose colour depends on ``seed`` (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256)
    Image.new("RGB", (size, size), colour).save(path, format=fmt)
    return path


def _write_split(path: Path, rows: dict[str, list]) -> None:
    path.write_text(json.dumps(rows, indent=4), encoding="utf-8")


def _json_layout(dataset_dir: Path, image_subdir: str, split_file: str, classnames: list[str],
                 per_split: dict[str, int], relpath) -> dict[str, int]:
    """Images named by ``relpath(classname, label, split, index)`` plus a split_zhou file."""
    image_dir = dataset_dir / image_subdir if image_subdir else dataset_dir
    rows = {split: [] for split in ("train", "val", "test")}
    seed = 0
    for label, classname in enumerate(classnames):
        for split, count in per_split.items():
            for index in range(count):
                rel = relpath(classname, label, split, index)
                write_image(image_dir / rel, seed)
                seed += 1
                rows[split].append([rel, label, classname])
    _write_split(dataset_dir / split_file, rows)
    return {split: len(items) for split, items in rows.items()}


def _class_folders(image_dir: Path, folders: list[str], per_class: int, start_seed: int = 0):
    seed = start_seed
    for folder in folders:
        for index in range(per_class):
            write_image(image_dir / folder / f"{folder}_{index:04d}.jpg", seed)
            seed += 1


# images per split of each class in the split-file layouts
PER_SPLIT = {"train": 4, "val": 2, "test": 3}

WNIDS = [f"n{index:08d}" for index in range(1, 9)]
WNID_NAMES = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark",
              "electric ray", "stingray", "rooster"]


def _write_imagenet_classnames(dataset_dir: Path) -> None:
    dataset_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"{wnid} {name}" for wnid, name in zip(WNIDS, WNID_NAMES)]
    (dataset_dir / "classnames.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _trainval_counts(per_class: int, classes: int = 3, test: int = 3) -> dict:
    """Split sizes of a layout with ``test`` test images per class and the rest trainval, of which
    the reader keeps 20 % for validation (the reference's split)."""
    trainval = per_class - test
    val = round(trainval * 0.2)
    return {"train": classes * (trainval - val), "val": classes * val, "test": classes * test}


def _simple(root: Path, name: str, folder: str, image_subdir: str, split_file: str, classnames: list,
            with_split_file: bool, per_class: int, folders: list | None = None, relpath=None) -> FakeBenchmark:
    """A benchmark whose images sit in class folders, with a split_zhou file (or built from them).
    ``folders``: the class folders on disk when they differ from the class names (the reader maps
    or ignores them); ``relpath(classname, label, split, index)``: an image's path in the split file."""
    dataset_dir = root / folder
    if with_split_file:
        counts = _json_layout(dataset_dir, image_subdir, split_file, classnames, PER_SPLIT,
                              relpath or (lambda c, y, s, i: f"{c}/{c}_{s}_{i}.jpg"))
    else:
        _class_folders(dataset_dir / image_subdir, folders or classnames, per_class)
        n_train, n_val = round(per_class * 0.5), round(per_class * 0.2)
        counts = {"train": n_train * len(classnames), "val": n_val * len(classnames),
                  "test": (per_class - n_train - n_val) * len(classnames)}
    return FakeBenchmark(name, dataset_dir, list(classnames), counts)


def _fake_imagenet(root: Path, name: str, with_split_file: bool, per_class: int) -> FakeBenchmark:
    dataset_dir = root / "imagenet"
    _write_imagenet_classnames(dataset_dir)
    wnids = WNIDS[:4]
    _class_folders(dataset_dir / "images" / "train", wnids, 6)
    _class_folders(dataset_dir / "images" / "val", wnids, 3, start_seed=100)
    names = [WNID_NAMES[WNIDS.index(w)] for w in wnids]
    return FakeBenchmark(name, dataset_dir, names, {"train": 24, "val": 12, "test": 12})


def _fake_imagenet_variant(root: Path, name: str, with_split_file: bool, per_class: int) -> FakeBenchmark:
    folder, subdir = {"imagenet_sketch": ("imagenet-sketch", "images"),
                      "imagenet_a": ("imagenet-adversarial", "imagenet-a"),
                      "imagenet_r": ("imagenet-rendition", "imagenet-r")}[name]
    dataset_dir = root / folder
    _write_imagenet_classnames(dataset_dir)
    # A and R hold a subset of the classes, listed here out of order on purpose.
    wnids = WNIDS if name == "imagenet_sketch" else [WNIDS[5], WNIDS[1], WNIDS[3]]
    _class_folders(dataset_dir / subdir, wnids, 3)
    if name != "imagenet_sketch":
        (dataset_dir / subdir / "README.txt").write_text("not a class\n")
    names = [WNID_NAMES[WNIDS.index(w)] for w in sorted(wnids)]
    return FakeBenchmark(name, dataset_dir, names, {"train": 0, "val": 0, "test": 3 * len(wnids)})


def _fake_imagenetv2(root: Path, name: str, with_split_file: bool, per_class: int) -> FakeBenchmark:
    dataset_dir = root / "imagenetv2"
    _write_imagenet_classnames(dataset_dir)
    _class_folders(dataset_dir / "imagenetv2-matched-frequency-format-val",
                   [str(i) for i in range(len(WNIDS))], 2)
    return FakeBenchmark(name, dataset_dir, list(WNID_NAMES),
                         {"train": 0, "val": 0, "test": 2 * len(WNIDS)})


def _fake_caltech101(root: Path, name: str, with_split_file: bool, per_class: int) -> FakeBenchmark:
    return _simple(root, name, "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                   ["face", "accordion", "airplane", "anchor"], with_split_file, per_class,
                   folders=["BACKGROUND_Google", "Faces", "Faces_easy", "accordion", "airplanes", "anchor"],
                   relpath=lambda c, y, s, i: f"{c}/image_{s}_{i:04d}.jpg")


def _fake_dtd(root: Path, name: str, with_split_file: bool, per_class: int) -> FakeBenchmark:
    return _simple(root, name, "dtd", "images", "split_zhou_DescribableTextures.json",
                   ["banded", "blotchy", "braided", "bubbly"], with_split_file, per_class)


def _fake_food101(root: Path, name: str, with_split_file: bool, per_class: int) -> FakeBenchmark:
    return _simple(root, name, "food-101", "images", "split_zhou_Food101.json",
                   ["apple_pie", "baby_back_ribs", "baklava"], with_split_file, per_class)


def _fake_eurosat(root: Path, name: str, with_split_file: bool, per_class: int) -> FakeBenchmark:
    folders = ["AnnualCrop", "Forest", "HerbaceousVegetation", "SeaLake"]
    return _simple(root, name, "eurosat", "2750", "split_zhou_EuroSAT.json",
                   ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Sea or Lake"], with_split_file,
                   per_class, folders=folders, relpath=lambda c, y, s, i: f"{folders[y]}/{folders[y]}_{s}_{i}.jpg")


def _fake_oxford_flowers(root: Path, name: str, with_split_file: bool, per_class: int) -> FakeBenchmark:
    if not with_split_file:
        dataset_dir = root / "oxford_flowers"
        names = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
        # Labels interleaved and starting with 3, so first appearance differs from label order.
        labels = [3, 1, 2] * per_class
        for index, label in enumerate(labels):
            write_image(dataset_dir / "jpg" / f"image_{index + 1:05d}.jpg", index)
        write_mat(dataset_dir / "imagelabels.mat", {"labels": labels})
        (dataset_dir / "cat_to_name.json").write_text(
            json.dumps({str(i + 1): n for i, n in enumerate(names)}), encoding="utf-8")
        n_train, n_val = round(per_class * 0.5), round(per_class * 0.2)
        return FakeBenchmark(name, dataset_dir, names,
                             {"train": 3 * n_train, "val": 3 * n_val,
                              "test": 3 * (per_class - n_train - n_val)})
    dataset_dir = root / "oxford_flowers"
    names = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
    counter = iter(range(1, 10_000))
    counts = _json_layout(dataset_dir, "jpg", "split_zhou_OxfordFlowers.json", names, PER_SPLIT,
                          lambda c, y, s, i: f"image_{next(counter):05d}.jpg")
    (dataset_dir / "cat_to_name.json").write_text(
        json.dumps({str(i + 1): n for i, n in enumerate(names)}), encoding="utf-8")
    return FakeBenchmark(name, dataset_dir, names, counts)


def _fake_stanford_cars(root: Path, name: str, with_split_file: bool, per_class: int) -> FakeBenchmark:
    if not with_split_file:
        dataset_dir = root / "stanford_cars"
        raw_names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "BMW X5 SUV 2007"]
        names = ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2007 BMW X5 SUV"]
        write_mat(dataset_dir / "devkit" / "cars_meta.mat", {"class_names": raw_names})
        records = {"cars_train": [], "cars_test": []}
        for index in range(per_class * 3):
            subdir = "cars_test" if index >= per_class * 3 - 9 else "cars_train"
            file_name = f"{index + 1:05d}.jpg"
            write_image(dataset_dir / subdir / file_name, index)
            records[subdir].append({"bbox_x1": 1, "bbox_y1": 2, "class": index % 3 + 1,
                                    "fname": file_name})
        write_mat(dataset_dir / "devkit" / "cars_train_annos.mat", {"annotations": records["cars_train"]})
        write_mat(dataset_dir / "cars_test_annos_withlabels.mat", {"annotations": records["cars_test"]},
                  compress=False)
        return FakeBenchmark(name, dataset_dir, names, _trainval_counts(per_class))
    dataset_dir = root / "stanford_cars"
    names = ["2012 AM General Hummer SUV", "2012 Acura RL Sedan", "2007 BMW X5 SUV"]
    counter = iter(range(1, 10_000))
    counts = _json_layout(dataset_dir, "", "split_zhou_StanfordCars.json", names, PER_SPLIT,
                          lambda c, y, s, i: f"{'cars_test' if s == 'test' else 'cars_train'}/"
                                             f"{next(counter):05d}.jpg")
    return FakeBenchmark(name, dataset_dir, names, counts)


def _fake_oxford_pets(root: Path, name: str, with_split_file: bool, per_class: int) -> FakeBenchmark:
    dataset_dir = root / "oxford_pets"
    breeds = ["Abyssinian", "american_bulldog", "Bengal"]
    names = [breed.lower() for breed in breeds]
    if with_split_file:
        counts = _json_layout(dataset_dir, "images", "split_zhou_OxfordPets.json", names,
                              PER_SPLIT, lambda c, y, s, i: f"{breeds[y]}_{s}{i}.jpg")
        return FakeBenchmark(name, dataset_dir, names, counts)
    lines = {"trainval.txt": [], "test.txt": []}
    seed = 0
    for label, breed in enumerate(breeds):
        for index in range(1, per_class + 1):
            stem = f"{breed}_{index}"
            write_image(dataset_dir / "images" / f"{stem}.jpg", seed)
            seed += 1
            target = "test.txt" if index > per_class - 3 else "trainval.txt"
            lines[target].append(f"{stem} {label + 1} {1 + label % 2} {index}")
    (dataset_dir / "annotations").mkdir(parents=True, exist_ok=True)
    for file_name, content in lines.items():
        (dataset_dir / "annotations" / file_name).write_text("\n".join(content) + "\n")
    return FakeBenchmark(name, dataset_dir, names, _trainval_counts(per_class))


def _fake_fgvc_aircraft(root: Path, name: str, with_split_file: bool, per_class: int) -> FakeBenchmark:
    dataset_dir = root / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "Cessna 172", "F-16A/B"]
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / "variants.txt").write_text("\n".join(variants) + "\n")
    image_id, seed = 1000000, 0
    for split, count in PER_SPLIT.items():
        lines = []
        # Rows grouped by image id, not by class, as in the real files.
        for index in range(count):
            for variant in reversed(variants):
                write_image(dataset_dir / "images" / f"{image_id}.jpg", seed)
                lines.append(f"{image_id} {variant}")
                image_id, seed = image_id + 1, seed + 1
        (dataset_dir / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return FakeBenchmark(name, dataset_dir, variants,
                         {split: count * 4 for split, count in PER_SPLIT.items()})


def _fake_sun397(root: Path, name: str, with_split_file: bool, per_class: int) -> FakeBenchmark:
    dataset_dir = root / "sun397"
    folders = ["a/abbey", "a/apartment_building/outdoor", "b/bakery/shop"]
    names = ["abbey", "outdoor apartment_building", "shop bakery"]
    if with_split_file:
        counts = _json_layout(dataset_dir, "SUN397", "split_zhou_SUN397.json", names, PER_SPLIT,
                              lambda c, y, s, i: f"{folders[y]}/sun_{s}{i}.jpg")
        return FakeBenchmark(name, dataset_dir, names, counts)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / "ClassName.txt").write_text("\n".join(f"/{f}" for f in folders) + "\n")
    train_lines, test_lines, seed = [], [], 0
    for folder in folders:
        for index in range(per_class):
            rel = f"{folder}/sun_{index:04d}.jpg"
            write_image(dataset_dir / "SUN397" / rel, seed)
            seed += 1
            (test_lines if index >= per_class - 3 else train_lines).append(f"/{rel}")
    (dataset_dir / "Training_01.txt").write_text("\n".join(train_lines) + "\n")
    (dataset_dir / "Testing_01.txt").write_text("\n".join(test_lines) + "\n")
    return FakeBenchmark(name, dataset_dir, names, _trainval_counts(per_class))


def _fake_ucf101(root: Path, name: str, with_split_file: bool, per_class: int) -> FakeBenchmark:
    dataset_dir = root / "ucf101"
    actions = ["ApplyEyeMakeup", "ApplyLipstick", "YoYo"]
    names = ["Apply_Eye_Makeup", "Apply_Lipstick", "Yo_Yo"]
    if with_split_file:
        counts = _json_layout(dataset_dir, "UCF-101-midframes", "split_zhou_UCF101.json", names,
                              PER_SPLIT, lambda c, y, s, i: f"{c}/v_{actions[y]}_g{i:02d}_{s}.jpg")
        return FakeBenchmark(name, dataset_dir, names, counts)
    list_dir = dataset_dir / "ucfTrainTestlist"
    list_dir.mkdir(parents=True, exist_ok=True)
    (list_dir / "classInd.txt").write_text(
        "\n".join(f"{i + 1} {a}" for i, a in enumerate(actions)) + "\n")
    train_lines, test_lines, seed = [], [], 0
    for label, (action, renamed) in enumerate(zip(actions, names)):
        for index in range(per_class):
            video = f"v_{action}_g{index:02d}_c01"
            write_image(dataset_dir / "UCF-101-midframes" / renamed / f"{video}.jpg", seed)
            seed += 1
            if index >= per_class - 3:
                test_lines.append(f"{action}/{video}.avi")
            else:
                train_lines.append(f"{action}/{video}.avi {label + 1}")
    (list_dir / "trainlist01.txt").write_text("\n".join(train_lines) + "\n")
    (list_dir / "testlist01.txt").write_text("\n".join(test_lines) + "\n")
    return FakeBenchmark(name, dataset_dir, names, _trainval_counts(per_class))


# One writer per benchmark layout (docs/DATASETS.md).
_WRITERS = {
    "imagenet": _fake_imagenet,
    "imagenet_sketch": _fake_imagenet_variant,
    "imagenet_a": _fake_imagenet_variant,
    "imagenet_r": _fake_imagenet_variant,
    "imagenetv2": _fake_imagenetv2,
    "caltech101": _fake_caltech101,
    "dtd": _fake_dtd,
    "food101": _fake_food101,
    "eurosat": _fake_eurosat,
    "oxford_flowers": _fake_oxford_flowers,
    "stanford_cars": _fake_stanford_cars,
    "oxford_pets": _fake_oxford_pets,
    "fgvc_aircraft": _fake_fgvc_aircraft,
    "sun397": _fake_sun397,
    "ucf101": _fake_ucf101,
}
FAKE_BENCHMARKS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers",
                   "food101", "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101",
                   "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
assert set(FAKE_BENCHMARKS) == set(_WRITERS)


def make_fake_benchmark(root: str | os.PathLike, name: str, with_split_file: bool = True,
                        per_class: int = 10) -> FakeBenchmark:
    """Write a fake ``name`` dataset under ``root``; see the module docstring.

    ``with_split_file=False`` leaves out the ``split_zhou`` file where the reader can build
    it from the raw annotations (every dataset with a split file: Caltech101, DTD, EuroSAT,
    Food101, Oxford Pets, Oxford Flowers, Stanford Cars, SUN397, UCF101). ``per_class`` is the
    number of images per class for folder-split layouts.
    """
    if name not in _WRITERS:
        raise ValueError(f"no fake layout for {name!r}; choose from {FAKE_BENCHMARKS}")
    return _WRITERS[name](Path(root), name, with_split_file, per_class)


# ----------------------------------------------------------------------------- MAT files
def _mat_value(value):
    """A value as MATLAB stores it in the datasets' annotation files: a string stays a string,
    a list of strings becomes a 1xN cell, a list of dicts a 1xN struct array, numbers a 1xN
    array."""
    import numpy as np

    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        fields = list(value[0])
        records = np.zeros((1, len(value)), dtype=[(f, "O") for f in fields])
        for index, record in enumerate(value):
            for f in fields:
                records[0, index][f] = record[f]
        return records
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        cells = np.empty((1, len(value)), dtype=object)
        cells[0, :] = value
        return cells
    if isinstance(value, list):
        # Whole numbers below 256 stored as uint8, as MATLAB itself does to save space.
        small = all(float(v).is_integer() and 0 <= v < 256 for v in value)
        return np.array([value], dtype=np.uint8 if small else np.float64)
    return value


def write_mat(path: str | os.PathLike, variables: dict, compress: bool = True) -> Path:
    """Write a small MATLAB file (``scipy.io.savemat``) for tests of the Flowers / Cars split builders."""
    from scipy.io import savemat

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {name: _mat_value(value) for name, value in variables.items()}, do_compression=compress)
    return path
