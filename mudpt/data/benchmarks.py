"""Readers for the 15 benchmark datasets, laid out on disk the way the CoOp family documents.

Every reader takes the dataset's folder, the load's seeded generator (used only when a
split file has to be built, exactly where the reference draws from ``random``) and a list
collecting notes, and returns ``(train, val, test, classnames)``.  Folder names, image
folders, split files and class-name sources follow docs/DATASETS.md.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from pathlib import Path

from mudpt.core.errors import CorruptFileError, MissingFileError
from mudpt.data.fewshot import dumps_reference_pickle, load_reference_pickle
from mudpt.core.files import atomic_write_bytes, read_text
from mudpt.data.items import Datum
from mudpt.data.registry import DatasetSpec, ReadContext, _register_spec
from mudpt.data.splits import (DOCS_HINT, classnames_from_items, listdir_nohidden,
                               read_and_split_folders, read_split_json, split_trainval,
                               write_split_json)

log = logging.getLogger(__name__)

# Caltech101: two folders are not object classes; four folder names become readable nouns.
CALTECH_IGNORED = ("BACKGROUND_Google", "Faces_easy")
CALTECH_CLASSNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard",
                      "Motorbikes": "motorbike"}
# EuroSAT's folder names are CamelCase codes; the CoOp family prompts with these phrases.
EUROSAT_CLASSNAMES = {
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land", "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings",
    "River": "River", "SeaLake": "Sea or Lake",
}
IMAGENET_VARIANT_IGNORED = ("README.txt",)


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise MissingFileError(f"{what} not found: {path}. {DOCS_HINT}")
    return path


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise MissingFileError(f"{what} not found: {path}. {DOCS_HINT}")
    return path


def _read_lines(path: Path) -> list[str]:
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_imagenet_classnames(text_file: Path) -> dict[str, str]:
    """``classnames.txt``: ``<wnid> <class name>`` per line, in file order."""
    _require_file(text_file, "class-name file")
    classnames: dict[str, str] = {}
    for number, line in enumerate(_read_lines(text_file), start=1):
        parts = line.strip().split(" ")
        if not parts or not parts[0]:
            continue
        if len(parts) < 2:
            raise CorruptFileError(f"{text_file}, line {number}: expected '<folder> <class name>', "
                             f"got {line!r}")
        classnames[parts[0]] = " ".join(parts[1:])
    return classnames


def _split_json_dataset(dataset_dir: Path, image_subdir: str, split_name: str, build, rng,
                        notes: list[str]):
    """Read ``split_name`` if present, else build it with ``build(image_dir, rng)`` and save it."""
    image_dir = dataset_dir / image_subdir if image_subdir else dataset_dir
    split_path = dataset_dir / split_name
    if split_path.is_file():
        train, val, test = read_split_json(split_path, image_dir)
    else:
        if build is None:
            raise MissingFileError(f"split file not found: {split_path}. {DOCS_HINT}")
        train, val, test = build(dataset_dir, image_dir, rng)
        try:
            write_split_json(split_path, image_dir, train, val, test)
            notes.append(f"built {split_path} from the dataset's annotations")
        except OSError as error:
            notes.append(f"built the split but could not save {split_path}: {error}")
        log.info(notes[-1])
    return train, val, test, classnames_from_items(train, val, test, source=str(split_path))


def _folder_builder(ignored=(), new_classnames=None):
    def build(dataset_dir, image_dir, rng):
        _require_dir(image_dir, "image folder")
        return read_and_split_folders(image_dir, rng, ignored=ignored,
                                      new_classnames=new_classnames)
    return build


# ----------------------------------------------------------------------------- ImageNet family
def read_imagenet(ctx: ReadContext):
    dataset_dir, rng, notes = ctx.dir, ctx.rng, ctx.notes
    preprocessed = dataset_dir / "preprocessed.pkl"
    if preprocessed.is_file():
        data = load_reference_pickle(preprocessed)
        if not isinstance(data, dict) or "train" not in data or "test" not in data:
            raise CorruptFileError(f"{preprocessed}: expected a dict with 'train' and 'test' lists; "
                             "delete it to rebuild it from the image folders")
        train, test = list(data["train"]), list(data["test"])
        notes.append(f"ImageNet lists read from {preprocessed}")
        classnames = classnames_from_items(train, test, source=str(preprocessed))
        return train, [], test, classnames
    wnid_to_name = read_imagenet_classnames(dataset_dir / "classnames.txt")
    image_dir = _require_dir(dataset_dir / "images", "ImageNet image folder")
    lists, folders = [], None
    for split in ("train", "val"):
        split_dir = _require_dir(image_dir / split, f"ImageNet {split} folder")
        split_folders = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
        folders = folders or split_folders
        items = []
        for label, folder in enumerate(split_folders):
            if folder not in wnid_to_name:
                raise CorruptFileError(f"{split_dir / folder}: folder {folder!r} is not listed in "
                                 f"{dataset_dir / 'classnames.txt'}")
            for name in listdir_nohidden(split_dir / folder):
                items.append(Datum(str(split_dir / folder / name), label, wnid_to_name[folder]))
        lists.append(items)
    train, test = lists
    try:
        atomic_write_bytes(preprocessed, dumps_reference_pickle({"train": train, "test": test}))
        notes.append(f"ImageNet lists saved to {preprocessed}")
    except OSError as error:
        notes.append(f"could not save {preprocessed}: {error}")
    return train, [], test, [wnid_to_name[folder] for folder in folders]


def _read_wnid_folders(image_dir: Path, wnid_to_name: dict[str, str], classnames_file: Path):
    folders = [name for name in listdir_nohidden(image_dir, sort=True)
               if name not in IMAGENET_VARIANT_IGNORED]
    items, classnames = [], []
    for label, folder in enumerate(folders):
        if folder not in wnid_to_name:
            raise CorruptFileError(f"{image_dir / folder}: folder {folder!r} is not listed in "
                             f"{classnames_file}")
        classnames.append(wnid_to_name[folder])
        for name in listdir_nohidden(image_dir / folder):
            items.append(Datum(str(image_dir / folder / name), label, wnid_to_name[folder]))
    return items, classnames


def _wnid_variant_reader(image_subdir: str):
    def read(ctx: ReadContext):
        dataset_dir = ctx.dir
        classnames_file = dataset_dir / "classnames.txt"
        wnid_to_name = read_imagenet_classnames(classnames_file)
        image_dir = _require_dir(dataset_dir / image_subdir, "image folder")
        test, classnames = _read_wnid_folders(image_dir, wnid_to_name, classnames_file)
        return [], [], test, classnames
    return read


def read_imagenetv2(ctx: ReadContext):
    dataset_dir, rng, notes = ctx.dir, ctx.rng, ctx.notes
    classnames = list(read_imagenet_classnames(dataset_dir / "classnames.txt").values())
    image_dir = _require_dir(dataset_dir / "imagenetv2-matched-frequency-format-val",
                             "ImageNetV2 image folder")
    test = []
    for label, classname in enumerate(classnames):
        class_dir = _require_dir(image_dir / str(label), f"ImageNetV2 class folder for label {label}")
        test += [Datum(str(class_dir / name), label, classname)
                 for name in listdir_nohidden(class_dir)]
    return [], [], test, classnames


# ----------------------------------------------------------------------------- the others
def read_caltech101(ctx: ReadContext):
    dataset_dir, rng, notes = ctx.dir, ctx.rng, ctx.notes
    return _split_json_dataset(dataset_dir, "101_ObjectCategories", "split_zhou_Caltech101.json",
                               _folder_builder(CALTECH_IGNORED, CALTECH_CLASSNAMES), rng, notes)


def read_dtd(ctx: ReadContext):
    dataset_dir, rng, notes = ctx.dir, ctx.rng, ctx.notes
    return _split_json_dataset(dataset_dir, "images", "split_zhou_DescribableTextures.json",
                               _folder_builder(), rng, notes)


def read_eurosat(ctx: ReadContext):
    dataset_dir, rng, notes = ctx.dir, ctx.rng, ctx.notes
    return _split_json_dataset(dataset_dir, "2750", "split_zhou_EuroSAT.json",
                               _folder_builder(new_classnames=EUROSAT_CLASSNAMES), rng, notes)


def read_food101(ctx: ReadContext):
    dataset_dir, rng, notes = ctx.dir, ctx.rng, ctx.notes
    return _split_json_dataset(dataset_dir, "images", "split_zhou_Food101.json",
                               _folder_builder(), rng, notes)


def _build_oxford_pets(dataset_dir: Path, image_dir: Path, rng: random.Random):
    def read_list(file_name):
        path = _require_file(dataset_dir / "annotations" / file_name, "Oxford Pets annotation file")
        items = []
        for number, line in enumerate(_read_lines(path), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split(" ")
            if len(fields) != 4 or not fields[1].isdigit():
                raise CorruptFileError(f"{path}, line {number}: expected '<image> <class id> <species> "
                                 f"<breed id>', got {line!r}")
            breed = "_".join(fields[0].split("_")[:-1]).lower()
            items.append(Datum(str(image_dir / f"{fields[0]}.jpg"), int(fields[1]) - 1, breed))
        return items

    trainval = read_list("trainval.txt")
    test = read_list("test.txt")
    train, val = split_trainval(trainval, rng)
    return train, val, test


def read_oxford_pets(ctx: ReadContext):
    dataset_dir, rng, notes = ctx.dir, ctx.rng, ctx.notes
    return _split_json_dataset(dataset_dir, "images", "split_zhou_OxfordPets.json",
                               _build_oxford_pets, rng, notes)


def _mat_variable(path: Path, name: str, what: str):
    """Variable ``name`` of a MATLAB file, read with ``scipy.io.loadmat`` as the reference does."""
    from scipy.io import loadmat

    _require_file(path, what)
    try:
        variables = loadmat(str(path))
    except Exception as error:  # scipy raises several error types for unreadable files
        raise CorruptFileError(f"{path}: cannot read this MATLAB file ({type(error).__name__}: {error}). "
                               f"{DOCS_HINT}") from error
    if name not in variables:
        found = sorted(k for k in variables if not k.startswith("__"))
        raise CorruptFileError(f"{path}: no variable {name!r} (found {found}). {DOCS_HINT}")
    return variables[name]


def _build_stanford_cars(dataset_dir: Path, image_dir: Path, rng: random.Random):
    meta_file = dataset_dir / "devkit" / "cars_meta.mat"
    class_names = _mat_variable(meta_file, "class_names", "Stanford Cars class list")[0]

    def read_annotations(image_subdir: str, anno_file: Path):
        records = _mat_variable(anno_file, "annotations", "Stanford Cars annotation file")[0]
        items = []
        for index, record in enumerate(records):
            try:
                label = int(record["class"][0, 0]) - 1
                fname = str(record["fname"][0])
                words = str(class_names[label][0]).split(" ")
            except (KeyError, TypeError, ValueError, IndexError):
                raise CorruptFileError(f"{anno_file}: annotation {index} has no valid 'class' / "
                                       f"'fname' ({record!r})") from None
            # "AM General Hummer SUV 2000" -> "2000 AM General Hummer SUV"
            classname = " ".join([words[-1]] + words[:-1])
            items.append(Datum(str(dataset_dir / image_subdir / fname), label, classname))
        return items

    trainval = read_annotations("cars_train", dataset_dir / "devkit" / "cars_train_annos.mat")
    test = read_annotations("cars_test", dataset_dir / "cars_test_annos_withlabels.mat")
    train, val = split_trainval(trainval, rng)
    return train, val, test


def read_stanford_cars(ctx: ReadContext):
    dataset_dir, rng, notes = ctx.dir, ctx.rng, ctx.notes
    return _split_json_dataset(dataset_dir, "", "split_zhou_StanfordCars.json",
                               _build_stanford_cars, rng, notes)


def _build_oxford_flowers(dataset_dir: Path, image_dir: Path, rng: random.Random):
    labels = _mat_variable(dataset_dir / "imagelabels.mat", "labels", "Oxford Flowers label file")[0]
    names_file = _require_file(dataset_dir / "cat_to_name.json", "Oxford Flowers class names")
    label_to_name = json.loads(read_text(names_file))
    paths_by_label: dict[int, list[str]] = {}
    for index, label in enumerate(labels):
        paths_by_label.setdefault(int(label), []).append(str(image_dir / f"image_{index + 1:05d}.jpg"))
    train, val, test = [], [], []
    for label, paths in paths_by_label.items():  # labels in order of first appearance
        rng.shuffle(paths)
        n_total = len(paths)
        n_train, n_val = round(n_total * 0.5), round(n_total * 0.2)
        if n_train <= 0 or n_val <= 0 or n_total - n_train - n_val <= 0:
            raise CorruptFileError(f"Oxford Flowers label {label} has {n_total} images: too few to split")
        if str(label) not in label_to_name:
            raise CorruptFileError(f"{names_file}: no name for label {label}")
        classname = label_to_name[str(label)]
        train += [Datum(p, label - 1, classname) for p in paths[:n_train]]
        val += [Datum(p, label - 1, classname) for p in paths[n_train:n_train + n_val]]
        test += [Datum(p, label - 1, classname) for p in paths[n_train + n_val:]]
    return train, val, test


def read_oxford_flowers(ctx: ReadContext):
    dataset_dir, rng, notes = ctx.dir, ctx.rng, ctx.notes
    return _split_json_dataset(dataset_dir, "jpg", "split_zhou_OxfordFlowers.json",
                               _build_oxford_flowers, rng, notes)


def _build_sun397(dataset_dir: Path, image_dir: Path, rng: random.Random):
    class_file = _require_file(dataset_dir / "ClassName.txt", "SUN397 class list")
    folders = [line.strip()[1:] for line in _read_lines(class_file) if line.strip()]
    folder_to_label = {folder: label for label, folder in enumerate(folders)}

    def read_list(file_name):
        path = _require_file(dataset_dir / file_name, "SUN397 split list")
        items = []
        for number, line in enumerate(_read_lines(path), start=1):
            relative = line.strip()[1:]
            if not relative:
                continue
            folder = os.path.dirname(relative)
            if folder not in folder_to_label:
                raise CorruptFileError(f"{path}, line {number}: class folder {folder!r} is not in "
                                 f"{class_file}")
            # "a/apartment_building/outdoor" -> "outdoor apartment_building"
            classname = " ".join(folder.split("/")[1:][::-1])
            items.append(Datum(str(image_dir / relative), folder_to_label[folder], classname))
        return items

    trainval = read_list("Training_01.txt")
    test = read_list("Testing_01.txt")
    train, val = split_trainval(trainval, rng)
    return train, val, test


def read_sun397(ctx: ReadContext):
    dataset_dir, rng, notes = ctx.dir, ctx.rng, ctx.notes
    return _split_json_dataset(dataset_dir, "SUN397", "split_zhou_SUN397.json", _build_sun397,
                               rng, notes)


def _build_ucf101(dataset_dir: Path, image_dir: Path, rng: random.Random):
    list_dir = dataset_dir / "ucfTrainTestlist"
    class_file = _require_file(list_dir / "classInd.txt", "UCF101 class index")
    action_to_label = {}
    for number, line in enumerate(_read_lines(class_file), start=1):
        fields = line.strip().split(" ")
        if fields == [""]:
            continue
        if len(fields) != 2 or not fields[0].isdigit():
            raise CorruptFileError(f"{class_file}, line {number}: expected '<index> <Action>', got {line!r}")
        action_to_label[fields[1]] = int(fields[0]) - 1

    def read_list(file_name):
        path = _require_file(list_dir / file_name, "UCF101 split list")
        items = []
        for number, line in enumerate(_read_lines(path), start=1):
            video = line.strip().split(" ")[0]
            if not video:
                continue
            action, _, file_name_avi = video.partition("/")
            if action not in action_to_label:
                raise CorruptFileError(f"{path}, line {number}: action {action!r} is not in {class_file}")
            # "ApplyEyeMakeup" -> "Apply_Eye_Makeup": the mid-frame folders use that spelling.
            renamed = "_".join(re.findall("[A-Z][^A-Z]*", action))
            image = file_name_avi.replace(".avi", ".jpg")
            items.append(Datum(str(image_dir / renamed / image), action_to_label[action], renamed))
        return items

    trainval = read_list("trainlist01.txt")
    test = read_list("testlist01.txt")
    train, val = split_trainval(trainval, rng)
    return train, val, test


def read_ucf101(ctx: ReadContext):
    dataset_dir, rng, notes = ctx.dir, ctx.rng, ctx.notes
    return _split_json_dataset(dataset_dir, "UCF-101-midframes", "split_zhou_UCF101.json",
                               _build_ucf101, rng, notes)


def read_fgvc_aircraft(ctx: ReadContext):
    dataset_dir, rng, notes = ctx.dir, ctx.rng, ctx.notes
    variants_file = _require_file(dataset_dir / "variants.txt", "FGVC Aircraft variant list")
    classnames = [line.strip() for line in _read_lines(variants_file) if line.strip()]
    label_of = {name: label for label, name in enumerate(classnames)}
    image_dir = dataset_dir / "images"
    lists = []
    for split in ("train", "val", "test"):
        path = _require_file(dataset_dir / f"images_variant_{split}.txt", "FGVC Aircraft split list")
        items = []
        for number, line in enumerate(_read_lines(path), start=1):
            fields = line.strip().split(" ")
            if fields == [""]:
                continue
            variant = " ".join(fields[1:])
            if variant not in label_of:
                raise CorruptFileError(f"{path}, line {number}: variant {variant!r} is not in "
                                 f"{variants_file}")
            items.append(Datum(str(image_dir / f"{fields[0]}.jpg"), label_of[variant], variant))
        lists.append(items)
    return lists[0], lists[1], lists[2], classnames


CROSS_DATASET_TARGETS = ("caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                         "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")
IMAGENET_SHIFTS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
# The reference protocols evaluate the ImageNet variants on all their classes, never base/new.
_VARIANT = dict(test_only=True, supports_subsample=False)

BENCHMARKS = (
    # name, folder, reader, extra spec options, aliases
    ("imagenet", "imagenet", read_imagenet,
     dict(sample_val=False, val_is_test=True, transfer_targets=CROSS_DATASET_TARGETS, domain_shifts=IMAGENET_SHIFTS),
     ("ImageNet",)),
    ("caltech101", "caltech-101", read_caltech101, {}, ("Caltech101",)),
    ("oxford_pets", "oxford_pets", read_oxford_pets, {}, ("OxfordPets", "pets")),
    ("stanford_cars", "stanford_cars", read_stanford_cars, {}, ("StanfordCars", "cars")),
    ("oxford_flowers", "oxford_flowers", read_oxford_flowers, {}, ("OxfordFlowers", "flowers")),
    ("food101", "food-101", read_food101, {}, ("Food101",)),
    ("fgvc_aircraft", "fgvc_aircraft", read_fgvc_aircraft, {}, ("FGVCAircraft", "aircraft")),
    ("sun397", "sun397", read_sun397, {}, ("SUN397",)),
    ("dtd", "dtd", read_dtd, {}, ("DescribableTextures",)),
    ("eurosat", "eurosat", read_eurosat, {}, ("EuroSAT",)),
    ("ucf101", "ucf101", read_ucf101, {}, ("UCF101",)),
    ("imagenetv2", "imagenetv2", read_imagenetv2, _VARIANT, ("ImageNetV2",)),
    ("imagenet_sketch", "imagenet-sketch", _wnid_variant_reader("images"), _VARIANT, ("ImageNetSketch",)),
    ("imagenet_a", "imagenet-adversarial", _wnid_variant_reader("imagenet-a"), _VARIANT, ("ImageNetA",)),
    ("imagenet_r", "imagenet-rendition", _wnid_variant_reader("imagenet-r"), _VARIANT, ("ImageNetR",)),
)

for _name, _folder, _reader, _options, _aliases in BENCHMARKS:
    _register_spec(DatasetSpec(name=_name, reader=_reader, folder=_folder, builtin=True,
                               aliases=(_folder, *_aliases), **_options))
