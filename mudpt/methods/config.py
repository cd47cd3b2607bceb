"""Typed method configs: one dataclass per method, declared once, checked from its annotations.

A method's config is a dataclass deriving from :class:`MethodConfig`; each field is declared
with :func:`option`, which records its help text and simple constraints next to its default::

    @dataclass
    class CoOpConfig(MethodConfig):
        n_ctx: Optional[int] = option(None, "context vectors (default 16, or the init phrase's tokens)", min=1)
        class_token_position: Literal["end", "middle", "front"] = option("end", "where the class name goes")

Values are checked against the field's annotation when the config is built (the machinery
of :mod:`mudpt.core.options`, which the engine's ``TrainConfig`` shares), so a bad value is a
:class:`~mudpt.core.errors.ConfigError` naming the option, the value and what is valid.
``check()`` holds rules across fields.

What a user writes is the config; what the method derives from it on a given backbone (a depth
capped at the tower's blocks, a context length taken from an init phrase) is the *resolved*
config returned by ``resolve(clip)``. Only the user's config is saved; loading resolves it
again, so a saved run reloads to the same method on any backbone it fits.
"""

from __future__ import annotations

import copy
import typing
from dataclasses import dataclass
from typing import Any, Optional

from mudpt.core.errors import ConfigError
from mudpt.core.options import TypedConfig, option

__all__ = ["MethodConfig", "option"]


@dataclass
class MethodConfig(TypedConfig):
    """Base class of the methods' typed configs (see the module docstring)."""

    #: Registry name of the method this config belongs to (set by ``register_method``).
    method_name: typing.ClassVar[str] = "method"
    #: Hand-crafted templates per benchmark dataset, for a method whose config has a ``dataset``
    #: option and a ``template_option`` for the user's own: the default :meth:`for_dataset`
    #: records the dataset it trains on when the user chose neither.
    dataset_templates: typing.ClassVar[Optional[typing.Mapping]] = None
    template_option: typing.ClassVar[str] = "template"

    def field_error(self, name: str, value: Any, expected: str, help: str) -> ConfigError:
        return ConfigError(f"option {name}={value!r} of method {self.method_name!r} is invalid: expected "
                           f"{expected} ({help})", field=f"method_options.{name}")

    # -- resolution ----------------------------------------------------------------------------
    def for_dataset(self, dataset: str, folder: Optional[str] = None) -> "MethodConfig":
        """Hook: the config to train on ``dataset`` (e.g. zero-shot CLIP picks the dataset's
        hand-crafted template when the user chose none; see ``dataset_templates``), whose files
        are in ``folder`` when known (CoPrompt finds its class descriptions there). Default:
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
    @classmethod
    def unknown_keys_error(cls, unknown: list, source: str) -> ConfigError:
        return ConfigError(f"unknown option(s) {unknown} for method {cls.method_name!r}{source}; valid options: "
                           f"{sorted(cls.option_names())}", field=f"method_options.{unknown[0]}")

    @classmethod
    def from_dict(cls, options: dict, source: str = "", coerce: bool = False) -> "MethodConfig":
        """Build from a mapping; an unknown key is a :class:`ConfigError` listing the valid ones."""
        if not isinstance(options, dict):
            raise ConfigError(f"options of method {cls.method_name!r}{source} must be a mapping, got {options!r}",
                              field="method_options")
        return super().from_dict(options, source, coerce)
