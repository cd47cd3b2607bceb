"""mudpt: prompt tuning of CLIP-style vision-language models (MuDPT and its baselines)."""

__version__ = "0.1.0"

from mudpt.backbones import ClipBackbone, load_clip, register_backbone  # noqa: E402
from mudpt.checkpoint import load_learned, save_learned  # noqa: E402
from mudpt.methods import available_methods, create, register_method  # noqa: E402

__all__ = [
    "ClipBackbone",
    "available_methods",
    "create",
    "load_clip",
    "load_learned",
    "register_backbone",
    "register_method",
    "save_learned",
]
