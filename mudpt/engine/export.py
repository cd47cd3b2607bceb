"""Deploying a tuned model: a run exported as a standalone classifier, with a JSON beside it.

Formats (``mudpt export --format``; which a method takes: ``PromptMethod.deploy_formats``):

* ``onnx``: the image-to-logits graph for onnxruntime (opset :data:`ONNX_OPSET`, a dynamic batch
  axis), input ``images`` (batch, 3, S, S) preprocessed, output ``logits`` (batch, classes);
* ``torch``: the same graph as a ``torch.export`` program (``.pt2``, ``torch.export.load``);
* ``head``: for methods that change the text side only, the class-embedding matrix and logit
  scale for frozen CLIP (``logits = scale * cos(model.encode_image(x), class_embeddings)``);
* ``open_clip``: for methods that update the backbone's weights additively (CLIP-LoRA), the
  merged open_clip state dict (``open_clip.create_model(name, pretrained=PATH)`` loads it) with
  the class-embedding head beside it.

The class text features of every method whose class features do not depend on the image are
computed once at export, so the graph is the image tower, the method's image-side tensors and
one matrix product; CoCoOp's text depends on the image and its graph holds the text tower.
Files are written atomically; an existing file is kept unless ``overwrite``.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from mudpt.core.errors import ConfigError, MissingFileError, RunFolderError, unwritable
from mudpt.core.files import not_there
from mudpt.core.vocabulary import EXPORT_FORMATS

__all__ = ["EXPORT_FORMATS", "ONNX_OPSET", "ImagesToLogits", "export_method", "export_run", "formats_table",
           "metadata_path", "trace_method", "write_program"]

#: ONNX opset of exported graphs: what torch's exporter writes natively (scaled dot-product
#: attention included) and every onnxruntime release since 1.14 runs.
ONNX_OPSET = 18
SUFFIXES = {"onnx": ".onnx", "torch": ".pt2", "head": ".safetensors", "open_clip": ".safetensors"}
PRECISIONS = ("fp32", "fp16")


class ImagesToLogits(nn.Module):
    """A method as a function of preprocessed images only (float32 logits); trace it inside
    ``method.constant_class_text(example)``."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.logits(images).float()


def metadata_path(model_path: str | os.PathLike) -> Path:
    """The JSON beside an exported file: ``model.onnx`` -> ``model.json``."""
    path = Path(model_path)
    return path.with_suffix(".json")


def preprocessing(clip) -> dict:
    """What the backbone's test transform does (``mudpt.data.build_transform(clip, train=False)``),
    in words a deployment can follow without mudpt."""
    resize = {"shortest": ("shorter side to image_size", "center, image_size x image_size"),
              "squash": ("both sides to image_size (aspect ratio not kept)", "none"),
              "longest": ("longer side to image_size", "pad to image_size x image_size with 0, centred")}
    mode = getattr(clip, "resize_mode", "shortest")
    how, crop = resize[mode]
    return {"image_size": int(clip.image_size), "resize_mode": mode, "resize": how, "crop": crop,
            "interpolation": getattr(clip, "interpolation", "bicubic"), "color": "RGB",
            "scale": "pixel / 255", "mean": [float(v) for v in clip.mean], "std": [float(v) for v in clip.std]}


def formats_table() -> list[tuple[str, tuple]]:
    """``[(method, formats at its default options)]`` over the registry (the docs' table)."""
    from mudpt.methods import available_methods, get_method_class

    return [(name, get_method_class(name).deploy_formats(get_method_class(name).Config()))
            for name in available_methods()]


@dataclass
class ExportResult:
    """What :func:`export_run` / :func:`export_method` wrote."""

    path: Path
    metadata: Path
    format: str
    classnames: list


def _check_target(out: Path, overwrite: bool, format: str) -> None:
    if metadata_path(out) == out:
        raise ConfigError(f"{out}: the model file needs another suffix than .json (its description is written "
                          f"to {out.stem}.json beside it)", field="out")
    extra = [out.with_suffix(".head.safetensors")] if format == "open_clip" else []
    for path in [out, metadata_path(out)] + extra:
        if path.exists() and not overwrite:
            raise ConfigError(f"{path} exists; replace it with overwrite=True, or give another output path",
                              field="overwrite")
        if path.is_dir():
            raise ConfigError(f"{path} is a folder; the export writes a file there", field="out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise unwritable(out.parent, error, "the folder of the exported model") from None


def _atomic_write(out: Path, write) -> None:
    """``write(temporary path)``, then rename into place (a reader never sees half a file)."""
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=f".tmp{out.suffix}", dir=out.parent)
        os.close(handle)
    except OSError as error:
        raise unwritable(out.parent, error, "the folder of the exported model") from None
    try:
        write(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _example(method, batch: int = 2) -> torch.Tensor:
    size = method.clip.image_size
    return torch.zeros(batch, 3, size, size, device=method.clip.device)


def _class_embeddings(method) -> torch.Tensor:
    with torch.no_grad():
        return method.class_text_features(method.compute_prompts()).float().cpu()


def export_method(method, out: str | os.PathLike, format: str = "onnx", precision: str = "fp32",
                  overwrite: bool = False, metadata: Optional[dict] = None) -> ExportResult:
    """Export ``method`` (on its current classes) to ``out`` in ``format`` with its JSON beside it.

    ``precision="fp16"`` stores and computes the graph in half precision (``onnx`` and
    ``torch``; the logits stay float32). ``metadata`` is merged into the JSON. The method is
    left in eval mode.
    """
    from safetensors.torch import save_file

    from mudpt._version import __version__
    from mudpt.core.backbones import weights_fingerprint

    if format not in EXPORT_FORMATS:
        raise ConfigError(f"format={format!r}: expected one of {', '.join(EXPORT_FORMATS)}", field="format")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r}: an export is fp32 or fp16", field="precision")
    allowed = method.deploy_formats(method.config)
    if format not in allowed:
        why = {"head": "its image features or logits are not frozen CLIP's scaled cosine (it changes the image side)",
               "open_clip": "it does not change the backbone's weights by an additive update"}.get(format, "")
        raise ConfigError(f"method {method.method_name!r} cannot be exported as {format!r}: {why}. Its formats: "
                          f"{', '.join(allowed)}", field="format")
    if precision == "fp16" and format in ("head", "open_clip"):
        raise ConfigError(f"format {format!r} stores weights for open_clip in float32; fp16 applies to onnx and torch",
                          field="precision")
    out = Path(out)
    _check_target(out, overwrite, format)
    method.eval()
    clip = method.clip
    info = {
        "format": format, "file": out.name, "mudpt_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "classnames": list(method.classnames), "preprocessing": preprocessing(clip),
        "method": method.method_name, "config": method.config.to_dict(),
        "backbone": {"name": clip.name, "pretrained": clip.pretrained,
                     "weights_fingerprint": weights_fingerprint(clip.name, clip.pretrained)},
        "precision": precision,
    }
    if format in ("onnx", "torch"):
        info["input"] = {"name": "images", "shape": ["batch", 3, clip.image_size, clip.image_size],
                         "dtype": "float16" if precision == "fp16" else "float32"}
        info["output"] = {"name": "logits", "shape": ["batch", len(method.classnames)], "dtype": "float32"}
        write_program(trace_method(method, precision), out, format)
        if format == "onnx":
            info["opset"] = ONNX_OPSET
    else:
        scale = float(method.logit_scale)
        head = {"class_embeddings": _class_embeddings(method).contiguous(),
                "logit_scale": torch.tensor(scale)}
        info["logit_scale"] = scale
        info["usage"] = ("logits = logit_scale * normalize(model.encode_image(images)) @ class_embeddings.T "
                         "(class_embeddings are L2-normalised, one row per class name)")
        if format == "head":
            _atomic_write(out, lambda tmp: save_file(head, tmp))
        else:
            state = {k: v.detach().float().cpu().contiguous() for k, v in method.merged_backbone_state().items()}
            _atomic_write(out, lambda tmp: save_file(state, tmp))
            head_path = out.with_suffix(".head.safetensors")
            _atomic_write(head_path, lambda tmp: save_file(head, tmp))
            info["head_file"] = head_path.name
            info["backbone"]["merged"] = True
            info["usage"] = (f"model = open_clip.create_model({clip.name!r}, pretrained={out.name!r}); "
                             + info["usage"] + f" (from {head_path.name})")
    info.update(metadata or {})
    text = json.dumps(info, indent=2)
    _atomic_write(metadata_path(out), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return ExportResult(out, metadata_path(out), format, list(method.classnames))


def trace_method(method, precision: str = "fp32"):
    """The method's image-to-logits graph as a ``torch.export`` program with a dynamic batch
    axis (class text features constants; see :meth:`PromptMethod.constant_class_text`).
    ``precision="fp16"`` traces a half-precision copy of the method and its backbone (the
    logits stay float32); ``method`` itself is left as it is."""
    example = _example(method)
    if precision == "fp16":  # a half-precision copy (with its backbone): the program keeps its tensors
        import copy

        method = copy.deepcopy(method).half()
        example = example.half()
    module = ImagesToLogits(method).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    with method.constant_class_text(example), torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes={"images": {0: batch}}, strict=False)


def write_program(program, out: str | os.PathLike, format: str, optimize: bool = True) -> None:
    """Write a traced program as ``torch`` (``.pt2``) or ``onnx`` (opset :data:`ONNX_OPSET`;
    ``optimize``: onnxscript's graph optimisation, on by default), atomically."""
    out = Path(out)
    if format == "torch":
        _atomic_write(out, lambda tmp: torch.export.save(program, tmp))
    elif format == "onnx":
        _atomic_write(out, lambda tmp: _onnx(program, tmp, optimize))
    else:
        raise ConfigError(f"format={format!r}: a traced program is written as torch or onnx", field="format")


def _onnx(program, path, optimize: bool) -> None:
    import contextlib
    import io
    import warnings

    try:
        import onnxscript  # noqa: F401  torch's ONNX exporter needs it
    except ImportError:
        raise ConfigError("exporting to ONNX needs the onnx and onnxscript packages: pip install 'mudpt[export]'",
                          field="format") from None
    import logging

    example = tuple(program.example_inputs[0])
    # the exporter and its optimiser report progress on stdout, in warnings and in log records
    # (constant folding it skips): keep the command's output its own
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)  # while exporting only (the optimiser's loggers set their own levels)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(program, example, dynamo=True, input_names=["images"],
                                             output_names=["logits"], opset_version=ONNX_OPSET, optimize=optimize,
                                             verbose=False)
            onnx_program.save(str(path))
    finally:
        logging.disable(level)


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, format: str = "onnx",
               classnames: Optional[Sequence[str]] = None, precision: str = "fp32", overwrite: bool = False,
               device: str = "cpu") -> ExportResult:
    """Export a finished run (``mudpt export``): its method on the run's classes, or on
    ``classnames`` (an open-set method; a closed-set one only on classes it was fitted on)."""
    from mudpt.engine.runs import is_finished, load_run_method

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingFileError(f"Run folder: {not_there(run_dir, 'folder')}.", field="run")
    if not is_finished(run_dir):
        raise RunFolderError(f"the run in {run_dir} has not finished: only a finished run is exported (train it "
                             "again with the same config to finish it)", field="run")
    method, cfg = load_run_method(run_dir, device=device)
    if classnames is not None:
        names = [str(name).strip() for name in classnames if str(name).strip()]
        if not names:
            raise ConfigError("the class list names no class", field="classes")
        method.set_classnames(names)
    return export_method(method, out, format=format, precision=precision, overwrite=overwrite,
                         metadata={"run": {"folder": str(run_dir.resolve()), "dataset": cfg.dataset,
                                           "subsample": cfg.subsample, "shots": cfg.shots, "seed": cfg.seed}})
