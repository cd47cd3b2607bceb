"""A run's identity: the one definition of "the same run" (folder, checkpoint, sweep, report).

A run is what it learned from: the :class:`~mudpt.engine.config.TrainConfig` fields that decide
training (each field declares it: ``setting(identity=...)``; optimisation settings count only
for methods the training loop optimises), the method config as the method resolved it for the
dataset, the weights (content hash of a weight file, or the tag), the data (the dataset's
location and the content digest of its listing), the sampled items (the few-shot sample with
file sizes) and the precision actually used.

* The run folder records it (``run.json``); a folder is resumed, or reported finished, only for
  an equal identity, otherwise the differing keys are named (:meth:`RunIdentity.diff`).
* The checkpoint records it; a checkpoint of another identity is refused.
* A sweep submitting to Slurm compares the parts it can know without reading the data
  (:meth:`RunIdentity.diff` with ``parts``); the job itself compares all of it.
* A report row is a :meth:`RunIdentity.setting`: the identity without what tells the seeds
  and the protocol's rows and columns apart.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from mudpt.engine.config import TrainConfig

__all__ = ["RunIdentity", "describe_differences"]

PARTS = ("config", "method_config", "weights", "data", "sample", "precision")
# What a report row does not differ by: the seed and its sample (the samples of a row), what
# the protocol sets per row and column (dataset, shots, subsample) and where the data is.
_NOT_A_SETTING = ("config.seed", "config.shots", "config.dataset", "config.subsample", "sample", "data.",
                  "method_config")


def config_identity(cfg: TrainConfig | dict) -> dict:
    """The identity part of a config: the fields declared ``identity=True``, without the
    optimisation settings when the method is not optimised by the training loop."""
    from mudpt.core.errors import UserError
    from mudpt.methods import get_method_class

    values = cfg.to_dict() if isinstance(cfg, TrainConfig) else dict(cfg)
    keep = set(TrainConfig.fields_where(identity=True))
    try:
        optimized = get_method_class(values.get("method", "")).optimized
    except UserError:  # a method no loaded plug-in registers (a report of old runs): keep every field
        optimized = True
    if not optimized:
        keep -= set(TrainConfig.fields_where(training=True))
    return {k: v for k, v in values.items() if k in keep}


def _flatten(value: dict, prefix: str = "") -> dict:
    flat = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict) and key != "method_options":
            flat.update(_flatten(item, f"{name}."))
        else:
            flat[name] = item
    return flat


@dataclass(frozen=True)
class RunIdentity:
    """What a run learned from (see the module docstring); JSON-able through :meth:`to_dict`."""

    config: dict
    method_config: Optional[dict] = None
    weights: Optional[str] = None
    data: Optional[dict] = None
    sample: Any = None
    precision: Optional[str] = None

    @classmethod
    def of_run(cls, cfg: TrainConfig, method_config: dict, data_fingerprint: dict, dataset_dir,
               precision: str) -> "RunIdentity":
        """The full identity of a run about to train."""
        from mudpt.core.backbones import weights_fingerprint

        return cls(
            config=config_identity(cfg),
            method_config=json.loads(json.dumps(method_config)),
            weights=weights_fingerprint(cfg.backbone, cfg.pretrained),
            data={"location": str(Path(dataset_dir).resolve()) if dataset_dir is not None else str(cfg.dataset),
                  "content": data_fingerprint.get("content")},
            sample=data_fingerprint.get("sample"),
            precision=precision,
        )

    @classmethod
    def of_config(cls, cfg: TrainConfig | dict) -> "RunIdentity":
        """The part known from a config alone (what a run written before identities were
        recorded, or a sweep deciding what to submit, can compare)."""
        values = cfg.to_dict() if isinstance(cfg, TrainConfig) else dict(cfg)
        return cls(config=config_identity(values), data={"location": str(values.get("dataset"))})

    @classmethod
    def from_dict(cls, data: dict) -> "RunIdentity":
        return cls(**{k: data.get(k) for k in PARTS if k != "config"}, config=dict(data.get("config") or {}))

    @classmethod
    def of_results(cls, results: dict) -> "RunIdentity":
        """The identity a ``results.json`` records (from its config when it predates identities)."""
        if isinstance(results.get("identity"), dict):
            return cls.from_dict(results["identity"])
        return cls.of_config(results.get("config") or {})

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def flat(self) -> dict:
        """``{dotted key: value}`` (``config.lr``, ``data.location``, ...); ``method_options``
        stays one value."""
        return _flatten(self.to_dict())

    def diff(self, other: "RunIdentity", parts: tuple[str, ...] = PARTS) -> dict:
        """``{dotted key: (this value, other's value)}`` for every entry that differs, over
        ``parts`` of the identity."""
        a = {k: v for k, v in self.flat().items() if k.split(".")[0] in parts}
        b = {k: v for k, v in other.flat().items() if k.split(".")[0] in parts}
        return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}

    def setting(self) -> dict:
        """The flat identity without the seed, the sample, the protocol's row and column keys and
        the data's location: what one row of a report pools over seeds."""
        return {k: v for k, v in self.flat().items() if not k.startswith(_NOT_A_SETTING)}


def describe_differences(differences: dict, limit: int = 8) -> str:
    """``key: folder has X, this run wants Y; ...`` for an error message."""
    def short(value):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    items = list(differences.items())
    listed = "; ".join(f"{k}: folder has {short(a)}, this run wants {short(b)}" for k, (a, b) in items[:limit])
    return listed + (f"; and {len(items) - limit} more" if len(items) > limit else "")
