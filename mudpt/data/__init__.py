"""Datasets as users keep them on disk, few-shot splits, transforms and loaders.

Public API::

    ds = load_dataset(name_or_path, root=None, shots=0, seed=1, subsample="all")
    ds.train, ds.val, ds.test, ds.classnames, ds.name
    available_datasets(); register_dataset(name, reader, default_root=None)  # reader(ctx: ReadContext)
    build_transform(clip_or_size, train); ImageDataset(items, transform); build_loader(...)
    read_split_json(json_path, image_dir); write_split_json(...)
"""

from mudpt.data import benchmarks as _benchmarks  # noqa: F401  (registers the 15 benchmarks)
from mudpt.data.custom import read_image_folder, read_list_file
from mudpt.core.errors import UnsafePickleError
from mudpt.data.fewshot import (fewshot_cache_path, load_fewshot_cache,
                                load_reference_pickle, sample_fewshot, save_fewshot_cache)
from mudpt.data.items import Datum
from mudpt.data.loader import CorruptImageError, ImageDataset, build_loader, check_images, read_image
from mudpt.data.registry import (LoadedDataset, ReadContext, available_datasets, dataset_identity, get_dataset_spec,
                                 load_dataset, register_dataset)
from mudpt.data.splits import (read_and_split_folders, read_split_json, subsample_classes,
                               write_split_json)
from mudpt.data.transforms import CLIP_MEAN, CLIP_STD, build_transform

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "CorruptImageError", "Datum", "ImageDataset", "LoadedDataset", "ReadContext",
    "UnsafePickleError", "available_datasets", "build_loader", "build_transform", "check_images", "dataset_identity",
    "fewshot_cache_path", "get_dataset_spec", "load_dataset", "load_fewshot_cache",
    "load_reference_pickle", "read_and_split_folders", "read_image", "read_image_folder",
    "read_list_file", "read_split_json", "register_dataset", "sample_fewshot",
    "save_fewshot_cache", "subsample_classes", "write_split_json",
]
