"""Training configuration: the :class:`TrainConfig` dataclass, YAML presets and overrides.

A preset is a YAML file shipped in ``mudpt/engine/configs/<method>/<name>.yaml`` holding
``TrainConfig`` fields (``method_options`` is a nested mapping passed to ``mudpt.create``).
``load_config("mudpt/vit_b16_ep10", overrides={...})`` reads one; a path to any YAML file works
too. Overrides are flat field names or dotted keys into ``method_options``
(``method_options.n_ctx=4``), as given by ``--set key=value`` on the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"

PRECISIONS = ("fp32", "bf16", "fp16")
SUBSAMPLES = ("all", "base", "new")
DEVICES_HELP = "'auto', 'cpu', 'cuda' or 'cuda:N'"

# Fields that do not change what is learned: a run folder may be resumed with other values.
NON_IDENTITY_FIELDS = frozenset(
    {"output_dir", "root", "num_workers", "eval_batch_size", "overwrite", "device", "progress",
     "eval_every_epoch", "tensorboard", "config_name", "log_every"}
)


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message says what is valid."""


@dataclass
class TrainConfig:
    """Everything that defines one training run (one method, dataset, shot count and seed).

    The defaults are the built-in synthetic world (``world_source`` with the ``world-tiny``
    backbone) so that a run works without any download. Optimisation follows the reference
    (Dassl): SGD with momentum and weight decay, a cosine schedule over ``epochs`` after
    ``warmup_epochs`` constant epochs at ``warmup_lr``. ``batch_size`` is the global batch: with
    DDP each of N processes takes ``batch_size / N`` images of every batch.
    """

    method: str = "mudpt"
    dataset: str = "world_source"
    root: str | None = None
    shots: int = 16
    seed: int = 1
    subsample: str = "all"
    backbone: str = "world-tiny"
    pretrained: str | None = None
    output_dir: str = "runs/run"
    epochs: int = 10
    batch_size: int = 4
    lr: float = 0.0025
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    precision: str = "fp32"
    method_options: dict = field(default_factory=dict)
    num_workers: int = 0
    eval_batch_size: int = 100
    overwrite: bool = False
    device: str = "auto"
    eval_every_epoch: bool = False
    tensorboard: bool = False
    log_every: int = 1
    config_name: str | None = None

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict:
        """A JSON-able dict of every field."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Build and validate a config from a mapping; unknown keys are a :class:`ConfigError`."""
        unknown = sorted(set(data) - set(field_names()))
        if unknown:
            raise ConfigError(
                f"Unknown configuration key(s) {unknown} in {source}. Valid keys are: "
                f"{', '.join(field_names())}."
            )
        cfg = cls()
        for key, value in data.items():
            setattr(cfg, key, _coerce(key, value, source))
        cfg.validate()
        return cfg

    def identity(self) -> dict:
        """The fields that decide what a run learns (compared when resuming a run folder)."""
        return {k: v for k, v in self.to_dict().items() if k not in NON_IDENTITY_FIELDS}

    def replace(self, **changes) -> "TrainConfig":
        """A validated copy with some fields changed."""
        data = self.to_dict()
        data.update(changes)
        return TrainConfig.from_dict(data)

    def validate(self, check_registries: bool = False) -> None:
        """Raise :class:`ConfigError` naming the field, its value and what is valid.

        ``check_registries`` also checks method and dataset names against the core's and the
        data layer's registries (imports them).
        """
        problems = []

        def need(cond, msg):
            if not cond:
                problems.append(msg)

        need(self.precision in PRECISIONS,
             f"precision={self.precision!r} is not one of {', '.join(PRECISIONS)}")
        need(self.subsample in SUBSAMPLES,
             f"subsample={self.subsample!r} is not one of {', '.join(SUBSAMPLES)}")
        need(isinstance(self.shots, int) and self.shots >= 0, f"shots={self.shots!r} must be an integer >= 0 (0 = all images)")
        need(isinstance(self.epochs, int) and self.epochs >= 1, f"epochs={self.epochs!r} must be an integer >= 1")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, f"batch_size={self.batch_size!r} must be an integer >= 1")
        need(isinstance(self.eval_batch_size, int) and self.eval_batch_size >= 1,
             f"eval_batch_size={self.eval_batch_size!r} must be an integer >= 1")
        need(isinstance(self.warmup_epochs, int) and 0 <= self.warmup_epochs,
             f"warmup_epochs={self.warmup_epochs!r} must be an integer >= 0")
        need(isinstance(self.num_workers, int) and self.num_workers >= 0, f"num_workers={self.num_workers!r} must be >= 0")
        need(isinstance(self.log_every, int) and self.log_every >= 1, f"log_every={self.log_every!r} must be >= 1")
        for name in ("lr", "warmup_lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
                 f"{name}={value!r} must be a finite number >= 0")
        need(isinstance(self.method_options, dict),
             f"method_options={self.method_options!r} must be a mapping of option name to value")
        device = str(self.device)
        need(device in ("auto", "cpu", "cuda") or device.startswith("cuda:"),
             f"device={device!r} is not one of {DEVICES_HELP}")
        need(bool(self.method) and isinstance(self.method, str), "method must be a non-empty name")
        need(bool(self.dataset) and isinstance(self.dataset, str), "dataset must be a non-empty name or path")
        if problems:
            raise ConfigError("Invalid configuration: " + "; ".join(problems) + ".")
        if check_registries:
            check_method_name(self.method)
            check_dataset_name(self.dataset)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _field_types() -> dict[str, Any]:
    defaults = TrainConfig()
    return {name: type(getattr(defaults, name)) for name in field_names()}


_OPTIONAL_STR = {"root", "pretrained", "config_name"}


def _coerce(key: str, value: Any, source: str) -> Any:
    """Convert a YAML/CLI value to the field's type, or raise a ConfigError naming both."""
    if key in _OPTIONAL_STR:
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        return str(value)
    kind = _field_types()[key]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}={value!r} in {source} must be true or false.")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} in {source} must be an integer.")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} in {source} must be an integer.") from None
        if not as_float.is_integer():
            raise ConfigError(f"{key}={value!r} in {source} must be an integer.")
        return int(as_float)
    if kind is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} in {source} must be a number.") from None
    if kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} in {source} must be a mapping, got {value!r}.")
        return dict(value)
    if value is None:
        raise ConfigError(f"{key} in {source} must not be empty.")
    return str(value)


# ---------------------------------------------------------------------- presets


def available_presets() -> list[str]:
    """Names of the shipped presets, ``<method>/<name>``."""
    return sorted(
        f"{p.parent.name}/{p.stem}" for p in CONFIGS_DIR.glob("*/*.yaml")
    )


def resolve_preset_path(name_or_path: str | Path) -> Path:
    """The YAML file of a preset name (``mudpt/vit_b16_ep10``) or an existing path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    name = str(name_or_path)
    if name.endswith((".yaml", ".yml")):
        name = name.rsplit(".", 1)[0]
    shipped = CONFIGS_DIR / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(
        f"Unknown config {str(name_or_path)!r}: it is neither an existing YAML file nor a shipped "
        f"preset. Shipped presets: {', '.join(available_presets())}."
    )


def read_preset(name_or_path: str | Path) -> dict:
    """The raw mapping of a preset (not validated)."""
    path = resolve_preset_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of keys to values, got {type(data).__name__}.")
    return data


def parse_set_items(items: list[str] | None) -> dict:
    """Parse ``key=value`` strings (``--set``) into a dict; values are read as YAML scalars."""
    overrides: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must look like key=value (e.g. --set lr=0.002 or --set method_options.n_ctx=4).")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        overrides[key] = value
    return overrides


def apply_overrides(data: dict, overrides: Mapping[str, Any] | None, source: str = "overrides") -> dict:
    """Apply flat or dotted overrides to a raw config mapping (returns a new dict)."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    valid = set(field_names())
    for key, value in (overrides or {}).items():
        head, _, rest = key.partition(".")
        if head not in valid:
            raise ConfigError(
                f"Unknown configuration key {key!r} in {source}. Valid keys are: {', '.join(field_names())} "
                f"(method options as method_options.<name>)."
            )
        if rest:
            if head != "method_options":
                raise ConfigError(f"Dotted key {key!r} in {source}: only method_options.<name> takes a dotted key.")
            options = dict(data.get("method_options") or {})
            options[rest] = value
            data["method_options"] = options
        else:
            data[head] = value
    return data


def load_config(name_or_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Load a preset (shipped name or YAML path; ``None`` = defaults) and apply overrides.

    >>> cfg = load_config("mudpt/vit_b16_ep10", overrides={"shots": 4, "method_options.n_ctx": 4})
    """
    data: dict = {}
    source = "defaults"
    if name_or_path is not None:
        data = read_preset(name_or_path)
        source = str(resolve_preset_path(name_or_path))
        data.setdefault("config_name", str(name_or_path))
    data = apply_overrides(data, overrides)
    return TrainConfig.from_dict(data, source=source)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as JSON (atomically)."""
    from mudpt.files import atomic_write_text

    atomic_write_text(path, json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")


def read_config(path: str | Path) -> TrainConfig:
    """Read a config written by :func:`save_config`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No saved config at {path}: is this a run folder written by `mudpt train`?")
    return TrainConfig.from_dict(json.loads(path.read_text()), source=str(path))


# ---------------------------------------------------------------------- registry checks


def check_method_name(method: str) -> None:
    import mudpt

    valid = mudpt.available_methods()
    if method not in valid:
        raise ConfigError(f"Unknown method {method!r}. Valid methods: {', '.join(valid)}.")


def check_dataset_name(dataset: str) -> None:
    """A dataset is a registered name or an existing path (bring-your-own folder / list)."""
    if Path(dataset).exists():
        return
    import mudpt.data

    valid = mudpt.data.available_datasets()
    if dataset not in valid:
        raise ConfigError(
            f"Unknown dataset {dataset!r}: it is neither a registered dataset nor an existing path. "
            f"Registered datasets: {', '.join(valid)}. A path to an image-folder tree or a CSV/JSON "
            f"list also works (see docs/DATASETS.md)."
        )
