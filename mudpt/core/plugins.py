"""Plug-ins: packages that register backbones, datasets and presets through the public registries.

A plug-in is a module with a ``register()`` function, named by an entry point of the group
``mudpt.plugins`` in its package's metadata::

    [project.entry-points."mudpt.plugins"]
    my_data = "my_package.mudpt_plugin:register"

or listed (comma-separated module names, each with a ``register()``) in ``$MUDPT_PLUGINS``.
The registries call :func:`load_plugins` the first time a name is looked up, so registering
costs nothing until it is needed. mudpt's own built-in synthetic world is such a plug-in.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import threading
import warnings

__all__ = ["ENTRY_POINT_GROUP", "ENV_VAR", "load_plugins", "loaded_plugins"]

ENTRY_POINT_GROUP = "mudpt.plugins"
ENV_VAR = "MUDPT_PLUGINS"

log = logging.getLogger(__name__)
_lock = threading.RLock()
_loaded: dict[str, str] = {}  # plug-in name -> "module:function"
_state = {"done": False, "running": False}


def _entry_points() -> list[tuple[str, str]]:
    found = [(ep.name, ep.value) for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]
    for module in filter(None, (m.strip() for m in os.environ.get(ENV_VAR, "").split(","))):
        found.append((module, f"{module}:register"))
    return found


def _run(name: str, target: str) -> None:
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    register = getattr(module, attr or "register")
    register()
    _loaded[name] = target


def load_plugins() -> dict[str, str]:
    """Run every plug-in's ``register()`` once (later calls return at once).

    A plug-in that fails to import or register is reported with a warning naming it and the
    error, and the others still load (set ``MUDPT_DEBUG=1`` to get the traceback instead).
    Returns ``{plug-in name: "module:function"}`` of the loaded ones.
    """
    with _lock:
        if _state["done"] or _state["running"]:
            return dict(_loaded)
        _state["running"] = True
        try:
            for name, target in _entry_points():
                if name in _loaded:
                    continue
                try:
                    _run(name, target)
                except Exception as error:  # noqa: BLE001 - one broken plug-in must not stop the others
                    if os.environ.get("MUDPT_DEBUG"):
                        raise
                    warnings.warn(f"mudpt plug-in {name!r} ({target}) could not be loaded: "
                                  f"{type(error).__name__}: {error}", RuntimeWarning, stacklevel=2)
            _state["done"] = True
        finally:
            _state["running"] = False
        return dict(_loaded)


def loaded_plugins() -> dict[str, str]:
    """The plug-ins loaded so far (``{name: "module:function"}``)."""
    return dict(_loaded)
