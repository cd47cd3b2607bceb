"""Data order and augmentation that do not depend on processes, workers or resume points.

The order of images in epoch ``e`` is a permutation drawn from a generator seeded by
``(seed, e)``; every global batch is split evenly across DDP ranks; the random augmentation of
image ``i`` in epoch (or view) ``e`` is drawn from a generator seeded by ``(seed, e, i)``. Seeds
are derived with ``numpy.random.SeedSequence``.
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["RankBatchSampler", "SeededAugmentDataset", "derive_seed", "epoch_batches"]


def derive_seed(*numbers: int) -> int:
    """A 63-bit seed from a few non-negative integers (``numpy.random.SeedSequence``)."""
    return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(1, np.uint64)[0]) >> 1


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of one epoch (item indices), identical for any process count.

    As Dassl, the last incomplete batch is dropped when there is at least one full batch.
    """
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch, 0xBA7C4))
    order = torch.randperm(num_items, generator=generator).tolist()
    if num_items >= batch_size:
        usable = (num_items // batch_size) * batch_size
        return [order[i:i + batch_size] for i in range(0, usable, batch_size)]
    return [order]


class RankBatchSampler(torch.utils.data.Sampler):
    """This rank's share of every global batch of an epoch (a DistributedSampler equivalent).

    Yields lists of ``(item index, epoch)`` so that the dataset seeds each item's augmentation.
    :meth:`set_epoch` moves it to another epoch, so one DataLoader (with persistent worker
    processes: batches are drawn in the main process) serves the whole run.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, epoch: int, rank: int, world_size: int):
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches = epoch_batches(self.num_items, self.batch_size, self.seed, epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            share = len(batch) // self.world_size
            mine = batch[self.rank * share:(self.rank + 1) * share]
            yield [(index, self.epoch) for index in mine]


class SeededAugmentDataset(torch.utils.data.Dataset):
    """Wraps an image dataset so that item ``i`` of epoch ``e`` is augmented from seed ``(seed, e, i)``.

    torchvision's random transforms draw from torch's global generator; it is forked and
    seeded around each item, so the caller's RNG state is untouched and the result does not
    depend on worker processes, batch composition or resume point.
    """

    def __init__(self, base, seed: int):
        self.base, self.seed = base, seed

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        index, epoch = key
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only (what the transforms draw from): torch.manual_seed would also
            # queue lazy seeds for every accelerator backend, ~2 ms an image (measured).
            torch.default_generator.manual_seed(derive_seed(self.seed, epoch, index))
            random_state = random.getstate()
            random.seed(derive_seed(self.seed, epoch, index, 1))
            try:
                return self.base[index]
            finally:
                random.setstate(random_state)
