"""Class names as every layer checks them: the data layer when it reads a dataset (``mudpt data
check``, ``train``), the methods when they are given a class list. One validation, so that what
``data check`` passes ``train`` accepts."""

from __future__ import annotations

from typing import Sequence

from mudpt.core.errors import ConfigError

__all__ = ["classname_text", "validate_classnames"]


def classname_text(name: str) -> str:
    """Class names as they enter prompts: underscores become spaces."""
    return name.replace("_", " ")


def validate_classnames(classnames: Sequence[str], source: str = "") -> list:
    """A list of distinct, non-empty class names, or a :class:`ConfigError` saying what is wrong
    (naming ``source``, where the names come from, when given)."""
    where = f" (the classes of {source})" if source else ""
    if isinstance(classnames, str) or not hasattr(classnames, "__iter__"):
        raise ConfigError(f"classnames must be a list of strings, got {type(classnames).__name__}{where}")
    classnames = list(classnames)
    bad = [c for c in classnames if not isinstance(c, str) or not c.strip()]
    if not classnames or bad:
        raise ConfigError(f"classnames must be a non-empty list of non-empty strings (bad entries: {bad[:5]}){where}")
    seen, duplicates = set(), []
    for name in classnames:
        key = classname_text(name).strip().lower()
        if key in seen and name not in duplicates:
            duplicates.append(name)
        seen.add(key)
    if duplicates:
        raise ConfigError(
            f"class names must be distinct{where}: {duplicates[:5]} occur more than once (after turning "
            "underscores into spaces, ignoring case); two classes with the same name get the same text "
            "features and can never be told apart")
    return classnames


def read_classnames_file(path) -> list:
    """Class names from a text file, one per line (blank lines and ``#`` comments skipped),
    checked by :func:`validate_classnames`; a missing file is an error naming it."""
    from pathlib import Path

    from mudpt.core.errors import MissingFileError
    from mudpt.core.files import not_there, read_text

    if not Path(path).is_file():
        raise MissingFileError(f"class names file: {not_there(path)}", field="classes")
    names = [line.strip() for line in read_text(path).splitlines()]
    return validate_classnames([n for n in names if n and not n.startswith("#")], source=str(path))
