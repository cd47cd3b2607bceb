"""The built-in world as a plug-in: it registers its backbone, datasets, presets and profile
through the same public registries a user's package would use (entry point ``mudpt.plugins``)."""

from __future__ import annotations

from pathlib import Path

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
PROFILE = "world"


def _world_preset(method: str, protocol: str, shots) -> str | None:
    """Every protocol uses the method's world preset (the world is small enough for one recipe):
    ``<method>/world`` in any registered preset folder (a plug-in method brings its own)."""
    from mudpt.engine.config import available_presets

    name = f"{method}/world"
    return name if name in available_presets() else None


def register() -> None:
    """Register ``world-tiny``, the ``world_*`` datasets, the world presets and the ``world``
    profile (the default for requests that name no backbone)."""
    from mudpt.core.backbones import register_backbone
    from mudpt.engine.config import Profile, register_preset_dir, register_profile
    from mudpt.world.datasets import SOURCE, register_world_datasets

    register_backbone("world-tiny", "mudpt.world.model:load_world_tiny",
                            fingerprint="mudpt.world.model:world_tiny_fingerprint")
    register_world_datasets()
    register_preset_dir(CONFIGS_DIR)
    register_profile(Profile(PROFILE, _world_preset, backbones=("world-tiny",), default=True, dataset=SOURCE))
