"""The built-in synthetic world: a procedural image-text generator, benchmark-layout datasets,
a tiny CLIP pretrained on it (shipped as ``world-tiny``) and ``mudpt demo``.

The world is a plug-in of the core (:mod:`mudpt.world.plugin`, loaded through the
``mudpt.plugins`` entry point): it registers the ``world-tiny`` backbone, the ``world_*``
datasets, its presets and its profile with the public registries.
"""

from mudpt.world.datasets import available_world_datasets, ensure_dataset, generate_all, world_root

__all__ = ["available_world_datasets", "ensure_dataset", "generate_all", "world_root"]
