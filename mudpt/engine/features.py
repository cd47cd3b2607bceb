"""Frozen CLIP image features of dataset items, extracted once and cached on disk.

Methods fitted on features (the linear probe, Tip-Adapter's cache model) ask for them through
:class:`~mudpt.methods.base.FitContext`. A cache file is keyed by everything that decides the
features: the backbone and the content fingerprint of its weights, the image transform (size,
normalisation, augmentation and its seed), the precision, and the items (paths, file sizes and
modification times), so another backbone, other weights or changed images never reuse it.
Files live under ``$MUDPT_CACHE/features`` (default ``~/.cache/mudpt/features``), written
atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from mudpt.core.files import atomic_write

FORMAT = 1


def cache_root() -> Path:
    """``$MUDPT_CACHE/features`` or ``~/.cache/mudpt/features``."""
    base = os.environ.get("MUDPT_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "mudpt") / "features"


def _items_digest(items: Sequence) -> str:
    digest = hashlib.sha256()
    for item in items:
        try:
            stat = os.stat(item.path)
            mark = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            mark = "missing"
        digest.update(f"{item.path}\t{item.label}\t{mark}\n".encode("utf-8"))
    return digest.hexdigest()


class FeatureExtractor:
    """Frozen image features of items for one backbone, cached on disk.

    Attributes:
        extractions: how many feature sets were computed (not read from the cache).
    """

    def __init__(self, clip, device, precision: str = "fp32", batch_size: int = 100, num_workers: int = 0,
                 seed: int = 1, progress: bool = False, root: Optional[Path] = None, dist_info=None):
        self.clip, self.device, self.precision = clip, torch.device(device), precision
        self.batch_size, self.num_workers, self.seed, self.progress = batch_size, num_workers, seed, progress
        self.root = Path(root) if root is not None else cache_root()
        self.dist_info = dist_info
        self.extractions = 0

    def key(self, items: Sequence, augment: bool, views: int, crop_scale) -> str:
        from mudpt.core.backbones import weights_fingerprint

        spec = {"format": FORMAT, "backbone": self.clip.name, "weights": weights_fingerprint(self.clip.name,
                self.clip.pretrained), "image_size": self.clip.image_size, "mean": self.clip.mean, "std": self.clip.std,
                "extra": {k: v for k, v in self.clip.extra.items() if k.startswith("train_")},
                "augment": bool(augment), "views": int(views), "crop_scale": list(crop_scale) if crop_scale else None,
                "seed": self.seed if augment else None, "precision": self.precision, "items": _items_digest(items)}
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def __call__(self, items: Sequence, augment: bool = False, views: int = 1,
                 crop_scale: Optional[tuple] = None) -> torch.Tensor:
        """``(views, N, D)`` float32 features (not normalised) of ``items``."""
        from safetensors.torch import load_file, save_file

        from mudpt.engine import distributed as D

        if not items:
            return torch.zeros(views, 0, self.clip.embed_dim)
        path = self.root / f"{self.key(items, augment, views, crop_scale)}.safetensors"
        info = self.dist_info or D.DistInfo()
        if info.is_main and not path.is_file():
            features = self._extract(items, augment, views, crop_scale)
            atomic_write(path, lambda tmp: save_file({"features": features.contiguous()}, tmp))
        D.barrier(info)
        features = load_file(str(path))["features"]
        if features.shape[:2] != (views, len(items)):  # a foreign or torn file under that name
            features = self._extract(items, augment, views, crop_scale)
        return features

    def _extract(self, items: Sequence, augment: bool, views: int, crop_scale) -> torch.Tensor:
        from mudpt.core import towers
        from mudpt.data import ImageDataset, build_transform
        from mudpt.engine.evaluation import autocast_context
        from mudpt.engine.sampling import SeededAugmentDataset

        self.extractions += 1
        transform = build_transform(self.clip, train=augment, crop_scale=crop_scale)
        base = ImageDataset(list(items), transform)
        out = []
        for view in range(views):
            # The augmentation of view v of item i is drawn from (seed, v, i), as an epoch's.
            dataset = SeededAugmentDataset(base, self.seed) if augment else base
            keys = [(index, view) for index in range(len(base))] if augment else list(range(len(base)))
            loader = torch.utils.data.DataLoader(_Keyed(dataset, keys), batch_size=self.batch_size,
                                                 num_workers=self.num_workers)
            chunks = []
            with torch.no_grad():
                for images, _ in loader:
                    with autocast_context(self.device, self.precision):
                        chunks.append(towers.encode_image(self.clip.model, images.to(self.device)).float().cpu())
            out.append(torch.cat(chunks))
        return torch.stack(out)


class _Keyed(torch.utils.data.Dataset):
    def __init__(self, base, keys):
        self.base, self.keys = base, keys

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        return self.base[self.keys[i]]
