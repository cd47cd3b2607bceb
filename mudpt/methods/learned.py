"""Learned state <-> a small ``.safetensors`` file with a ``.json`` beside it.

``save_learned(method, "dir/learned")`` writes

* ``dir/learned.safetensors``: exactly the method's trainable tensors (a few KB to a few MB);
* ``dir/learned.json``: ``{"format": "mudpt-learned/2", "mudpt_version", "method", "config"
  (the user's method config, not the values derived from it), "classnames", "backbone":
  {"name", "pretrained"}}``.

Both are written atomically. ``load_learned("dir/learned")`` rebuilds the backbone from the
JSON (unless one is given), the method from the saved config (resolved again on that
backbone) and class names, and loads the tensors. Files of format ``mudpt-learned/1`` (which
stored resolved options) are read too.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Optional, Union

import torch

from mudpt.core.backbones import ClipBackbone, load_clip
from mudpt.core.errors import ConfigError, CorruptFileError, MissingFileError
from mudpt._version import __version__
from mudpt.core.files import atomic_write, atomic_write_json

__all__ = ["FORMAT", "load_learned", "read_learned", "save_learned"]

FORMAT = "mudpt-learned/2"
_READABLE = (FORMAT, "mudpt-learned/1")
_SUFFIXES = (".safetensors", ".json")


def _stem(path: Union[str, os.PathLike]) -> str:
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "learned.json")):
        return os.path.join(path, "learned")  # a run folder: the natural guess
    for suffix in _SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def save_learned(method, path_stem: Union[str, os.PathLike], extra: Optional[dict] = None) -> tuple[str, str]:
    """Save ``method``'s learned tensors and how to rebuild it.

    Args:
        method: a method from :func:`mudpt.create` (DDP-wrapped modules are unwrapped).
        path_stem: ``"dir/learned"`` (a ``.safetensors``/``.json`` suffix is tolerated).
        extra: optional JSON-able metadata stored under ``"extra"``.

    Returns:
        ``(safetensors_path, json_path)``.
    """
    from safetensors.torch import save_file

    method = getattr(method, "module", method)  # DistributedDataParallel
    stem = _stem(path_stem)
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in method.learned_state_dict().items()}
    meta = {
        "format": FORMAT,
        "mudpt_version": __version__,
        "method": method.method_name,
        "config": method.config.to_dict(),
        # A fitted state (a classifier, a cache, a discriminant) holds its fitted classes, whichever
        # subset or other list it scores now.
        "classnames": list(getattr(method, "fitted_classnames", None) or method.classnames),
        "backbone": {"name": method.clip.name, "pretrained": method.clip.pretrained},
    }
    if extra:
        meta["extra"] = extra
    try:
        json.dumps(meta)
    except TypeError as error:
        raise ValueError(f"learned-state metadata is not JSON-serialisable: {error}") from error
    tensor_path, json_path = stem + ".safetensors", stem + ".json"
    atomic_write(tensor_path, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    atomic_write_json(json_path, meta)
    return tensor_path, json_path


def _config_of(meta: dict) -> dict:
    """The user's method config of a learned-state JSON (format 1 stored resolved options)."""
    if "config" in meta:
        return dict(meta["config"])
    options = dict(meta.get("options") or {})
    if meta.get("method") == "zsclip" and options.get("dataset") is not None:
        options.pop("templates", None)  # derived from the dataset in format 1
    return options


def read_learned(path_stem_or_file: Union[str, os.PathLike]) -> tuple[dict, dict]:
    """Read ``(metadata, tensors)`` of a saved learned state without building anything."""
    from safetensors.torch import load_file

    stem = _stem(path_stem_or_file)
    tensor_path, json_path = stem + ".safetensors", stem + ".json"
    for path in (json_path, tensor_path):
        if not os.path.isfile(path):
            raise MissingFileError(
                f"learned-state file not found: {path!r} (a learned state is a pair "
                f"<stem>.safetensors + <stem>.json written by mudpt.save_learned)")
    try:
        with open(json_path, encoding="utf-8") as handle:
            meta = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"{json_path!r} is not valid JSON: {error}") from error
    if not isinstance(meta, dict) or meta.get("format") not in _READABLE:
        raise CorruptFileError(
            f"{json_path!r} is not a mudpt learned state: expected \"format\": \"{FORMAT}\", got "
            f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r}")
    for key in ("method", "classnames", "backbone"):
        if key not in meta:
            raise CorruptFileError(f"{json_path!r} lacks the field {key!r}")
    meta["config"] = _config_of(meta)
    try:
        tensors = load_file(tensor_path, device="cpu")
    except Exception as error:  # safetensors raises its own error types
        raise CorruptFileError(f"could not read {tensor_path!r}: {error}") from error
    return meta, tensors


def load_learned(
    path_stem_or_file: Union[str, os.PathLike],
    clip: Optional[ClipBackbone] = None,
    device: Union[str, torch.device] = "cpu",
    classnames: Optional[list] = None,
):
    """Rebuild a method from ``save_learned``'s files.

    Args:
        path_stem_or_file: ``"dir/learned"``, ``"dir/learned.json"``, ``"dir/learned.safetensors"``
            or the folder ``"dir"`` holding them (a run folder).
        clip: backbone to build on; ``None`` loads the one named in the JSON (name + pretrained).
        device: device for a backbone loaded from the JSON (and for the method).
        classnames: optionally switch to other classes after loading (learned tensors are kept).

    Loading onto an incompatible backbone is a :class:`~mudpt.core.errors.ConfigError` naming
    both shapes. The method is returned in eval mode (a method with dropout, such as CLIP-LoRA,
    then gives deterministic logits).
    """
    from mudpt.methods import create, get_method_class, make_config

    meta, tensors = read_learned(path_stem_or_file)
    stem = _stem(path_stem_or_file)
    known = set(get_method_class(meta["method"]).Config.option_names())
    unknown = sorted(set(meta["config"]) - known)
    if unknown:
        # As peft does with a newer adapter config: drop options this version does not know, and say so.
        warnings.warn(f"{stem}.json (written by mudpt {meta.get('mudpt_version', '?')}) has option(s) {unknown} "
                      f"that method {meta['method']!r} of mudpt {__version__} does not know; they are ignored",
                      stacklevel=2)
        meta["config"] = {k: v for k, v in meta["config"].items() if k in known}
    if clip is None:
        backbone = meta["backbone"]
        try:
            clip = load_clip(backbone["name"], pretrained=backbone.get("pretrained"), device=device)
        except MissingFileError as error:
            raise MissingFileError(
                f"{error} (the learned state {stem!r} was trained on backbone {backbone['name']!r} with these "
                f"weights; pass clip=mudpt.load_clip({backbone['name']!r}, pretrained=<local copy>) to load it "
                "onto weights stored elsewhere)", field="pretrained") from error
    method = create(meta["method"], clip, meta["classnames"], config=make_config(meta["method"], meta["config"]))
    try:
        method.load_learned_state_dict(tensors)
    except ConfigError as error:
        raise ConfigError(
            f"{error} (learned state {stem!r} was saved on backbone {meta['backbone'].get('name')!r}, loading "
            f"onto {clip.name!r})") from error
    if classnames is not None:
        method.set_classnames(classnames)
    return method.to(clip.device).eval()  # ready for inference (no dropout); .train() to tune it further
