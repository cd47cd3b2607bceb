"""Learned state <-> a small ``.safetensors`` file with a ``.json`` beside it.

``save_learned(method, "dir/learned")`` writes

* ``dir/learned.safetensors``: exactly the method's trainable tensors (a few KB to a few MB);
* ``dir/learned.json``: ``{"format": "mudpt-learned/1", "method", "options", "classnames",
  "backbone": {"name", "pretrained"}}``.

Both are written atomically (temporary file in the same folder, then ``os.replace``).
``load_learned("dir/learned")`` rebuilds the backbone from the JSON (unless one is given), the
method with the same options and class names, and loads the tensors.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Union

import torch

from mudpt.backbones import ClipBackbone, load_clip
from mudpt.files import atomic_write

__all__ = ["FORMAT", "load_learned", "read_learned", "save_learned"]

FORMAT = "mudpt-learned/1"
_SUFFIXES = (".safetensors", ".json")


def _stem(path: Union[str, os.PathLike]) -> str:
    path = os.fspath(path)
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
        "method": method.method_name,
        "options": method.options,
        "classnames": list(method.classnames),
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

    def write_json(tmp):
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(meta, handle, indent=2)
            handle.write("\n")

    atomic_write(json_path, write_json)
    return tensor_path, json_path


def read_learned(path_stem_or_file: Union[str, os.PathLike]) -> tuple[dict, dict]:
    """Read ``(metadata, tensors)`` of a saved learned state without building anything."""
    from safetensors.torch import load_file

    stem = _stem(path_stem_or_file)
    tensor_path, json_path = stem + ".safetensors", stem + ".json"
    for path in (json_path, tensor_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"learned-state file not found: {path!r} (a learned state is a pair "
                f"<stem>.safetensors + <stem>.json written by mudpt.save_learned)"
            )
    try:
        with open(json_path, encoding="utf-8") as handle:
            meta = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{json_path!r} is not valid JSON: {error}") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(
            f"{json_path!r} is not a mudpt learned state: expected \"format\": \"{FORMAT}\", got "
            f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r}"
        )
    for key in ("method", "options", "classnames", "backbone"):
        if key not in meta:
            raise ValueError(f"{json_path!r} lacks the field {key!r}")
    try:
        tensors = load_file(tensor_path, device="cpu")
    except Exception as error:
        raise ValueError(f"could not read {tensor_path!r}: {error}") from error
    return meta, tensors


def load_learned(
    path_stem_or_file: Union[str, os.PathLike],
    clip: Optional[ClipBackbone] = None,
    device: Union[str, torch.device] = "cpu",
    classnames: Optional[list] = None,
):
    """Rebuild a method from ``save_learned``'s files.

    Args:
        path_stem_or_file: ``"dir/learned"``, ``"dir/learned.json"`` or ``"dir/learned.safetensors"``.
        clip: backbone to build on; ``None`` loads the one named in the JSON (name + pretrained).
        device: device for a backbone loaded from the JSON (and for the method).
        classnames: optionally switch to other classes after loading (learned tensors are kept).

    Loading onto an incompatible backbone is a ValueError naming both shapes.
    """
    from mudpt.methods import create

    meta, tensors = read_learned(path_stem_or_file)
    if clip is None:
        backbone = meta["backbone"]
        try:
            clip = load_clip(backbone["name"], pretrained=backbone.get("pretrained"), device=device)
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"{error} (the learned state {_stem(path_stem_or_file)!r} was trained on backbone "
                f"{backbone['name']!r} with these weights; pass clip=mudpt.load_clip({backbone['name']!r}, "
                "pretrained=<local copy>) to load it onto weights stored elsewhere)"
            ) from error
    method = create(meta["method"], clip, meta["classnames"], **meta["options"])
    try:
        method.load_learned_state_dict(tensors)
    except ValueError as error:
        raise ValueError(
            f"{error} (learned state {_stem(path_stem_or_file)!r} was saved on backbone "
            f"{meta['backbone'].get('name')!r}, loading onto {clip.name!r})"
        ) from error
    if classnames is not None:
        method.set_classnames(classnames)
    return method.to(clip.device)
