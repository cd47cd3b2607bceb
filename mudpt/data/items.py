"""The data item shared by every reader: one image with its label and class name."""

from __future__ import annotations

from dataclasses import dataclass

from mudpt.core.errors import CorruptFileError


@dataclass(frozen=True)
class Datum:
    """One labelled image.

    Attributes:
        path: absolute path of the image file.
        label: integer class index (index into the dataset's ``classnames``).
        classname: human-readable class name used to build text prompts.
        domain: domain index (kept for compatibility with the reference code; always 0 here).
    """

    path: str
    label: int
    classname: str
    domain: int = 0

    @property
    def impath(self) -> str:
        """Alias of :attr:`path` (the reference code's name for it)."""
        return self.path

    def __setstate__(self, state: dict) -> None:
        # Accept both our own pickled state and the reference code's Datum state, whose
        # attributes are stored with leading underscores and call the path "impath".
        translated = {
            "path": state.get("path", state.get("_impath")),
            "label": state.get("label", state.get("_label")),
            "classname": state.get("classname", state.get("_classname", "")),
            "domain": state.get("domain", state.get("_domain", 0)),
        }
        if not isinstance(translated["path"], str):
            raise CorruptFileError(f"pickled data item has no image path string: {sorted(state)}")
        if isinstance(translated["label"], bool) or not isinstance(translated["label"], int):
            raise CorruptFileError(f"pickled data item for {translated['path']!r} has a non-integer "
                             f"label {translated['label']!r}")
        for key, value in translated.items():
            object.__setattr__(self, key, value)
