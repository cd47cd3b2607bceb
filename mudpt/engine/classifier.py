"""A tuned model as a classifier: ``mudpt.load_classifier(run folder or exported file)``.

``classifier.predict(images)`` takes PIL images, image paths or tensors (preprocessed (3, S, S)
or (B, 3, S, S)), preprocesses and batches them as the backbone expects, and returns the
labels, class names and probabilities. It reads a run folder (mudpt's own method), an ONNX file
(through onnxruntime, an optional dependency: ``pip install 'mudpt[export]'``), a ``.pt2``
program (``torch.export``), or a ``head`` / ``open_clip`` export (frozen or merged CLIP and the
class-embedding matrix), each with the JSON :mod:`mudpt.engine.export` writes beside it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Sequence

import torch

from mudpt.core.errors import ConfigError, CorruptFileError, MissingFileError
from mudpt.core.files import not_there

__all__ = ["Classifier", "Predictions", "load_classifier"]


@dataclass
class Predictions:
    """What :meth:`Classifier.predict` returns for N images.

    Attributes:
        labels: the predicted class index of each image.
        classnames: the predicted class name of each image.
        probabilities: (N, classes) softmax of the logits, float32.
        logits: (N, classes), float32.
        names: the class names, index = label.
    """

    labels: list
    classnames: list
    probabilities: torch.Tensor
    logits: torch.Tensor
    names: list

    def topk(self, k: int = 5) -> list:
        """``[[(classname, probability), ...]]``: each image's ``k`` most probable classes."""
        k = min(k, len(self.names))
        values, indices = self.probabilities.topk(k, dim=-1)
        return [[(self.names[i], float(p)) for p, i in zip(row_p, row_i)]
                for row_p, row_i in zip(values.tolist(), indices.tolist())]


class Classifier:
    """Preprocessing, batching and a ``logits(batch)`` function (see the module docstring)."""

    def __init__(self, logits, classnames: Sequence[str], preprocess: dict, source: str, input_dtype=torch.float32,
                 device: torch.device = torch.device("cpu")):
        self._logits = logits
        self.classnames = list(classnames)
        self.preprocessing = dict(preprocess)
        self.source = source
        self.input_dtype = input_dtype
        self.device = device
        from mudpt.data import build_transform

        size = int(preprocess["image_size"])
        self.transform = build_transform(SimpleNamespace(
            image_size=size, mean=tuple(preprocess["mean"]), std=tuple(preprocess["std"]), extra={},
            interpolation=preprocess.get("interpolation", "bicubic"),
            resize_mode=preprocess.get("resize_mode", "shortest")), train=False)

    def _tensor(self, image) -> torch.Tensor:
        from PIL import Image

        from mudpt.data import read_image

        if isinstance(image, torch.Tensor):
            size = int(self.preprocessing["image_size"])
            if image.dim() == 3:
                image = image.unsqueeze(0)
            if image.dim() != 4 or tuple(image.shape[1:]) != (3, size, size):
                raise ConfigError(f"a tensor image must be preprocessed, (3, {size}, {size}) or (batch, 3, {size}, "
                                  f"{size}); got {tuple(image.shape)}. Give a PIL image or a path to preprocess it",
                                  field="images")
            return image.float()
        if isinstance(image, (str, os.PathLike)):
            if "://" in str(image):
                raise ConfigError(f"{str(image)!r} is a URL; the classifier reads local image files", field="images")
            if not Path(image).is_file():
                raise MissingFileError(f"Image file: {not_there(image)}.", field="images")
            image = read_image(str(image))
        if not isinstance(image, Image.Image):
            raise ConfigError(f"an image is a PIL image, a path or a tensor; got a {type(image).__name__}",
                              field="images")
        return self.transform(image).unsqueeze(0)

    def predict(self, images, batch_size: int = 32) -> Predictions:
        """Predictions for ``images`` (one image or a list of PIL images, paths or tensors)."""
        if isinstance(images, (str, os.PathLike, torch.Tensor)) or not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ConfigError("predict needs at least one image", field="images")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be an integer of at least 1", field="batch_size")
        tensors = torch.cat([self._tensor(image) for image in images])
        logits = []
        for start in range(0, tensors.shape[0], batch_size):
            batch = tensors[start:start + batch_size].to(self.device, self.input_dtype)
            with torch.no_grad():
                logits.append(torch.as_tensor(self._logits(batch)).float().cpu())
        logits = torch.cat(logits)
        probabilities = logits.softmax(dim=-1)
        labels = probabilities.argmax(dim=-1).tolist()
        return Predictions(labels, [self.classnames[i] for i in labels], probabilities, logits, self.classnames)

    def __repr__(self) -> str:
        return f"Classifier({self.source}, {len(self.classnames)} classes)"


def _read_metadata(path: Path) -> dict:
    from mudpt.engine.export import metadata_path

    meta = metadata_path(path)
    if not meta.is_file():
        raise MissingFileError(f"{path}: its description {meta.name} is missing beside it ({not_there(meta)}); "
                               "mudpt export writes both", field="model")
    try:
        return json.loads(meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"{meta}: not valid JSON ({error})") from None


def load_classifier(path: str | os.PathLike, device: str = "cpu", classnames: Optional[Sequence[str]] = None,
                    precision: str = "fp32") -> Classifier:
    """A classifier from a run folder or an exported model (``.onnx``, ``.pt2``, or a ``head`` /
    ``open_clip`` ``.safetensors`` with its JSON). ``classnames`` switches a run's method to
    other classes (open-set methods); an exported model keeps the classes it was exported for.
    ``precision`` is the run's autocast (fp32, bf16, fp16)."""
    from mudpt.engine.evaluation import autocast_context, resolve_device

    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"Model: {not_there(path)}.", field="model")
    dev = resolve_device(device)
    if path.is_dir():
        from mudpt.engine.export import preprocessing
        from mudpt.engine.runs import load_run_method

        method, _ = load_run_method(path, device=dev)
        if classnames is not None:
            method.set_classnames([str(c).strip() for c in classnames if str(c).strip()])
        method.eval()

        def logits(batch):
            with autocast_context(dev, precision):
                return method(batch)

        return Classifier(logits, method.classnames, preprocessing(method.clip), f"run {path}", device=dev)
    if classnames is not None:
        raise ConfigError(f"{path} was exported for its own classes ({', '.join(_read_metadata(path)['classnames'][:3])}"
                          ", ...); to predict among other classes, give the run folder instead, or export the run again with a "
                          "class list (mudpt export's classes)", field="classnames")
    info = _read_metadata(path)
    fmt = info.get("format")
    dtype = torch.float16 if info.get("precision") == "fp16" else torch.float32
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError("running an ONNX export needs onnxruntime: pip install 'mudpt[export]'",
                              field="model") from None
        options = onnxruntime.SessionOptions()
        if dtype == torch.float16:  # onnxruntime's extended CPU fusions crash on fp16 graphs (1.30): basic ones
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def logits(batch):
            return torch.from_numpy(session.run(None, {name: batch.cpu().numpy()})[0])

        return Classifier(logits, info["classnames"], info["preprocessing"], f"onnx {path}", dtype)
    if fmt == "torch":
        module = torch.export.load(str(path)).module()
        return Classifier(module, info["classnames"], info["preprocessing"], f"torch.export {path}", dtype)
    if fmt in ("head", "open_clip"):
        import torch.nn.functional as F
        from safetensors.torch import load_file

        from mudpt.core.backbones import load_clip

        backbone = info["backbone"]
        head = load_file(str(path.with_suffix(".head.safetensors")) if fmt == "open_clip" else str(path))
        weights = str(path) if fmt == "open_clip" else backbone.get("pretrained")
        # the class embeddings are in the file: the image tower is all it runs (no tokenizer, which a
        # SigLIP-style backbone would fetch from the Hugging Face cache)
        clip = load_clip(backbone["name"], pretrained=weights, device=str(dev), tokenizer=False)
        embeddings, scale = head["class_embeddings"].to(dev), float(head["logit_scale"])

        def logits(batch):
            return scale * F.normalize(clip.model.encode_image(batch).float(), dim=-1) @ embeddings.t()

        return Classifier(logits, info["classnames"], info["preprocessing"], f"{fmt} {path}", device=dev)
    from mudpt.engine.export import metadata_path

    raise CorruptFileError(f"{metadata_path(path)}: format {fmt!r} is not one mudpt exports (onnx, torch, head, "
                           "open_clip); export the run again")
