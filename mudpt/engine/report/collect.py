"""Collect: one record per finished run under a folder, labelled by its setting."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from mudpt.core.errors import MissingFileError, UserError
from mudpt.core.files import not_there
from mudpt.core.vocabulary import ALL_IMAGES, PROTOCOLS
from mudpt.engine.identity import RunIdentity

__all__ = ["RunRecord", "collect_runs", "display_name", "label_settings", "method_class", "method_label",
           "method_order"]


@dataclass
class RunRecord:
    """One finished run as a report sees it."""

    protocol: str
    dataset: str
    location: Optional[str]
    method: str  # the row label: the method, and the keys that tell its settings apart
    shots: int
    seed: int
    accuracy: float
    macro_f1: float
    evaluations: dict  # (dataset, subsample) -> the evaluation's JSON
    run_dir: str
    setting: dict  # RunIdentity.setting()
    method_name: str = ""  # the registered method (``method`` before labelling)

    def __post_init__(self):
        self.method_name = self.method_name or self.method


def method_class(name):
    """The registered class of a method (None for a method no loaded plug-in registers)."""
    from mudpt.methods import get_method_class

    try:
        return get_method_class(str(name))
    except UserError:
        return None


def method_order(labels) -> list[str]:
    """Row order: each method's ``report_order`` (the field's usual order), then others by name;
    variants of a method together."""
    def key(label):
        base = label.split(" [")[0]
        return (getattr(method_class(base), "report_order", float("inf")), base, label)

    return sorted(set(labels), key=key)


def method_label(label: str) -> str:
    """A row label with the method's display name (``coop [epochs=1]`` -> ``CoOp [epochs=1]``)."""
    base, bracket, rest = label.partition(" [")
    name = getattr(method_class(base), "label", None) or base
    return f"{name} [{rest}" if bracket else name


def display_name(dataset) -> str:
    """A dataset's name in tables: registered names as they are, bring-your-own paths by their
    folder or file name."""
    text = str(dataset)
    if "/" in text or "\\" in text:
        return Path(text.rstrip("/\\")).name
    return text


def _read(path: Path) -> dict:
    data = json.loads(path.read_text())
    float(data["accuracy"])
    return data


def collect_runs(runs_dir: str | Path, warnings: list | None = None) -> list[RunRecord]:
    """One record per finished run: protocol, dataset, method, shots, seed, metrics, evaluations,
    and what identifies its setting. Unreadable or incomplete ``results.json`` files are skipped
    with a line in ``warnings``. The protocol of a run is the first folder of its path under
    ``runs_dir`` when that is a protocol name (the sweep layout); otherwise base-class runs
    count as base-to-new and the rest as few-shot."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise MissingFileError(f"Runs folder: {not_there(runs_dir, 'folder')}.", field="runs_dir")
    warnings = [] if warnings is None else warnings
    records = []
    for results_path in sorted(runs_dir.rglob("results.json")):
        try:
            results = _read(results_path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            warnings.append(f"{results_path}: unreadable ({type(err).__name__}), not reported")
            continue
        except (KeyError, TypeError, ValueError):
            warnings.append(f"{results_path}: holds no accuracy, not reported")
            continue
        cfg = results.get("config", {}) if isinstance(results.get("config"), dict) else {}
        rel_parts = results_path.parent.relative_to(runs_dir).parts
        protocol = rel_parts[0] if rel_parts and rel_parts[0] in PROTOCOLS else (
            "base2new" if cfg.get("subsample") == "base" else "fewshot")
        evaluations = {}
        for eval_path in sorted((results_path.parent / "evaluations").glob("*.json")):
            try:
                ev = _read(eval_path)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
                warnings.append(f"{eval_path}: unreadable or without accuracy, not reported")
                continue
            evaluations[(display_name(ev.get("dataset")), ev.get("subsample", "all"))] = ev
        identity = RunIdentity.of_results(results)
        method = cfg.get("method", results.get("method"))
        learns = getattr(method_class(method), "learns_from_data", True)
        records.append(RunRecord(
            protocol=protocol,
            dataset=display_name(cfg.get("dataset", results.get("dataset"))),
            location=(identity.data or {}).get("location"),
            method=method,
            # --shots 0 trains on every image: apart from zero-shot CLIP's 0 (no image)
            shots=(int(cfg.get("shots", 0)) or ALL_IMAGES) if learns else 0,
            seed=int(cfg.get("seed", 1)),
            accuracy=float(results["accuracy"]),
            macro_f1=float(results.get("macro_f1", math.nan)),
            evaluations=evaluations,
            run_dir=str(results_path.parent),
            setting=identity.setting(),
        ))
    return records


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 48 else text[:24] + "..." + text[-20:]


def label_settings(records: list[RunRecord], warnings: list) -> list[RunRecord]:
    """Give every record the row label of its setting and drop duplicate seeds.

    Runs of one method under one protocol with different settings (another epoch count,
    backbone, weights, options...) are different rows: the label is the method followed by the
    keys that tell its settings apart (``coop [epochs=1]``). A dataset name shared by datasets at
    different locations gets the location's folder. Two runs of the same row with the same seed
    are one sample: the first (by path) is kept, the others are listed in ``warnings``.
    """
    by_method: dict = defaultdict(dict)
    for r in records:
        by_method[(r.protocol, r.method)].setdefault(json.dumps(r.setting, sort_keys=True), r.setting)
    labels = {}
    for (protocol, method), settings in by_method.items():
        if len(settings) == 1:
            labels.update({(protocol, method, k): method for k in settings})
            continue
        keys = sorted({k for s in settings.values() for k in s})
        differing = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in settings.values()}) > 1]
        for key, setting in settings.items():
            shown = ", ".join(f"{k.removeprefix('config.')}={_short(setting.get(k))}" for k in differing)
            labels[(protocol, method, key)] = f"{method} [{shown}]"
    locations = defaultdict(set)
    for r in records:
        locations[(r.protocol, r.dataset)].add(r.location)
    kept, seen = [], {}
    for r in records:
        label = labels[(r.protocol, r.method, json.dumps(r.setting, sort_keys=True))]
        dataset = r.dataset
        if len(locations[(r.protocol, r.dataset)]) > 1:
            dataset = f"{r.dataset} ({Path(str(r.location)).parent.name or r.location})"
        r = replace(r, method=label, method_name=r.method_name, dataset=dataset)
        row = (r.protocol, r.dataset, r.method, r.shots, r.seed)
        if row in seen:
            warnings.append(f"{r.run_dir}: same setting and seed {r.seed} as {seen[row]}; counted once "
                            "(the first), not as another seed")
            continue
        seen[row] = r.run_dir
        kept.append(r)
    return kept
