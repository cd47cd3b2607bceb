"""Training configuration: :class:`TrainConfig`, YAML presets, profiles and :func:`load_config`.

One function, :func:`load_config`, turns a request (a preset or none, plus overrides) into a
:class:`TrainConfig`; the command line and the Python API both call it, so the same request
gives the same run either way.

* A **preset** is a YAML file ``<method>/<name>.yaml`` holding ``TrainConfig`` fields
  (``method_options`` is a nested mapping); ``inherit: base/<name>`` (or a list) starts from
  other presets, so the optimiser and schedule are written once. Presets ship in
  ``mudpt/engine/configs/``; plug-ins add folders with :func:`register_preset_dir`.
* A **profile** says which preset a method gets under a protocol on a family of backbones:
  ``published`` (the reference repositories' ViT-B/16 configs) for open_clip backbones; a
  plug-in registers its own (the built-in world's ``world`` profile, marked default, is what a
  request naming no backbone gets).
* **Overrides** are flat field names or dotted keys into ``method_options``
  (``method_options.n_ctx=4``), as given by ``--set key=value`` on the command line.
  Precedence: preset < overrides.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import yaml

from mudpt.core.errors import ConfigError

__all__ = [
    "ConfigError", "Profile", "TrainConfig", "available_presets", "default_output_dir", "default_preset",
    "get_profile", "load_config", "parse_set_items", "read_config", "read_preset", "register_preset_dir",
    "register_profile", "save_config",
]

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULE_UNITS = ("epoch", "step")
SUBSAMPLES = ("all", "base", "new")
PROTOCOLS = ("fewshot", "base2new", "xd", "dg")
DEVICES_HELP = "'auto', 'cpu', 'cuda' or 'cuda:N'"
DEFAULT_RUNS_DIR = "runs"
INHERIT_KEY = "inherit"

# Fields that do not change what is learned: a run folder may be resumed with other values.
NON_IDENTITY_FIELDS = frozenset(
    {"output_dir", "root", "num_workers", "eval_batch_size", "overwrite", "device", "progress",
     "eval_every_epoch", "tensorboard", "wandb", "wandb_group", "config_name", "log_every", "text_chunk"}
)


@dataclass
class TrainConfig:
    """Everything that defines one training run (one method, dataset, shot count and seed).

    The defaults of the optimisation fields are the CoOp family's common recipe (Dassl's, as
    the reference repositories configure it): SGD with momentum 0.9 and weight decay 5e-4, one
    constant warm-up epoch at 1e-5, then a cosine schedule over ``epochs``. ``optimizer="adamw"``
    (with ``optimizer_eps``) and ``schedule_unit="step"`` (the cosine stepped every batch, over
    all the run's batches) serve recipes such as Tip-Adapter-F's. ``text_chunk`` (memory saver,
    no effect on the results) runs the text tower over that many class prompts at a time with
    activation checkpointing; ``wandb`` names a Weights & Biases project to log to (beside
    ``tensorboard``), ``wandb_group`` the group of the run there (a sweep's name). ``dataset`` and
    ``backbone`` have no default: a preset or the caller names them. ``batch_size`` is the
    global batch: with DDP each of N processes takes ``batch_size / N`` images of every batch.
    """

    method: str = "mudpt"
    dataset: Optional[str] = None
    root: Optional[str] = None
    shots: int = 16
    seed: int = 1
    subsample: str = "all"
    backbone: Optional[str] = None
    pretrained: Optional[str] = None
    output_dir: Optional[str] = None
    epochs: int = 10
    batch_size: int = 4
    lr: float = 0.0025
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    optimizer: str = "sgd"
    optimizer_eps: float = 1e-8
    schedule_unit: str = "epoch"
    precision: str = "fp32"
    method_options: dict = field(default_factory=dict)
    num_workers: int = 0
    eval_batch_size: int = 100
    overwrite: bool = False
    device: str = "auto"
    eval_every_epoch: bool = False
    tensorboard: bool = False
    wandb: Optional[str] = None
    wandb_group: Optional[str] = None
    log_every: int = 1
    text_chunk: Optional[int] = None
    config_name: Optional[str] = None

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
                f"{', '.join(field_names())}.", field=unknown[0])
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
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def validate(self, check_registries: bool = False, complete: bool = False) -> None:
        """Raise :class:`ConfigError` naming the field, its value and what is valid.

        ``check_registries`` also checks the method and dataset names against the registries;
        ``complete`` requires what a run needs (a dataset and a backbone).
        """
        problems = []

        def need(cond, key, msg):
            if not cond:
                problems.append((key, msg))

        need(self.optimizer in OPTIMIZERS, "optimizer",
             f"optimizer={self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        need(self.schedule_unit in SCHEDULE_UNITS, "schedule_unit",
             f"schedule_unit={self.schedule_unit!r} is not one of {', '.join(SCHEDULE_UNITS)} (how often the cosine "
             "schedule steps)")
        need(isinstance(self.optimizer_eps, (int, float)) and self.optimizer_eps > 0, "optimizer_eps",
             f"optimizer_eps={self.optimizer_eps!r} must be a number > 0")
        need(self.precision in PRECISIONS, "precision",
             f"precision={self.precision!r} is not one of {', '.join(PRECISIONS)}")
        need(self.subsample in SUBSAMPLES, "subsample",
             f"subsample={self.subsample!r} is not one of {', '.join(SUBSAMPLES)}")
        need(isinstance(self.shots, int) and self.shots >= 0, "shots",
             f"shots={self.shots!r} must be an integer >= 0 (0 = all images)")
        need(isinstance(self.epochs, int) and self.epochs >= 1, "epochs", f"epochs={self.epochs!r} must be an integer >= 1")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size",
             f"batch_size={self.batch_size!r} must be an integer >= 1")
        need(isinstance(self.eval_batch_size, int) and self.eval_batch_size >= 1, "eval_batch_size",
             f"eval_batch_size={self.eval_batch_size!r} must be an integer >= 1")
        need(isinstance(self.warmup_epochs, int) and 0 <= self.warmup_epochs, "warmup_epochs",
             f"warmup_epochs={self.warmup_epochs!r} must be an integer >= 0")
        need(isinstance(self.num_workers, int) and self.num_workers >= 0, "num_workers",
             f"num_workers={self.num_workers!r} must be >= 0")
        need(isinstance(self.log_every, int) and self.log_every >= 1, "log_every", f"log_every={self.log_every!r} must be >= 1")
        need(self.text_chunk is None or (isinstance(self.text_chunk, int) and self.text_chunk >= 1), "text_chunk",
             f"text_chunk={self.text_chunk!r} must be an integer >= 1 (class prompts per text-tower chunk) or null (off)")
        for name in ("lr", "warmup_lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, name,
                 f"{name}={value!r} must be a finite number >= 0")
        need(not isinstance(self.lr, (int, float)) or self.lr != 0, "lr", "lr=0 trains nothing: give a learning rate > 0")
        need(isinstance(self.seed, int) and self.seed >= 0, "seed", f"seed={self.seed!r} must be an integer >= 0")
        need(isinstance(self.method_options, dict), "method_options",
             f"method_options={self.method_options!r} must be a mapping of option name to value")
        device = str(self.device)
        need(device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()), "device",
             f"device={device!r} is not one of {DEVICES_HELP}")
        need(bool(self.method) and isinstance(self.method, str), "method", "method must be a non-empty name")
        if complete:
            need(bool(self.dataset), "dataset", "no dataset is given: name a registered dataset or a path to your "
                                                "own image folder / CSV / JSON list")
            need(bool(self.backbone), "backbone", "no backbone is given: name an open_clip model (e.g. ViT-B-16) "
                                                  "or a registered backbone")
        if problems:
            raise ConfigError("Invalid configuration: " + "; ".join(m for _, m in problems) + ".",
                              field=problems[0][0])
        if check_registries:
            check_method_name(self.method)
            if self.dataset:
                check_dataset_name(self.dataset)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


_FIELD_TYPES = {"bool": bool, "int": int, "float": float, "dict": dict, "str": str}


def _field_kind(key: str) -> tuple[type, bool]:
    """(type, optional) of a TrainConfig field, from its annotation."""
    annotation = {f.name: f.type for f in dataclasses.fields(TrainConfig)}[key]
    text = str(annotation)
    optional = text.startswith("Optional[")
    base = text[len("Optional["):-1] if optional else text
    return _FIELD_TYPES[base], optional


def _coerce(key: str, value: Any, source: str) -> Any:
    """Convert a YAML/CLI value to the field's type, or raise a ConfigError naming both."""
    kind, optional = _field_kind(key)
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("", "none", "null"))):
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}={value!r} in {source} must be true or false.", field=key)
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} in {source} must be an integer.", field=key)
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} in {source} must be an integer.", field=key) from None
        if not as_float.is_integer():
            raise ConfigError(f"{key}={value!r} in {source} must be an integer.", field=key)
        return int(as_float)
    if kind is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} in {source} must be a number.", field=key) from None
    if kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} in {source} must be a mapping, got {value!r}.", field=key)
        return dict(value)
    if value is None:
        raise ConfigError(f"{key} in {source} must not be empty.", field=key)
    return str(value)


# ---------------------------------------------------------------------- presets

_PRESET_DIRS: list[Path] = [CONFIGS_DIR]


def register_preset_dir(path: str | os.PathLike) -> None:
    """Add a folder of presets (``<method>/<name>.yaml``; bases under ``base/``) to the search path."""
    path = Path(path)
    if path not in _PRESET_DIRS:
        _PRESET_DIRS.append(path)


def _preset_dirs() -> list[Path]:
    from mudpt.core.plugins import load_plugins

    load_plugins()
    return list(_PRESET_DIRS)


def available_presets() -> list[str]:
    """Names of the runnable presets, ``<method>/<name>`` (bases under ``base/`` excluded)."""
    names = set()
    for folder in _preset_dirs():
        names.update(f"{p.parent.name}/{p.stem}" for p in folder.glob("*/*.yaml") if p.parent.name != "base")
    return sorted(names)


def resolve_preset_path(name_or_path: str | Path) -> Path:
    """The YAML file of a preset name (``mudpt/vit_b16_ep10``) or an existing path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    name = str(name_or_path)
    if name.endswith((".yaml", ".yml")):
        name = name.rsplit(".", 1)[0]
    for folder in _preset_dirs():
        shipped = folder / f"{name}.yaml"
        if shipped.is_file():
            return shipped
    raise ConfigError(
        f"Unknown config {str(name_or_path)!r}: it is neither an existing YAML file nor a shipped "
        f"preset. Shipped presets: {', '.join(available_presets())}.", field="config_name")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of keys to values, got {type(data).__name__}.")
    return data


def _merge(base: dict, child: dict) -> dict:
    merged = {**base, **child}
    if isinstance(base.get("method_options"), dict) and isinstance(child.get("method_options"), dict):
        merged["method_options"] = {**base["method_options"], **child["method_options"]}
    return merged


def read_preset(name_or_path: str | Path, _chain: tuple = ()) -> dict:
    """The mapping of a preset with its ``inherit`` chain applied (values not yet validated)."""
    path = resolve_preset_path(name_or_path)
    if path in _chain:
        raise ConfigError(f"Config file {path} inherits from itself through {' -> '.join(map(str, _chain))}.")
    data = _read_yaml(path)
    parents = data.pop(INHERIT_KEY, None) or []
    merged: dict = {}
    for parent in [parents] if isinstance(parents, str) else list(parents):
        if not isinstance(parent, str):
            raise ConfigError(f"Config file {path}: '{INHERIT_KEY}' must name presets, got {parent!r}.")
        merged = _merge(merged, read_preset(parent, _chain + (path,)))
    return _merge(merged, data)


def parse_set_items(items: list[str] | None) -> dict:
    """Parse ``key=value`` strings (``--set``) into a dict; values are read as YAML scalars."""
    overrides: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{item!r} must look like key=value (e.g. lr=0.002 or method_options.n_ctx=4).")
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
                f"(method options as method_options.<name>).", field=key)
        if rest:
            if head != "method_options":
                raise ConfigError(f"Dotted key {key!r} in {source}: only method_options.<name> takes a dotted key.",
                                  field=key)
            options = dict(data.get("method_options") or {})
            options[rest] = value
            data["method_options"] = options
        else:
            data[head] = value
    return data


# ---------------------------------------------------------------------- profiles

PresetChooser = Callable[[str, str, Optional[int]], Optional[str]]


@dataclass(frozen=True)
class Profile:
    """Which preset each method gets under each protocol, for a family of backbones.

    Attributes:
        name: the profile's name.
        choose: ``choose(method, protocol, shots) -> preset name`` (``None``: no preset).
        backbones: the registered backbones it applies to (empty: open_clip names).
        default: used when a request names no backbone (and for registered backbones no
            profile claims).
        dataset: the dataset a request naming none gets (``None``: the user must name one).
    """

    name: str
    choose: PresetChooser
    backbones: tuple[str, ...] = ()
    default: bool = False
    dataset: Optional[str] = None


_PROFILES: dict[str, Profile] = {}


def register_profile(profile: Profile) -> None:
    """Register (or replace) a profile; at most one is the default."""
    if profile.default:
        for name, other in list(_PROFILES.items()):
            if other.default and name != profile.name:
                _PROFILES[name] = dataclasses.replace(other, default=False)
    _PROFILES[profile.name] = profile


def get_profile(backbone: Optional[str]) -> Profile:
    """The profile for a backbone name (``None``: the default profile)."""
    from mudpt.core.backbones import is_registered, normalize_model_name
    from mudpt.core.plugins import load_plugins

    load_plugins()
    default = next((p for p in _PROFILES.values() if p.default), _PROFILES["published"])
    if backbone is None:
        return default
    name = normalize_model_name(backbone)
    for profile in _PROFILES.values():
        if name in profile.backbones:
            return profile
    return default if is_registered(name) else _PROFILES["published"]


# The reference repositories' ViT-B/16 presets per protocol.
PUBLISHED_PRESETS = {
    "fewshot": {
        "zsclip": "zsclip/vit_b16", "coop": "coop/vit_b16_ep50", "cocoop": "cocoop/vit_b16_c4_ep10_batch1_ctxv1",
        "vpt": "vpt/vit_b16_c2_ep5_batch4_4", "ivlp": "ivlp/vit_b16_c2_ep5_batch4_2+2ctx",
        "maple": "maple/vit_b16_c2_ep5_batch4_2ctx", "mudpt": "mudpt/vit_b16_ep10",
    },
    "base2new": {
        "zsclip": "zsclip/vit_b16", "coop": "coop/vit_b16_ep50_ctxv1", "cocoop": "cocoop/vit_b16_c4_ep10_batch1_ctxv1",
        "vpt": "vpt/vit_b16_c2_ep5_batch4_4", "ivlp": "ivlp/vit_b16_c2_ep5_batch4_2+2ctx",
        "maple": "maple/vit_b16_c2_ep5_batch4_2ctx", "mudpt": "mudpt/vit_b16_ep5",
    },
    "xd": {
        "zsclip": "zsclip/vit_b16", "coop": "coop/vit_b16_ep50", "cocoop": "cocoop/vit_b16_c4_ep10_batch1_ctxv1",
        "vpt": "vpt/vit_b16_c2_ep5_batch4_4", "ivlp": "ivlp/vit_b16_c2_ep5_batch4_2+2ctx",
        "maple": "maple/vit_b16_c2_ep5_batch4_2ctx_cross_datasets", "mudpt": "mudpt/vit_b16_ep5",
    },
}
for _protocol, _preset in (("fewshot", "promptsrc/vit_b16_c2_ep50_batch4_4+4ctx_few_shot"),
                           ("base2new", "promptsrc/vit_b16_c2_ep20_batch4_4+4ctx"),
                           ("xd", "promptsrc/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets")):
    PUBLISHED_PRESETS[_protocol].update(promptsrc=_preset, kgcoop="kgcoop/vit_b16_ep100_ctxv1",
                                        prograd="prograd/vit_b16_ep100")
    PUBLISHED_PRESETS[_protocol].update(linear_probe="linear_probe/vit_b16", clip_adapter="clip_adapter/vit_b16",
                                        tip_adapter="tip_adapter/vit_b16", tip_adapter_f="tip_adapter_f/vit_b16")
PUBLISHED_PRESETS["dg"] = PUBLISHED_PRESETS["xd"]


def _published_preset(method: str, protocol: str, shots: Optional[int]) -> Optional[str]:
    # CoOp's few-shot scripts train 50 epochs for 1-2 shots, 100 for 4-8 and 200 for 16; ProGrad's
    # 50 for 1 shot, 100 for 2-4 and 200 for 8-16.
    if method == "coop" and protocol == "fewshot" and shots:
        return "coop/vit_b16_ep50" if shots <= 2 else ("coop/vit_b16_ep100" if shots <= 8 else "coop/vit_b16")
    if method == "prograd" and protocol == "fewshot" and shots:
        return "prograd/vit_b16_ep50" if shots <= 1 else ("prograd/vit_b16_ep100" if shots <= 4 else "prograd/vit_b16")
    return PUBLISHED_PRESETS.get(protocol, {}).get(method)


register_profile(Profile("published", _published_preset))


def default_preset(method: str, protocol: str = "fewshot", backbone: Optional[str] = None,
                   shots: Optional[int] = None) -> str:
    """The preset a method gets under ``protocol`` on ``backbone`` (see :class:`Profile`)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"Unknown protocol {protocol!r}. Valid protocols: {', '.join(PROTOCOLS)}.", field="protocol")
    profile = get_profile(backbone)
    preset = profile.choose(method, protocol, shots)
    if preset is None:
        raise ConfigError(f"No shipped preset for method {method!r} under protocol {protocol!r} in the "
                          f"{profile.name!r} profile; give one explicitly (a preset name or a YAML file).",
                          field="config_name")
    return preset


def default_output_dir(cfg: TrainConfig) -> str:
    """``runs/train/<dataset>/<method>/shots_<K>/seed_<S>`` (the dataset's folder name for a path)."""
    dataset = os.path.basename(str(cfg.dataset or "dataset").rstrip("/\\")) or "dataset"
    return os.path.join(DEFAULT_RUNS_DIR, "train", dataset, cfg.method, f"shots_{cfg.shots}", f"seed_{cfg.seed}")


def load_config(name_or_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                protocol: str = "fewshot") -> TrainConfig:
    """The one way to build a :class:`TrainConfig`: a preset, then the overrides.

    Without a preset, the method's default preset for ``protocol`` on the requested backbone
    is used (:func:`default_preset`; the method is ``overrides["method"]`` or ``mudpt``). When
    the overrides change the preset's backbone and not its weights, the new backbone starts
    from its random init (the preset's weights belong to its own backbone). Without an
    ``output_dir`` the run goes to :func:`default_output_dir`.

    >>> cfg = load_config("mudpt/vit_b16_ep10", overrides={"shots": 4, "method_options.n_ctx": 4})
    """
    overrides = dict(overrides or {})
    preset = name_or_path
    if preset is None:
        check_method_name(overrides.get("method", TrainConfig.method))
        preset = default_preset(overrides.get("method", TrainConfig.method), protocol, overrides.get("backbone"),
                                overrides.get("shots"))
    data = read_preset(preset)
    source = str(resolve_preset_path(preset))
    data.setdefault("config_name", str(preset))
    if "backbone" in overrides and "pretrained" not in overrides and data.get("backbone") not in (
            None, overrides["backbone"]):
        data["pretrained"] = None
    data = apply_overrides(data, overrides)
    cfg = TrainConfig.from_dict(data, source=source)
    if cfg.output_dir is None:
        cfg.output_dir = default_output_dir(cfg)
    cfg.validate(check_registries=True)
    return cfg


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as JSON (atomically)."""
    from mudpt.core.files import atomic_write_json

    atomic_write_json(path, cfg.to_dict())


def read_config(path: str | Path) -> TrainConfig:
    """Read a config written by :func:`save_config`."""
    from mudpt.core.errors import CorruptFileError, MissingFileError

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"No saved config at {path}: is this a run folder written by `mudpt train`?")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path} is not valid JSON ({err}).") from None
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path} must hold a JSON object of configuration keys.")
    return TrainConfig.from_dict(data, source=str(path))


# ---------------------------------------------------------------------- registry checks


def check_method_name(method: str) -> None:
    import mudpt

    valid = mudpt.available_methods()
    if method not in valid:
        raise ConfigError(f"Unknown method {method!r}. Valid methods: {', '.join(valid)}.", field="method")


def check_dataset_name(dataset: str) -> None:
    """A dataset is a registered name or an existing path (bring-your-own folder / list)."""
    import mudpt.data

    if Path(os.path.expanduser(dataset)).exists() or mudpt.data.get_dataset_spec(dataset) is not None:
        return
    raise ConfigError(
        f"Unknown dataset {dataset!r}: it is neither a registered dataset nor an existing path. "
        f"Registered datasets: {', '.join(mudpt.data.available_datasets())}. A path to an image-folder tree "
        f"or a CSV/JSON list also works (see docs/DATASETS.md).", field="dataset")
