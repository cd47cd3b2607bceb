"""Predictions of a trained run on image files: top-k class names with probabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from mudpt.core.errors import ConfigError, MissingFileError
from mudpt.core.files import not_there
from mudpt.engine.evaluation import autocast_context, resolve_device


def predict(run_dir: str | Path, images: Sequence[str | Path], topk: int = 5, classnames: Sequence[str] | None = None,
            batch_size: int = 32, precision: str = "fp32", device: str = "auto") -> list[dict]:
    """Top-k predictions of the run's trained method for each image file.

    ``classnames`` replaces the run's class names (open-vocabulary prediction). Returns one
    ``{"image": path, "predictions": [{"classname", "label", "probability"}, ...]}`` per image,
    probabilities from the softmax of the method's logits.
    """
    from mudpt.data import build_transform, read_image
    from mudpt.engine.runs import load_run_method

    if topk < 1:
        raise ConfigError(f"topk={topk} must be at least 1.", field="topk")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be an integer of at least 1.", field="batch_size")
    urls = [str(p) for p in images if "://" in str(p)]
    if urls:
        raise ConfigError(f"predict reads local image files; {urls[0]!r} is a URL. Download it first (e.g. curl -O) "
                          "and pass the file.", field="images")
    if classnames is not None and not [name for name in classnames if str(name).strip()]:
        raise ConfigError(f"classnames={list(classnames)!r} names no class: give the class names to predict among "
                          "(e.g. cat,dog), or leave them out to predict among the run's own classes.",
                          field="classnames")
    paths = [Path(p) for p in images]
    if not paths:
        raise ConfigError("predict needs at least one image file.", field="images")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MissingFileError(f"Image file(s): {'; '.join(not_there(p) for p in missing[:5])}"
                               f"{' ...' if len(missing) > 5 else ''}.", field="images")
    dev = resolve_device(device)
    method, _ = load_run_method(run_dir, device=dev)
    if classnames is not None:
        method.set_classnames([str(name).strip() for name in classnames if str(name).strip()])
    transform = build_transform(method.clip, train=False)
    names = list(method.classnames)
    k = min(topk, len(names))
    method.eval()
    outputs = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        tensors = [transform(read_image(str(path))) for path in chunk]
        with torch.no_grad(), autocast_context(dev, precision):
            logits = method(torch.stack(tensors).to(dev))
        probs = logits.float().softmax(dim=-1).cpu()
        top_p, top_i = probs.topk(k, dim=-1)
        for path, p_row, i_row in zip(chunk, top_p.tolist(), top_i.tolist()):
            outputs.append({"image": str(path), "predictions": [
                {"classname": names[i], "label": int(i), "probability": float(p)} for p, i in zip(p_row, i_row)]})
    return outputs
