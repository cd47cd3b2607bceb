"""Registry of prompt-tuning methods: ``create(name, clip, classnames, **options)``.

A new method is one new module: a :class:`~mudpt.methods.config.MethodConfig` dataclass and a
:class:`~mudpt.methods.base.PromptMethod` subclass naming it as ``Config``, decorated with
``@register_method("name")`` (see docs/METHODS.md, "Adding a method").
"""

from __future__ import annotations

from typing import Optional, Sequence

from mudpt.core.errors import ConfigError
from mudpt.methods.base import PromptMethod
from mudpt.methods.config import MethodConfig, option

__all__ = ["MethodConfig", "PromptMethod", "available_methods", "create", "get_method_class", "make_config",
           "option", "register_method"]

_METHODS: dict[str, type] = {}


def register_method(name: str):
    """Class decorator registering a :class:`PromptMethod` subclass (and its ``Config``) under ``name``."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"method name must be a non-empty string without surrounding spaces, got {name!r}")

    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, PromptMethod)):
            raise TypeError(f"@register_method({name!r}) must decorate a PromptMethod subclass, got {cls!r}")
        if not (isinstance(cls.Config, type) and issubclass(cls.Config, MethodConfig)) or cls.Config is MethodConfig:
            raise TypeError(f"method {name!r} must name its own MethodConfig dataclass as Config")
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered ({_METHODS[name].__module__})")
        if not cls.learns_from_data and cls.optimized:
            raise TypeError(f"method {name!r} learns nothing from data, so the training loop cannot optimise it: "
                            "set optimized = False")
        # Facts are the registered class's own: a subclass registered under another name (KgCoOp
        # from CoOp) does not inherit its parent's label, row or presets.
        own = vars(cls)
        cls.label = own.get("label") or name
        cls.report_order = own.get("report_order", PromptMethod.report_order)
        cls.published_presets = own.get("published_presets", {})
        cls.method_name = name
        cls.Config.method_name = name
        _METHODS[name] = cls
        return cls

    return decorator


def available_methods() -> list:
    """Sorted names of the registered methods."""
    return sorted(_METHODS)


def get_method_class(name: str) -> type:
    """The class registered under ``name``; a :class:`ConfigError` listing the valid names otherwise."""
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; available methods: {', '.join(available_methods())}",
                          field="method")
    return _METHODS[name]


def make_config(method: str, options: Optional[dict] = None) -> MethodConfig:
    """The typed config of ``method`` from a mapping of options (checked; unknown keys listed)."""
    return get_method_class(method).Config.from_dict(dict(options or {}))


def create(method: str, clip, classnames: Sequence[str], config: Optional[MethodConfig] = None,
           **options) -> PromptMethod:
    """Build method ``method`` on backbone ``clip`` for ``classnames``.

    Options are given as keywords (``n_ctx=4``) or as the method's typed config
    (``config=mudpt.methods.coop.CoOpConfig(n_ctx=4)``), not both. Unknown options or bad values
    are a :class:`~mudpt.core.errors.ConfigError` listing the valid ones. The returned module's
    ``forward(images)`` gives logits (batch, n_classes); only the method's own tensors require grad.
    """
    cls = get_method_class(method)
    if config is None:
        config = cls.Config.from_dict(options)
    elif options:
        raise ConfigError(f"create({method!r}, ...): give options either as keywords or as config=, not both",
                          field="method_options")
    elif type(config) is not cls.Config:
        raise ConfigError(f"method {method!r} takes a {cls.Config.__name__}, got {type(config).__name__}",
                          field="method_options")
    return cls(clip, classnames, config)


# Built-in methods register themselves on import.
from mudpt.methods import (clap, clip_adapter, clip_lora, cocoop, coop, coprompt, gda, ivlp, kgcoop,  # noqa: E402,F401
                           linear_probe, lpp, maple, mma, mudpt, prograd, promptsrc, tcp, tip_adapter, vpt, zsclip)
from mudpt.methods import dept  # noqa: E402,F401  (after the methods it wraps)
