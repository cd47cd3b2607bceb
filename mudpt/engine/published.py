"""Published numbers to set beside a sweep's own: the package's data file and its lookup.

``mudpt/engine/data/published.yaml`` records, with the source of each number, the base-to-new
averages over the 11 datasets of the methods mudpt implements (MaPLe's, PromptSRC's and
KgCoOp's README tables); per-dataset numbers (``base2new.per_dataset``, ``fewshot``) go in the
same form. A run matches the entry of its method whose ``when`` conditions (config keys of the
run, e.g. ``method_options.n_ctx_vision: 0`` for deep language prompting) all hold, the most
specific one first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from mudpt.core.errors import ConfigError, CorruptFileError, MissingFileError

__all__ = ["DEFAULT_FILE", "Published", "load_published"]

DEFAULT_FILE = Path(__file__).resolve().parent / "data" / "published.yaml"
FORMAT = "mudpt-published/1"


class Published:
    """A published-numbers file: ``base2new(dataset, method, setting)`` and
    ``fewshot(dataset, method, setting)`` return the matching entry (a dict with the numbers,
    ``source`` and the source's description) or None."""

    def __init__(self, data: dict, path: Path):
        self.path = path
        self.sources = dict(data.get("sources") or {})
        self._base2new = dict(data.get("base2new") or {})
        self._fewshot = dict(data.get("fewshot") or {})
        for entries in self._entry_lists():
            for entry in entries:
                if not isinstance(entry, dict) or "method" not in entry:
                    raise CorruptFileError(f"{path}: every entry needs a 'method', got {entry!r}")
                if entry.get("source") not in self.sources:
                    raise CorruptFileError(f"{path}: entry {entry!r} names source {entry.get('source')!r}, which "
                                           f"is not among its sources ({', '.join(self.sources) or 'none'})")

    def _entry_lists(self):
        yield self._base2new.get("average") or []
        for entries in (self._base2new.get("per_dataset") or {}).values():
            yield entries
        for entries in self._fewshot.values():
            yield entries

    @staticmethod
    def _value(setting: dict, key: str):
        """A run's value of a config key (``lr``, ``method_options.n_ctx_vision``) in its setting."""
        if key.startswith("method_options."):
            return (setting.get("config.method_options") or {}).get(key.split(".", 1)[1])
        return setting.get(f"config.{key}", setting.get(key))

    @classmethod
    def _match(cls, entries, method: str, setting: dict) -> Optional[dict]:
        candidates = []
        for entry in entries or []:
            if entry["method"] != method:
                continue
            when = entry.get("when") or {}
            if all(cls._value(setting, key) == value for key, value in when.items()):
                candidates.append((len(when), entry))
        if not candidates:
            return None
        return max(candidates, key=lambda pair: pair[0])[1]

    def describe(self, entry: dict) -> str:
        return self.sources.get(entry.get("source"), entry.get("source", ""))

    def base2new(self, dataset: Optional[str], method: str, setting: dict) -> Optional[dict]:
        """The entry for ``dataset`` (``None``: the 11-dataset average)."""
        if dataset is None:
            return self._match(self._base2new.get("average"), method, setting)
        return self._match((self._base2new.get("per_dataset") or {}).get(dataset), method, setting)

    def fewshot(self, dataset: str, method: str, setting: dict) -> Optional[dict]:
        """The entry for ``dataset``: its ``shots`` maps shot counts to accuracies."""
        return self._match(self._fewshot.get(dataset), method, setting)


def load_published(path: Optional[str | Path] = None) -> Published:
    """The package's published numbers, or those of another file of the same form."""
    import yaml

    path = Path(path) if path is not None else DEFAULT_FILE
    if not path.is_file():
        raise MissingFileError(f"published-numbers file {path} does not exist", field="published")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise CorruptFileError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a published-numbers file: expected format: {FORMAT}", field="published")
    return Published(data, path)
