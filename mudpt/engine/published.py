"""Published numbers to set beside a sweep's own: the package's data file and its lookup.

``mudpt/engine/data/published.yaml`` records, with the source of each number, the base-to-new
averages over the 11 datasets (the README tables of MaPLe, PromptSRC, KgCoOp, MMA and
CoPrompt, and the table in DePT's README figure), the per-dataset base-to-new tables (of the
MaPLe, PromptSRC and KgCoOp papers and DePT's figure) and the cross-dataset and
domain-generalisation tables of the MaPLe, PromptSRC and KgCoOp papers; few-shot numbers (``fewshot``) go in the same
form. A run matches the entry of its method whose ``when`` conditions (config keys of the run,
e.g. ``method_options.n_ctx_vision: 0`` for deep language prompting) all hold, the most specific
one first, and only where the section's ``applies_to`` (backbone, shot count) holds for the run.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Optional

from mudpt.core.errors import ConfigError, CorruptFileError, MissingFileError
from mudpt.core.vocabulary import harmonic_mean

__all__ = ["DEFAULT_FILE", "Published", "load_published"]

DEFAULT_FILE = Path(__file__).resolve().parent / "data" / "published.yaml"
FORMAT = "mudpt-published/1"
_NUMBER_FIELDS = ("base", "new", "hm", "source_acc", "average")
_SECTIONS = ("base2new", "xd", "dg", "fewshot")
# Two numbers each rounded to 0.01 differ from the exact values by at most 0.005 each.
ROUNDING = 0.01


class Published:
    """A published-numbers file: ``base2new(dataset, method, setting, shots)``,
    ``transfer(protocol, source, method, setting, shots)`` (``protocol`` ``"xd"`` or ``"dg"``) and
    ``fewshot(dataset, method, setting)`` return the matching entry (a dict with the numbers and
    ``source``) or None."""

    def __init__(self, data: dict, path: Path):
        self.path = path
        self.sources = dict(data.get("sources") or {})
        self._sections = {}
        for name in _SECTIONS:
            section = data.get(name) or {}
            if not isinstance(section, dict):
                raise CorruptFileError(f"{path}: '{name}' must be a mapping, got {section!r}")
            self._sections[name] = section
        for where, entries in self._entry_lists():
            if not isinstance(entries, list):
                raise CorruptFileError(f"{path}: {where} must be a list of entries, got {entries!r}")
            for entry in entries:
                self._check_entry(where, entry)

    def _check_entry(self, where: str, entry) -> None:
        path = self.path
        if not isinstance(entry, dict) or "method" not in entry:
            raise CorruptFileError(f"{path}: every entry needs a 'method', got {entry!r} in {where}")
        if entry.get("source") not in self.sources:
            raise CorruptFileError(f"{path}: entry {entry!r} names source {entry.get('source')!r}, which "
                                   f"is not among its sources ({', '.join(self.sources) or 'none'})")
        numbers = [(k, entry[k]) for k in _NUMBER_FIELDS if k in entry]
        numbers += [(f"targets.{k}", v) for k, v in (entry.get("targets") or {}).items()]
        numbers += [(f"shots.{k}", v) for k, v in (entry.get("shots") or {}).items()]
        for key, value in numbers:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise CorruptFileError(f"{path}: {where}, method {entry['method']}: {key} must be a number "
                                       f"(accuracy in %), got {value!r}")

    def _entry_lists(self):
        b2n = self._sections["base2new"]
        yield "base2new.average", b2n.get("average") or []
        for dataset, entries in (b2n.get("per_dataset") or {}).items():
            yield f"base2new.per_dataset.{dataset}", entries
        for protocol in ("xd", "dg"):
            for source, entries in (self._sections[protocol].get("by_source") or {}).items():
                yield f"{protocol}.by_source.{source}", entries
        for dataset, entries in self._sections["fewshot"].items():
            if dataset != "applies_to":
                yield f"fewshot.{dataset}", entries

    @staticmethod
    def _value(setting: dict, key: str):
        """A run's value of a config key (``lr``, ``method_options.n_ctx_vision``) in its setting."""
        if key.startswith("method_options."):
            return (setting.get("config.method_options") or {}).get(key.split(".", 1)[1])
        return setting.get(f"config.{key}", setting.get(key))

    def applies(self, section: str, setting: dict, shots: Optional[int] = None) -> bool:
        """Whether the section's ``applies_to`` holds for a run: its backbone (OpenAI spellings
        accepted) and, for a run that used shots, its shot count."""
        from mudpt.core.backbones import normalize_model_name

        conditions = self._sections[section].get("applies_to") or {}
        if "backbone" in conditions:
            backbone = self._value(setting, "backbone")
            if backbone is None or normalize_model_name(str(backbone)) != normalize_model_name(
                    str(conditions["backbone"])):
                return False
        if "shots" in conditions and shots:  # 0: a zero-shot row, which used no shots
            if int(shots) != int(conditions["shots"]):
                return False
        return True

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

    def base2new(self, dataset: Optional[str], method: str, setting: dict,
                 shots: Optional[int] = None) -> Optional[dict]:
        """The entry for ``dataset`` (``None``: the 11-dataset average)."""
        if not self.applies("base2new", setting, shots):
            return None
        section = self._sections["base2new"]
        if dataset is None:
            return self._match(section.get("average"), method, setting)
        return self._match((section.get("per_dataset") or {}).get(dataset), method, setting)

    def transfer(self, protocol: str, source: str, method: str, setting: dict,
                 shots: Optional[int] = None) -> Optional[dict]:
        """The cross-dataset (``protocol="xd"``) or domain-generalisation (``"dg"``) entry of a
        run trained on ``source``: ``source_acc``, ``targets`` (dataset -> accuracy) and, where the
        table has one, ``average``."""
        if not self.applies(protocol, setting, shots):
            return None
        return self._match((self._sections[protocol].get("by_source") or {}).get(source), method, setting)

    def fewshot(self, dataset: str, method: str, setting: dict) -> Optional[dict]:
        """The entry for ``dataset``: its ``shots`` maps shot counts to accuracies."""
        if not self.applies("fewshot", setting):
            return None
        return self._match(self._sections["fewshot"].get(dataset), method, setting)

    def consistency_problems(self, tolerance: float = ROUNDING) -> list[str]:
        """Where the file's numbers disagree with each other by more than rounding: a base-to-new
        HM that is not the harmonic mean of its base and new; a method whose per-dataset base and
        new, over all the datasets its average is over, do not average to that average; a
        transfer entry whose ``average`` is not the mean of its targets. Typing errors in a table
        entered by hand show up here."""
        problems = []
        b2n = self._sections["base2new"]
        per_dataset = b2n.get("per_dataset") or {}
        for where, entries in self._entry_lists():
            for e in entries:
                if where.startswith("base2new") and all(k in e for k in ("base", "new", "hm")):
                    hm = harmonic_mean(float(e["base"]), float(e["new"]))
                    if abs(hm - float(e["hm"])) > tolerance:
                        problems.append(f"{where}, {e['method']}: hm {e['hm']} but the harmonic mean of base "
                                        f"{e['base']} and new {e['new']} is {hm:.2f}")
                if where.startswith(("xd", "dg")) and "average" in e and e.get("targets"):
                    mean = statistics.fmean(float(v) for v in e["targets"].values())
                    if abs(mean - float(e["average"])) > tolerance:
                        problems.append(f"{where}, {e['method']}: average {e['average']} but its "
                                        f"{len(e['targets'])} targets average {mean:.2f}")
        if len(per_dataset) >= 2:
            for avg in b2n.get("average") or []:
                same = [[e for e in entries if e["method"] == avg["method"]
                         and (e.get("when") or {}) == (avg.get("when") or {})] for entries in per_dataset.values()]
                rows = [found[0] for found in same if found]
                if len(rows) != len(per_dataset):
                    continue  # the average is over datasets not all of which are in the file
                for key in ("base", "new"):
                    mean = statistics.fmean(float(r[key]) for r in rows)
                    if key in avg and abs(mean - float(avg[key])) > tolerance:
                        problems.append(f"base2new, {avg['method']}: the {len(rows)} per-dataset {key} accuracies "
                                        f"average {mean:.3f}, the recorded average is {avg[key]}")
        return problems


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
