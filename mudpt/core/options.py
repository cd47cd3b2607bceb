"""Typed configs declared once: :func:`option` fields checked from their annotations.

Both kinds of configuration in mudpt, a method's :class:`~mudpt.methods.config.MethodConfig`
and the engine's :class:`~mudpt.engine.config.TrainConfig`, are dataclasses deriving from
:class:`TypedConfig`. Each field is declared with :func:`option`, which records its help text,
simple constraints and any other facts about it (whether it is part of a run's identity, which
command-line flag sets it) next to its default::

    @dataclass
    class CoOpConfig(MethodConfig):
        n_ctx: Optional[int] = option(None, "context vectors (default 16, or the init phrase's tokens)", min=1)

Values are checked against the annotation when the config is built (``int``, ``float``,
``str``, ``bool``, ``dict``, ``Optional[...]``, ``Literal[...]``, ``list[str]`` and unions of
them); a bad value is a :class:`~mudpt.core.errors.ConfigError` naming the field, the value and
what is valid. ``check()`` holds rules across fields. Text from a command line or a YAML file
is converted to the field's type in one step, :meth:`TypedConfig.from_dict` with
``coerce=True`` (``"1e-3"`` -> 0.001, ``"none"`` -> None, ``"4.0"`` -> 4).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from typing import Any, Callable, Literal, Optional, Union

from mudpt.core.errors import ConfigError

__all__ = ["TypedConfig", "describe_type", "option"]

_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, help: str = "", *, min: Optional[float] = None,
           check: Optional[Callable[[Any], bool]] = None, expected: str = "", **facts: Any) -> Any:
    """A config field: its default, a help line, optional constraints and facts.

    Args:
        default: the default value (lists and dicts are copied per instance).
        help: one line for docs, error messages and command-line help.
        min: the smallest allowed value (numbers).
        check: a predicate the (type-checked) value must satisfy.
        expected: how to describe a valid value when ``check`` fails.
        facts: anything else a consumer reads from ``dataclasses.fields(...)[i].metadata``
            (e.g. ``identity=False`` or ``flag="--lr"`` of the engine's fields).
    """
    metadata = {"help": help, "min": min, "check": check, "expected": expected, **facts}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: copy.deepcopy(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def describe_type(hint) -> str:
    """A type annotation in words ("an integer", "one of 'a', 'b'", ...)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "None"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {describe_type(args[0])}" if args else "a list"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            dict: "a mapping"}.get(hint, str(hint))


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
    if origin is dict or hint is dict:
        return isinstance(value, dict), dict(value) if isinstance(value, dict) else None
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


_NONE_WORDS = ("", "none", "null")
_TRUE_WORDS, _FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")


def _from_text(value, hint):
    """A value read from text (command line, YAML scalar) converted towards ``hint``; values it
    cannot convert are returned as they are (the type check then names them)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if type(None) in args and isinstance(value, str) and value.strip().lower() in _NONE_WORDS:
            return None
        for arm in args:
            if arm is type(None):
                continue
            converted = _from_text(value, arm)
            if _conform(converted, arm)[0]:
                return converted
        return value
    if hint is bool and isinstance(value, str):
        word = value.strip().lower()
        return True if word in _TRUE_WORDS else False if word in _FALSE_WORDS else value
    if hint is int and not isinstance(value, bool):
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            return value
        return int(as_float) if as_float.is_integer() else value
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def _expected(hint, minimum) -> str:
    """A field's valid values in words: its type, with the bound on the numeric arm."""
    if minimum is None:
        return describe_type(hint)
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return " or ".join(describe_type(a) for a in rest) + f" >= {minimum} or None"
    return f"{describe_type(hint)} >= {minimum}"


@dataclasses.dataclass
class TypedConfig:
    """Base of mudpt's typed configs (see the module docstring). Subclasses are dataclasses
    whose fields are :func:`option` s; they may override :meth:`field_error` to word errors in
    their own terms and :meth:`check` for rules across fields."""

    def __post_init__(self) -> None:
        self.validate()

    # -- checks -----------------------------------------------------------------------------------
    @classmethod
    def type_hints(cls) -> dict:
        return typing.get_type_hints(cls)

    def validate(self) -> None:
        """Type-check every field against its annotation and constraints, then :meth:`check`."""
        hints = self.type_hints()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            ok, converted = _conform(value, hints[f.name])
            meta = f.metadata
            if ok and value is not None and meta.get("min") is not None and converted < meta["min"]:
                ok = False
            if ok and value is not None and meta.get("check") is not None and not meta["check"](converted):
                ok = False
            if not ok:
                expected = meta.get("expected") or _expected(hints[f.name], meta.get("min"))
                raise self.field_error(f.name, value, expected, meta.get("help", ""))
            object.__setattr__(self, f.name, converted)
        self.check()

    def field_error(self, name: str, value: Any, expected: str, help: str) -> ConfigError:
        """The error for a field whose value is invalid (subclasses word it in their terms)."""
        return ConfigError(f"{name}={value!r} is invalid: expected {expected} ({help})", field=name)

    def check(self) -> None:
        """Hook: rules across fields (raise :class:`ConfigError`)."""

    # -- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The fields as a JSON-able dict (copies)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def unknown_keys_error(cls, unknown: list[str], source: str) -> ConfigError:
        return ConfigError(f"unknown key(s) {unknown} in {source or 'the config'}; valid keys: "
                           f"{', '.join(cls.option_names())}", field=unknown[0])

    @classmethod
    def from_dict(cls, data: typing.Mapping, source: str = "", coerce: bool = False):
        """Build (and check) from a mapping; an unknown key is a :class:`ConfigError` listing the
        valid ones. ``coerce`` converts text values (command line, YAML) to the field types."""
        unknown = sorted(set(data) - set(cls.option_names()))
        if unknown:
            raise cls.unknown_keys_error(unknown, source)
        values = dict(data)
        if coerce:
            hints = cls.type_hints()
            values = {key: _from_text(value, hints[key]) for key, value in values.items()}
        return cls(**values)

    def replace(self, **changes):
        """A checked copy with some fields changed."""
        return type(self)(**{**self.to_dict(), **changes})
