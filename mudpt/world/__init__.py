"""The built-in synthetic world: a procedural image-text generator, benchmark-layout datasets,
a tiny CLIP pretrained on it (shipped as ``world-tiny``) and ``mudpt demo``.

Importing this package registers the ``world_*`` datasets with :mod:`mudpt.data` (the data layer
imports it on demand); the ``world-tiny`` backbone is registered by :mod:`mudpt.backbones` and
built by :func:`mudpt.world.model.load_world_tiny`.
"""

from mudpt.world.datasets import (available_world_datasets, ensure_dataset, generate_all,
                                  register_world_datasets, world_root)

register_world_datasets()

__all__ = ["available_world_datasets", "ensure_dataset", "generate_all", "register_world_datasets",
           "world_root"]
