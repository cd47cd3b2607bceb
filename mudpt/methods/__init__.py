"""Registry of prompt-tuning methods: ``create(name, clip, classnames, **options)``.

A new method is one new module: subclass :class:`~mudpt.methods.base.PromptMethod`, decorate it
with ``@register_method("name")`` and import the module below (or from your own code).
"""

from __future__ import annotations

from typing import Sequence

from mudpt.methods.base import PromptMethod

__all__ = ["PromptMethod", "available_methods", "create", "get_method_class", "register_method"]

_METHODS: dict[str, type] = {}


def register_method(name: str):
    """Class decorator registering a :class:`PromptMethod` subclass under ``name``."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"method name must be a non-empty string without surrounding spaces, got {name!r}")

    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, PromptMethod)):
            raise TypeError(f"@register_method({name!r}) must decorate a PromptMethod subclass, got {cls!r}")
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered ({_METHODS[name].__module__})")
        cls.method_name = name
        _METHODS[name] = cls
        return cls

    return decorator


def available_methods() -> list:
    """Sorted names of the registered methods."""
    return sorted(_METHODS)


def get_method_class(name: str) -> type:
    """The class registered under ``name``; ValueError listing the valid names otherwise."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; available methods: {available_methods()}")
    return _METHODS[name]


def create(method: str, clip, classnames: Sequence[str], **options) -> PromptMethod:
    """Build method ``method`` on backbone ``clip`` for ``classnames``.

    Options are those of the method (see docs/METHODS.md); unknown options or bad values are a
    ValueError listing the valid ones. The returned module's ``forward(images)`` gives logits
    (batch, n_classes); only the method's own tensors require grad.
    """
    return get_method_class(method)(clip, classnames, **options)


# Built-in methods register themselves on import.
from mudpt.methods import cocoop, coop, ivlp, maple, mudpt, vpt, zsclip  # noqa: E402,F401
