"""Predictions of a trained run or an exported model on image files: top-k class names with
probabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from mudpt.core.errors import ConfigError, MissingFileError
from mudpt.core.files import not_there


def predict(run_dir: str | Path, images: Sequence[str | Path], topk: int = 5, classnames: Sequence[str] | None = None,
            batch_size: int = 32, precision: str = "fp32", device: str = "auto") -> list[dict]:
    """Top-k predictions for each image file of a run's trained method, or of an exported model
    (``.onnx``, ``.pt2``, ``head`` / ``open_clip``: :func:`mudpt.load_classifier`).

    ``classnames`` replaces the run's class names (open-vocabulary prediction). Returns one
    ``{"image": path, "predictions": [{"classname", "label", "probability"}, ...]}`` per image,
    probabilities from the softmax of the logits.
    """
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
    from mudpt.engine.classifier import load_classifier

    names = [str(name).strip() for name in classnames if str(name).strip()] if classnames is not None else None
    classifier = load_classifier(run_dir, device=device, classnames=names, precision=precision)
    predictions = classifier.predict([str(p) for p in paths], batch_size=batch_size)
    return [{"image": str(path), "predictions": [
                {"classname": name, "label": classifier.classnames.index(name), "probability": probability}
                for name, probability in ranked]}
            for path, ranked in zip(paths, predictions.topk(topk))]
