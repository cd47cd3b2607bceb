"""Typed method configs: one dataclass per method, declared once, checked from its annotations.

A method's config is a dataclass deriving from :class:`MethodConfig`; each field is declared
with :func:`option`, which records its help text and simple constraints next to its default::

    @dataclass
    class CoOpConfig(MethodConfig):
        n_ctx: Optional[int] = option(None, "context vectors (default 16, or the init phrase's tokens)", min=1)
        class_token_position: Literal["end", "middle", "front"] = option("end", "where the class name goes")

Values are checked against the field's annotation when the config is built (``int``,
``float``, ``str``, ``bool``, ``Optional[...]``, ``Literal[...]``, ``list[str]`` and unions of
them), so a bad value is a :class:`~mudpt.core.errors.ConfigError` naming the option, the value
and what is valid. ``check()`` holds rules across fields.

What a user writes is the config; what the method derives from it on a given backbone (a depth
capped at the tower's blocks, a context length taken from an init phrase) is the *resolved*
config returned by ``resolve(clip)``. Only the user's config is saved; loading resolves it
again, so a saved run reloads to the same method on any backbone it fits.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Union

from mudpt.core.errors import ConfigError

__all__ = ["MethodConfig", "option"]

_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, help: str = "", *, min: Optional[float] = None,
           check: Optional[Callable[[Any], bool]] = None, expected: str = "") -> Any:
    """A config field: its default, a help line, and optional constraints.

    Args:
        default: the default value (lists are copied per instance).
        help: one line for docs and error messages.
        min: the smallest allowed value (numbers).
        check: a predicate the (type-checked) value must satisfy.
        expected: how to describe a valid value when ``check`` fails.
    """
    metadata = {"help": help, "min": min, "check": check, "expected": expected}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: copy.deepcopy(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "None"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0])}" if args else "a list"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _conform(value, hint):
    """``(True, value)`` (possibly converted: int -> float, tuple -> list) or ``(False, None)``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True, value
    if hint is type(None):
        return value is None, None
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args), value
    if origin in (Union, types.UnionType):
        for arm in args:
            ok, converted = _conform(value, arm)
            if ok:
                return True, converted
        return False, None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, None
        converted = []
        for item in value:
            ok, item = _conform(item, args[0] if args else Any)
            if not ok:
                return False, None
            converted.append(item)
        return True, converted
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else None
    if hint is str:
        return isinstance(value, str), value
    return isinstance(value, hint), value


@dataclass
class MethodConfig:
    """Base class of the methods' typed configs (see the module docstring)."""

    #: Registry name of the method this config belongs to (set by ``register_method``).
    method_name: typing.ClassVar[str] = "method"
    #: Hand-crafted templates per benchmark dataset, for a method whose config has a ``dataset``
    #: option and a ``template_option`` for the user's own: the default :meth:`for_dataset`
    #: records the dataset it trains on when the user chose neither.
    dataset_templates: typing.ClassVar[Optional[typing.Mapping]] = None
    template_option: typing.ClassVar[str] = "template"

    def __post_init__(self) -> None:
        self.validate()

    # -- checks -----------------------------------------------------------------------------------
    def validate(self) -> None:
        """Type-check every field against its annotation, then :meth:`check`."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            ok, converted = _conform(value, hints[f.name])
            meta = f.metadata
            if ok and value is not None and meta.get("min") is not None and converted < meta["min"]:
                ok = False
            if ok and value is not None and meta.get("check") is not None and not meta["check"](converted):
                ok = False
            if not ok:
                expected = meta.get("expected") or _describe(hints[f.name])
                if meta.get("min") is not None and not meta.get("expected"):
                    expected += f" >= {meta['min']}"
                raise ConfigError(
                    f"option {f.name}={value!r} of method {self.method_name!r} is invalid: expected "
                    f"{expected} ({meta.get('help', '')})", field=f"method_options.{f.name}")
            object.__setattr__(self, f.name, converted)
        self.check()

    def check(self) -> None:
        """Hook: rules across fields (raise :class:`ConfigError`)."""

    # -- resolution ----------------------------------------------------------------------------
    def for_dataset(self, dataset: str) -> "MethodConfig":
        """Hook: the config to train on ``dataset`` (e.g. zero-shot CLIP picks the dataset's
        hand-crafted template when the user chose none; see ``dataset_templates``). Default:
        unchanged. What it returns is what is saved."""
        known = self.dataset_templates
        if (known is not None and dataset in known and getattr(self, "dataset") is None
                and getattr(self, self.template_option) is None):
            return self.resolved(dataset=dataset)
        return self

    def resolve(self, clip) -> "MethodConfig":
        """The config with every derived default filled in for backbone ``clip`` (default: a
        copy). Raise :class:`ConfigError` for values that do not fit the backbone."""
        return self.resolved()

    def resolved(self, **values) -> "MethodConfig":
        """A copy with some fields set, without re-checking (resolved values may combine
        fields a user may not give together, e.g. a dataset and its templates)."""
        clone = copy.copy(self)
        for key, value in values.items():
            object.__setattr__(clone, key, value)
        return clone

    # -- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The fields as a JSON-able dict."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, options: dict, source: str = "") -> "MethodConfig":
        """Build from a mapping; an unknown key is a :class:`ConfigError` listing the valid ones."""
        if not isinstance(options, dict):
            raise ConfigError(f"options of method {cls.method_name!r}{source} must be a mapping, got {options!r}",
                              field="method_options")
        unknown = sorted(set(options) - set(cls.option_names()))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown} for method {cls.method_name!r}{source}; valid options: "
                f"{sorted(cls.option_names())}", field=f"method_options.{unknown[0]}")
        return cls(**options)

    @classmethod
    def describe(cls) -> list[dict]:
        """``[{"name", "type", "default", "help"}]`` of every option (docs, ``mudpt methods``)."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not _MISSING else f.default_factory()
            rows.append({"name": f.name, "type": _describe(hints[f.name]), "default": default,
                         "help": f.metadata.get("help", "")})
        return rows
