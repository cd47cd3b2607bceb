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
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional

import yaml

from mudpt.core.errors import ConfigError
from mudpt.core.options import TypedConfig, option
from mudpt.core.vocabulary import PROTOCOLS, Optimizer, Precision, ScheduleUnit, Subsample

__all__ = [
    "ConfigError", "Profile", "TrainConfig", "available_presets", "default_output_dir", "default_preset",
    "get_profile", "load_config", "parse_set_items", "read_config", "read_preset", "register_preset_dir",
    "register_profile", "save_config",
]

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
DEVICES_HELP = "'auto', 'cpu', 'cuda' or 'cuda:N'"
DEFAULT_RUNS_DIR = "runs"
INHERIT_KEY = "inherit"


def _valid_device(device: str) -> bool:
    return device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())


def setting(help: str = "", default: Any = dataclasses.MISSING, *, identity: bool = True, training: bool = False,
            flag: tuple[str, ...] = (), metavar: Optional[str] = None, **constraints) -> Any:
    """A :class:`TrainConfig` field (an :func:`~mudpt.core.options.option`) with the engine's facts:

    * ``identity``: whether the value decides what a run learns (part of its
      :class:`~mudpt.engine.identity.RunIdentity`); ``False`` for where and how it runs.
    * ``training``: an optimisation setting, which is no part of the identity of a method the
      epoch loop does not optimise (zero-shot CLIP, a closed-form fit).
    * ``flag``: the commands (``"train"``, ``"sweep"``) that get a ``--name`` flag for it,
      generated from the field by :func:`add_setting_flags`.
    """
    return option(default, help, identity=identity, training=training, flag=tuple(flag), metavar=metavar,
                  **constraints)


RUN, ALL = ("train",), ("train", "sweep")


@dataclass
class TrainConfig(TypedConfig):
    """Everything that defines one training run (one method, dataset, shot count and seed).

    The defaults of the optimisation fields are the CoOp family's common recipe (Dassl's, as
    the reference repositories configure it): SGD with momentum 0.9 and weight decay 5e-4, one
    constant warm-up epoch at 1e-5, then a cosine schedule over ``epochs`` stepped once per
    epoch. ``optimizer="adam"`` or ``"adamw"`` (with ``optimizer_eps``) and ``schedule_unit="step"`` (the cosine
    stepped every batch, over all the run's batches) serve recipes such as Tip-Adapter-F's.
    ``dataset`` and ``backbone`` have no default: a preset or the caller names them. Each field
    declares its type, checks, help, whether it is part of the run's identity and its
    command-line flag (:func:`setting`); a config is checked when it is built.
    """

    method: str = setting("method name (mudpt.available_methods(); default: mudpt)", "mudpt", flag=RUN,
                          check=bool, expected="a registered method's name")
    dataset: Optional[str] = setting("a registered dataset or a path to an image folder / CSV / JSON list "
                                     "(default: the preset's; the built-in world's world_source)", None, flag=RUN)
    root: Optional[str] = setting("data root holding the datasets' folders (default: $MUDPT_DATA_ROOT; the "
                                  "built-in world generates its own)", None, identity=False, flag=ALL)
    shots: int = setting("training images per class, 0 = all (default: 16)", 16, flag=RUN, min=0)
    seed: int = setting("seed of the few-shot split and of training (default: 1)", 1, flag=RUN, min=0)
    subsample: Subsample = setting("class subset, base/new for base-to-new (default: all)", "all", flag=RUN)
    backbone: Optional[str] = setting("an open_clip model name (ViT-B-16, ...) or a registered backbone "
                                      "(default: the preset's; world-tiny for the built-in world)", None, flag=ALL)
    pretrained: Optional[str] = setting(
        "an open_clip tag or a local weight file (OpenAI .pt, .safetensors, .bin); default: the preset's "
        "weights, or a random init when the backbone differs from the preset's", None, flag=ALL)
    tokenizer: Optional[str] = setting(
        "the folder a Hugging Face tokenizer was saved to, for an open_clip name that uses one (SigLIP's) when it "
        "is not in the Hugging Face cache (default: open_clip's tokenizer of the backbone)", None, identity=False,
        flag=ALL)
    output_dir: Optional[str] = setting("the run folder", None, identity=False)
    epochs: int = setting("training epochs", 10, training=True, flag=ALL, min=1)
    batch_size: int = setting("global batch size, split across DDP processes", 4, training=True, flag=ALL, min=1)
    lr: float = setting("peak learning rate", 0.0025, training=True, flag=ALL, min=0,
                        check=math.isfinite, expected="a finite number >= 0")
    momentum: float = setting("SGD momentum", 0.9, training=True, min=0, check=math.isfinite,
                              expected="a finite number >= 0")
    weight_decay: float = setting("weight decay", 5e-4, training=True, min=0, check=math.isfinite,
                                  expected="a finite number >= 0")
    warmup_epochs: int = setting("constant warm-up epochs before the cosine schedule", 1, training=True, min=0)
    warmup_lr: float = setting("learning rate of the warm-up", 1e-5, training=True, min=0, check=math.isfinite,
                               expected="a finite number >= 0")
    optimizer: Optimizer = setting("the optimiser", "sgd", training=True)
    optimizer_eps: float = setting("Adam's and AdamW's eps", 1e-8, training=True, check=lambda v: v > 0,
                                   expected="a number > 0")
    schedule_unit: ScheduleUnit = setting("how often the cosine schedule steps", "epoch", training=True)
    steps_per_shot: Optional[int] = setting(
        "an iteration budget instead of epochs: steps_per_shot x shots optimiser steps, the run stopping mid-epoch "
        "if need be (CLIP-LoRA's 500 x shots); the cosine then runs over those steps", None, training=True, min=1)
    min_lr: Optional[float] = setting("the learning rate the cosine schedule ends at (CosineAnnealingLR's eta_min; "
                                      "None: 0)", None, training=True, min=0)
    precision: Precision = setting("mixed precision of the forward pass", "fp32", flag=ALL)
    method_options: dict = setting("the method's options (its typed config)", {})
    num_workers: int = setting("data loader worker processes (default: 0, in the main process)", 0,
                               identity=False, flag=ALL, min=0)
    eval_batch_size: int = setting("batch size of evaluation", 100, identity=False, flag=ALL, min=1)
    overwrite: bool = setting("replace the run in the output folder (only the run's own files are replaced)",
                              False, identity=False, flag=RUN)
    device: str = setting(f"where to run: {DEVICES_HELP} (default: auto = the GPU when there is one)", "auto",
                          identity=False, flag=ALL, check=_valid_device, expected=f"one of {DEVICES_HELP}")
    eval_every_epoch: bool = setting("also evaluate on the validation split after every epoch", False,
                                     identity=False, flag=RUN)
    tensorboard: bool = setting("also log to TensorBoard (needs tensorboard)", False, identity=False, flag=ALL)
    wandb: Optional[str] = setting("also log to this Weights & Biases project (needs wandb; WANDB_MODE=offline is "
                                   "honoured)", None, identity=False, flag=ALL, metavar="PROJECT")
    wandb_group: Optional[str] = setting("the run's group in Weights & Biases (a sweep's name)", None,
                                         identity=False)
    log_every: int = setting("log every N-th training step", 1, identity=False, min=1)
    text_chunk: Optional[int] = setting(
        "memory saver: run the text tower over N class prompts at a time with activation checkpointing (same "
        "results; e.g. 100 for CoCoOp on ImageNet)", None, identity=False, flag=ALL, metavar="N", min=1)
    config_name: Optional[str] = setting("the preset the config came from", None, identity=False)

    # ------------------------------------------------------------------ checks
    def field_error(self, name: str, value: Any, expected: str, help: str) -> ConfigError:
        return ConfigError(f"Invalid configuration: {name}={value!r} must be {expected} ({help}).", field=name)

    def check(self) -> None:
        if self.lr == 0:
            raise ConfigError("Invalid configuration: lr=0 trains nothing: give a learning rate > 0.", field="lr")
        if self.steps_per_shot is not None and self.shots == 0:
            raise ConfigError("Invalid configuration: steps_per_shot counts steps per shot, and shots=0 (all images) "
                              "has none: give epochs instead (steps_per_shot=null) or a shot count.",
                              field="steps_per_shot")

    def total_steps(self, batches_per_epoch: int) -> int:
        """The optimiser steps of a run: ``steps_per_shot x shots``, or ``epochs`` epochs."""
        return self.steps_per_shot * self.shots if self.steps_per_shot else self.epochs * batches_per_epoch

    @classmethod
    def unknown_keys_error(cls, unknown: list, source: str) -> ConfigError:
        return ConfigError(f"Unknown configuration key(s) {unknown} in {source or 'config'}. Valid keys are: "
                           f"{', '.join(cls.option_names())}.", field=unknown[0])

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config", coerce: bool = True) -> "TrainConfig":
        """Build and check a config from a mapping (text values converted to the field types);
        unknown keys are a :class:`ConfigError`; an invalid value's error names ``source``."""
        try:
            return super().from_dict(data, source, coerce)
        except ConfigError as err:
            if not source or source in str(err):
                raise
            raise ConfigError(f"{str(err).rstrip('.')} (config: {source}).", field=err.field) from None

    def validate(self, check_registries: bool = False, complete: bool = False) -> None:
        """Raise :class:`ConfigError` naming the field, its value and what is valid.

        ``check_registries`` also checks the method and dataset names against the registries;
        ``complete`` requires what a run needs (a dataset and a backbone).
        """
        super().validate()
        if complete and not self.dataset:
            raise ConfigError("Invalid configuration: no dataset is given: name a registered dataset or a path to "
                              "your own image folder / CSV / JSON list.", field="dataset")
        if complete and not self.backbone:
            raise ConfigError("Invalid configuration: no backbone is given: name an open_clip model (e.g. "
                              "ViT-B-16) or a registered backbone.", field="backbone")
        if check_registries:
            check_method_name(self.method)
            if self.dataset:
                check_dataset_name(self.dataset)

    def to_dict(self) -> dict:
        """A JSON-able dict of every field."""
        return json.loads(json.dumps(super().to_dict()))

    @classmethod
    def fields_where(cls, **facts) -> tuple[str, ...]:
        """Names of the fields whose declared facts have these values (``identity=True``, ...)."""
        return tuple(f.name for f in dataclasses.fields(cls)
                     if all(f.metadata.get(key) == value for key, value in facts.items()))


def field_names() -> list[str]:
    return TrainConfig.option_names()


def add_setting_flags(parser, command: str, default_note: str = "") -> list[str]:
    """Add a ``--field-name`` flag for every :class:`TrainConfig` field whose ``flag`` names
    ``command`` (type, choices, help and metavar from the field); returns the field names. A
    flag left out gives ``None``: the preset's value stands."""
    hints = TrainConfig.type_hints()
    added = []
    for f in dataclasses.fields(TrainConfig):
        if command not in f.metadata.get("flag", ()):
            continue
        hint = hints[f.name]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # Optional[X]: the flag takes an X
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        kind = hint
        kwargs: dict = {"dest": f.name, "help": f.metadata["help"], "default": None}
        if kind is bool:
            kwargs["action"] = "store_true"
        elif typing.get_origin(kind) is Literal:
            kwargs["choices"] = list(typing.get_args(kind))
        elif kind in (int, float):
            kwargs["type"] = kind
        if kind is not bool and "default" not in kwargs["help"]:
            kwargs["help"] += default_note
        if f.metadata.get("metavar"):
            kwargs["metavar"] = f.metadata["metavar"]
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)
        added.append(f.name)
    return added


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
            name, _, inner = rest.partition(".")
            if inner:  # into a mapping option (DePT's base_options.n_ctx): the leaf read as YAML
                import yaml

                target = options.setdefault(name, {})
                if not isinstance(target, dict):
                    raise ConfigError(f"Dotted key {key!r} in {source}: method option {name!r} is {target!r}, not a "
                                      "mapping.", field=key)
                target = options[name] = json.loads(json.dumps(target))
                *parents, leaf = inner.split(".")
                for part in parents:
                    target = target.setdefault(part, {})
                target[leaf] = yaml.safe_load(value) if isinstance(value, str) else value
            else:
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


def _published_preset(method: str, protocol: str, shots: Optional[int]) -> Optional[str]:
    """The reference repositories' ViT-B/16 preset: each method declares its own
    (``PromptMethod.published_presets``)."""
    from mudpt.methods import get_method_class

    return get_method_class(method).published_preset(protocol, shots)


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
    preset_path = str(resolve_preset_path(preset))
    data.setdefault("config_name", str(preset))
    if "backbone" in overrides and "pretrained" not in overrides and data.get("backbone") not in (
            None, overrides["backbone"]):
        data["pretrained"] = None
    data = apply_overrides(data, overrides)
    try:
        cfg = TrainConfig.from_dict(data, source=preset_path)
    except ConfigError as error:
        # blame where the bad value came from: an override (the command line), or the preset
        given = _override_of(error.field, overrides)
        if given is None:
            raise
        key, value = given
        message = str(error).replace(f" (config: {preset_path}).", "").replace(f" in {preset_path}", "")
        raise ConfigError(f"{message.rstrip('.')} (given as {key}={value!r}, not by the preset {preset}).",
                          field=error.field) from None
    if cfg.output_dir is None:
        cfg.output_dir = default_output_dir(cfg)
    cfg.validate(check_registries=True)
    return cfg


def _override_of(field, overrides: Mapping[str, Any]):
    """``(key, value)`` of the override that set ``field`` (or the dotted key under it), or None."""
    if not field:
        return None
    for key, value in overrides.items():
        if key == field or key.split(".")[0] == field or field.split(".")[0] == key:
            return key, value
    return None


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
    from mudpt.methods import available_methods

    valid = available_methods()
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
