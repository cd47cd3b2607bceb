"""mudpt: prompt tuning of CLIP-style vision-language models (MuDPT and its baselines).

The core API (this module): backbones (:func:`load_clip`, :func:`register_backbone`), methods
(:func:`create`, :func:`available_methods`, :func:`register_method`), their learned state
(:func:`save_learned`, :func:`load_learned`) and the one error type for user mistakes
(:class:`UserError`). Datasets live in :mod:`mudpt.data`, training, evaluation and sweeps in
:mod:`mudpt.engine`; :func:`load_classifier` (a run folder or an exported model as a classifier)
is the engine's, reached from here without importing the engine until it is used.
"""

from mudpt._version import __version__  # noqa: E402,F401

from mudpt.core.backbones import ClipBackbone, available_backbones, load_clip, register_backbone  # noqa: E402
from mudpt.core.errors import UserError  # noqa: E402
from mudpt.methods import MethodConfig, available_methods, create, make_config, register_method  # noqa: E402
from mudpt.methods.interpret import interpret_prompts  # noqa: E402
from mudpt.methods.learned import load_learned, save_learned  # noqa: E402

__all__ = [
    "ClipBackbone",
    "MethodConfig",
    "UserError",
    "available_backbones",
    "available_methods",
    "create",
    "interpret_prompts",
    "load_clip",
    "load_learned",
    "make_config",
    "register_backbone",
    "register_method",
    "save_learned",
    "load_classifier",
]


def __getattr__(name: str):
    if name == "load_classifier":  # the engine's; imported on first use (the core does not need it)
        from mudpt.engine.classifier import load_classifier

        return load_classifier
    raise AttributeError(f"module 'mudpt' has no attribute {name!r}")
