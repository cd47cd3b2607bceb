"""Frozen CLIP backbones: open_clip models, local weight files and built-in test models.

`load_clip(name, pretrained)` is the single entry point. It returns a :class:`ClipBackbone`:
the frozen open_clip model together with its tokenizer and its test-time image transform.

Weights can come from

* nothing (``pretrained=None``): a random initialisation that is *seeded*, so every call gives
  the same weights (tests, benchmarks and multi-process runs rely on that);
* an open_clip tag (``"openai"``, ``"laion2b_s34b_b88k"``, ...), fetched by open_clip;
* a local file: an OpenAI CLIP archive (TorchScript ``ViT-B-16.pt`` as the CoOp family keeps
  them, or a plain state dict), or a ``.safetensors`` / ``.bin`` / ``.pt`` / ``.pth`` state dict,
  possibly nested under ``"state_dict"`` / ``"model"`` and possibly with ``"module."`` prefixes.

OpenAI's weights were trained with QuickGELU; open_clip's plain configs use GELU. Files in
OpenAI's format (TorchScript archives, or state dicts carrying OpenAI's extra keys or its
half-precision weights) are therefore built with QuickGELU, like open_clip does for its
``openai`` tag. Pass ``quick_gelu=True/False`` to override the detection.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import importlib
import logging
import os
import threading
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

__all__ = [
    "ClipBackbone",
    "available_backbones",
    "load_clip",
    "load_state_dict_file",
    "normalize_model_name",
    "register_backbone",
]

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
# Keys that OpenAI's TorchScript archives carry besides the weights.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_RANDOM_INIT_SEED = 0


# --------------------------------------------------------------------------------------------
# The backbone object
# --------------------------------------------------------------------------------------------
@dataclass
class ClipBackbone:
    """A frozen CLIP model with everything needed to use it.

    Attributes:
        model: the open_clip ``CLIP`` module, frozen (no parameter requires grad), eval mode.
        tokenizer: callable ``list[str] -> LongTensor (N, context_length)``.
        preprocess: test-time transform, PIL image -> normalised tensor (bicubic resize,
            centre crop, normalise).
        name: backbone name (open_clip spelling, e.g. ``"ViT-B-16"``).
        pretrained: the weights' tag or file path, or ``None`` for the seeded random init.
        image_size: input resolution in pixels (square).
        mean, std: normalisation constants (3 floats each).
        text_width: width ``d_t`` of the text transformer.
        vision_width: width ``d_v`` of the vision transformer (``None`` for a ResNet tower).
        is_vit: whether the image tower is an open_clip ``VisionTransformer``.
        text_layers: number of text transformer blocks.
        vision_layers: number of vision transformer blocks (``None`` for a ResNet tower).
        embed_dim: dimension of the joint image/text feature space.
        context_length: token context length of the text tower.
    """

    model: nn.Module
    tokenizer: Callable[[list], torch.Tensor]
    preprocess: Callable
    name: str
    pretrained: Optional[str]
    image_size: int
    mean: tuple
    std: tuple
    text_width: int
    vision_width: Optional[int]
    is_vit: bool
    text_layers: int
    vision_layers: Optional[int]
    embed_dim: int = 0
    context_length: int = 77
    extra: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """Device of the backbone's weights."""
        return self.model.logit_scale.device

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        name: str,
        pretrained: Optional[str] = None,
        tokenizer: Optional[Callable] = None,
        image_size: Optional[int] = None,
        mean: Optional[tuple] = None,
        std: Optional[tuple] = None,
        preprocess: Optional[Callable] = None,
    ) -> "ClipBackbone":
        """Wrap any open_clip ``CLIP`` instance (with the standard text transformer).

        The model is frozen and put in eval mode. Missing pieces are derived from the model:
        the tokenizer defaults to open_clip's standard BPE tokenizer with the model's context
        length, the preprocessing to open_clip's test transform for the model's image size,
        mean and std.
        """
        import open_clip
        from open_clip.transformer import VisionTransformer

        _check_supported_model(model, name)
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)

        visual = model.visual
        preprocess_cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
        if image_size is None:
            size = preprocess_cfg.get("size", getattr(visual, "image_size", 224))
            image_size = size[0] if isinstance(size, (tuple, list)) else size
        image_size = int(image_size)
        mean = tuple(float(v) for v in (mean or preprocess_cfg.get("mean") or getattr(visual, "image_mean", None)
                                        or open_clip.OPENAI_DATASET_MEAN))
        std = tuple(float(v) for v in (std or preprocess_cfg.get("std") or getattr(visual, "image_std", None)
                                       or open_clip.OPENAI_DATASET_STD))
        context_length = int(model.context_length)
        if tokenizer is None:
            tokenizer = _standard_tokenizer(context_length)
        if preprocess is None:
            preprocess = open_clip.image_transform(
                image_size,
                is_train=False,
                mean=mean,
                std=std,
                resize_mode=preprocess_cfg.get("resize_mode"),
                interpolation=preprocess_cfg.get("interpolation") or "bicubic",
            )
        is_vit = isinstance(visual, VisionTransformer)
        if hasattr(model.text_projection, "weight"):
            embed_dim = int(model.text_projection.weight.shape[0])
        elif model.text_projection is not None:
            embed_dim = int(model.text_projection.shape[1])
        else:
            embed_dim = int(model.transformer.width)
        return cls(
            model=model,
            tokenizer=tokenizer,
            preprocess=preprocess,
            name=name,
            pretrained=pretrained,
            image_size=image_size,
            mean=mean,
            std=std,
            text_width=int(model.transformer.width),
            vision_width=int(visual.transformer.width) if is_vit else None,
            is_vit=is_vit,
            text_layers=len(model.transformer.resblocks),
            vision_layers=len(visual.transformer.resblocks) if is_vit else None,
            embed_dim=embed_dim,
            context_length=context_length,
        )

    def to(self, device: Union[str, torch.device]) -> "ClipBackbone":
        """Move the model to ``device`` (in place) and return self."""
        self.model.to(device)
        return self


@functools.lru_cache(maxsize=4)
def _standard_tokenizer(context_length: int):
    """open_clip's CLIP BPE tokenizer (shared: building it parses the BPE merges, ~0.1 s)."""
    import open_clip

    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


def _check_supported_model(model: nn.Module, name: str) -> None:
    missing = [attr for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final",
                                 "visual", "logit_scale") if not hasattr(model, attr)]
    if missing:
        raise ValueError(
            f"Backbone {name!r} is a {type(model).__name__}, which lacks {missing}. mudpt supports "
            "open_clip CLIP models with the standard CLIP text transformer (OpenAI CLIP, LAION, "
            "DataComp, MetaCLIP weights of the ViT-B/32, B/16, L/14 and RN architectures); models "
            "with Hugging Face text towers (CustomTextCLIP) or CoCa are not supported."
        )


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
BackboneBuilder = Callable[[Optional[str], Union[str, torch.device]], ClipBackbone]
_BACKBONES: dict[str, Union[BackboneBuilder, str]] = {}
_REGISTRY_LOCK = threading.Lock()


def register_backbone(name: str, builder: Union[BackboneBuilder, str]) -> None:
    """Register a named backbone.

    ``builder(pretrained, device) -> ClipBackbone``, or an import string ``"module:function"``
    resolved on first use (so registering costs nothing and the module may not exist yet).
    Registered names take precedence over open_clip names in :func:`load_clip`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone name must be a non-empty string, got {name!r}")
    if not (callable(builder) or (isinstance(builder, str) and ":" in builder)):
        raise ValueError(
            f"builder for backbone {name!r} must be a callable builder(pretrained, device) or an "
            f"import string 'module:function', got {builder!r}"
        )
    with _REGISTRY_LOCK:
        _BACKBONES[name] = builder


def available_backbones() -> list[str]:
    """Names registered with :func:`register_backbone` (open_clip names work too)."""
    return sorted(_BACKBONES)


def _resolve_builder(name: str) -> BackboneBuilder:
    builder = _BACKBONES[name]
    if isinstance(builder, str):
        module_name, _, attr = builder.partition(":")
        try:
            module = importlib.import_module(module_name)
            builder = getattr(module, attr)
        except (ImportError, AttributeError) as error:
            raise ImportError(
                f"backbone {name!r} is registered as {_BACKBONES[name]!r}, which could not be "
                f"imported: {error}"
            ) from error
        with _REGISTRY_LOCK:
            _BACKBONES[name] = builder
    return builder


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------
def normalize_model_name(name: str) -> str:
    """Map OpenAI spellings onto open_clip's: ``ViT-B/16`` -> ``ViT-B-16``,
    ``ViT-L/14@336px`` -> ``ViT-L-14-336``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"backbone name must be a non-empty string, got {name!r}")
    name = name.strip()
    if name in _BACKBONES:
        return name
    if name.endswith("px") and "@" in name:
        base, _, resolution = name.rpartition("@")
        name = f"{base}-{resolution[:-2]}"
    return name.replace("/", "-")


def _open_clip_config(name: str) -> dict:
    import open_clip

    config = open_clip.get_model_config(name)
    if config is None:
        known = list(open_clip.list_models()) + available_backbones()
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(
            f"unknown backbone {name!r}: it is neither an open_clip model name nor a registered "
            f"mudpt backbone ({available_backbones()}).{hint} open_clip.list_models() lists all "
            "open_clip names."
        )
    return config


# --------------------------------------------------------------------------------------------
# Loading weight files
# --------------------------------------------------------------------------------------------
def _looks_like_path(pretrained: str) -> bool:
    return (
        os.sep in pretrained
        or "/" in pretrained
        or pretrained.lower().endswith(_WEIGHT_SUFFIXES)
        or os.path.exists(pretrained)
    )


def load_state_dict_file(path: str) -> tuple[dict, str]:
    """Read a weight file into a flat ``{key: tensor}`` state dict.

    Returns ``(state_dict, source)`` where ``source`` is ``"torchscript"``, ``"safetensors"``
    or ``"torch"``. Nested ``"state_dict"`` / ``"model"`` dicts are unwrapped and
    ``"module."`` prefixes (DDP) stripped.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"weight file not found: {path!r}. Pass an existing local file (e.g. an OpenAI CLIP "
            "archive such as ViT-B-16.pt, or a .safetensors/.bin/.pt state dict) or an open_clip "
            "tag such as 'openai'."
        )
    if path.lower().endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return _unwrap_state_dict(load_file(path, device="cpu"), path), "safetensors"
        except Exception as error:  # safetensors raises its own error types
            raise ValueError(f"could not read safetensors weight file {path!r}: {error}") from error

    if zipfile.is_zipfile(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
                archive = torch.jit.load(path, map_location="cpu")
        except Exception:
            archive = None  # a zip written by torch.save, not a TorchScript archive
        if archive is not None:
            state_dict = {key: value for key, value in archive.state_dict().items()}
            return _unwrap_state_dict(state_dict, path), "torchscript"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"could not read weight file {path!r} as a TorchScript archive or a torch state dict "
            f"(loaded with weights_only=True): {error}"
        ) from error
    return _unwrap_state_dict(checkpoint, path), "torch"


def _unwrap_state_dict(checkpoint: Any, path: str) -> dict:
    for _ in range(3):
        if isinstance(checkpoint, dict) and not _is_tensor_dict(checkpoint):
            for key in ("state_dict", "model", "model_state_dict", "module"):
                if isinstance(checkpoint.get(key), dict):
                    checkpoint = checkpoint[key]
                    break
            else:
                break
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ValueError(
            f"weight file {path!r} does not hold a state dict (got {type(checkpoint).__name__}); "
            "expected a dict of tensors, possibly nested under 'state_dict' or 'model'."
        )
    state_dict = {key: value for key, value in checkpoint.items() if isinstance(value, torch.Tensor)}
    if not state_dict:
        raise ValueError(f"weight file {path!r} holds a dict without tensors (keys {list(checkpoint)[:8]}).")
    if all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module."):]: value for key, value in state_dict.items()}
    return state_dict


def _is_tensor_dict(checkpoint: dict) -> bool:
    return bool(checkpoint) and all(isinstance(value, torch.Tensor) for value in checkpoint.values())


def _is_openai_format(state_dict: dict, source: str) -> bool:
    """OpenAI's archives: TorchScript, or a state dict with its extra keys or fp16 weights."""
    if source == "torchscript":
        return True
    if any(key in state_dict for key in _OPENAI_EXTRA_KEYS):
        return True
    probe = state_dict.get("visual.conv1.weight", state_dict.get("token_embedding.weight"))
    return probe is not None and probe.dtype == torch.float16


def _describe_state_dict(state_dict: dict) -> str:
    """A short architecture description of an open_clip/OpenAI-format CLIP state dict."""
    parts = []
    try:
        if "visual.proj" in state_dict and "visual.conv1.weight" in state_dict:
            conv = state_dict["visual.conv1.weight"]
            layers = len({k.split(".")[3] for k in state_dict if k.startswith("visual.transformer.resblocks.")})
            grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            parts.append(f"ViT image tower (width {conv.shape[0]}, {layers} layers, patch {conv.shape[-1]}, "
                         f"image {grid * conv.shape[-1]} px)")
        elif any(k.startswith("visual.layer1.") for k in state_dict):
            parts.append("ResNet image tower")
        elif "visual.conv1.weight" in state_dict or any(k.startswith("visual.") for k in state_dict):
            parts.append("image tower of another kind")
        if "ln_final.weight" in state_dict:
            layers = len({k.split(".")[2] for k in state_dict if k.startswith("transformer.resblocks.")})
            parts.append(f"text transformer (width {state_dict['ln_final.weight'].shape[0]}, {layers} layers)")
        if "text_projection" in state_dict:
            parts.append(f"embed dim {state_dict['text_projection'].shape[-1]}")
    except Exception:  # a description is best effort; the key diff is the real message
        pass
    return ", ".join(parts) if parts else "an unrecognised layout"


def _guess_open_clip_name(state_dict: dict) -> Optional[str]:
    """The open_clip name whose shapes match the file, if any (used in error messages)."""
    import open_clip

    try:
        if "visual.conv1.weight" not in state_dict or "ln_final.weight" not in state_dict:
            return None
        vit = "visual.proj" in state_dict
        text_width = state_dict["ln_final.weight"].shape[0]
        embed = state_dict["text_projection"].shape[-1]
        for name in open_clip.list_models():
            config = open_clip.get_model_config(name) or {}
            vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
            if "timm_model_name" in vision or "hf_model_name" in text or config.get("custom_text"):
                continue
            if config.get("embed_dim") != embed or text.get("width", 512) != text_width:
                continue
            layers = vision.get("layers", 12)
            if vit and isinstance(layers, int):
                conv = state_dict["visual.conv1.weight"]
                n_layers = len({k.split(".")[3] for k in state_dict
                                if k.startswith("visual.transformer.resblocks.")})
                size = vision.get("image_size", 224)
                grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
                if (vision.get("width") == conv.shape[0] and layers == n_layers
                        and vision.get("patch_size") == conv.shape[-1] and size == grid * conv.shape[-1]):
                    return name
            elif not vit and isinstance(layers, (list, tuple)):
                if vision.get("width") == state_dict["visual.layer1.0.conv1.weight"].shape[0]:
                    counts = tuple(len({k.split(".")[2] for k in state_dict if k.startswith(f"visual.layer{b}.")})
                                   for b in (1, 2, 3, 4))
                    if tuple(layers) == counts:
                        return name
    except Exception:
        return None
    return None


def _load_weights_into(model: nn.Module, state_dict: dict, name: str, path: str) -> None:
    """Strictly load ``state_dict`` into ``model``; a clear error on any mismatch."""
    state_dict = {k: v for k, v in state_dict.items() if k not in _OPENAI_EXTRA_KEYS}
    # Buffers that open_clip builds itself and does not persist (e.g. the causal mask).
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
        and not (k == "logit_scale" and state_dict[k].numel() == expected[k].numel())
    ]
    if missing or unexpected or mismatched:
        if any(k.startswith(("text_model.", "vision_model.")) for k in state_dict):
            raise ValueError(
                f"{path!r} looks like a Hugging Face transformers CLIPModel checkpoint (keys "
                f"'text_model.*', 'vision_model.*'); mudpt reads OpenAI-format archives (e.g. ViT-B-16.pt) "
                f"and open_clip state dicts. Use the OpenAI or open_clip release of these weights for {name!r}."
            )
        guess = _guess_open_clip_name(state_dict)
        file_arch = f"{guess} ({_describe_state_dict(state_dict)})" if guess else _describe_state_dict(state_dict)
        details = []
        if mismatched:
            details.append(f"{len(mismatched)} shape mismatches, e.g. {mismatched[:3]}")
        if missing:
            details.append(f"{len(missing)} missing keys, e.g. {missing[:3]}")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:3]}")
        raise ValueError(
            f"the weights in {path!r} do not fit backbone {name!r}: the file looks like {file_arch}, "
            f"while {name!r} expects {_describe_state_dict(expected)}. " + "; ".join(details)
            + ". Pass the model name that matches the file (or the file that matches the name)."
        )
    if "logit_scale" in state_dict:
        state_dict = dict(state_dict)
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(expected["logit_scale"].shape)
    model.load_state_dict(state_dict, strict=True)


# --------------------------------------------------------------------------------------------
# Building models
# --------------------------------------------------------------------------------------------
class _DropRandomInitNotice(logging.Filter):
    # open_clip warns on the root logger whenever it builds a model without weights; for mudpt
    # that is either intended (pretrained=None) or followed by loading a local file.
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init():
    root = logging.getLogger()
    notice_filter = _DropRandomInitNotice()
    root.addFilter(notice_filter)
    try:
        yield
    finally:
        root.removeFilter(notice_filter)


def _seeded_build(build: Callable[[], nn.Module]) -> nn.Module:
    """Run ``build`` with a fixed seed without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]), _quiet_random_init():
        torch.manual_seed(_RANDOM_INIT_SEED)
        return build()


def _build_from_config(config: dict, quick_gelu: bool) -> nn.Module:
    import open_clip

    config = copy.deepcopy(config)
    config["quick_gelu"] = bool(quick_gelu) or bool(config.get("quick_gelu", False))
    model = _seeded_build(lambda: open_clip.CLIP(**config))
    open_clip.model.set_model_preprocess_cfg(model, {
        "size": model.visual.image_size,
        "mode": "RGB",
        "mean": open_clip.OPENAI_DATASET_MEAN,
        "std": open_clip.OPENAI_DATASET_STD,
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "fill_color": 0,
    })
    return model


def _finish(model: nn.Module, name: str, pretrained: Optional[str], device, tokenizer=None) -> ClipBackbone:
    model = model.float().to(device)
    return ClipBackbone.from_model(model, name=name, pretrained=pretrained, tokenizer=tokenizer)


def build_from_config(
    name: str,
    config: dict,
    pretrained: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    quick_gelu: Optional[bool] = None,
    tokenizer: Optional[Callable] = None,
) -> ClipBackbone:
    """Build a backbone from an open_clip CLIP config dict, optionally loading a weight file.

    Used for the built-in test backbones; also handy for custom small CLIPs.
    """
    if pretrained is None:
        return _finish(_build_from_config(config, bool(quick_gelu)), name, None, device, tokenizer)
    if not isinstance(pretrained, (str, os.PathLike)):
        raise ValueError(f"pretrained must be None or a path, got {pretrained!r}")
    path = os.path.abspath(os.fspath(pretrained))
    state_dict, source = load_state_dict_file(path)
    if quick_gelu is None:
        quick_gelu = _is_openai_format(state_dict, source)
    model = _build_from_config(config, quick_gelu)
    _load_weights_into(model, state_dict, name, path)
    return _finish(model, name, path, device, tokenizer)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub (``$HF_ENDPOINT``) accepts a TCP connection at all."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except (OSError, TypeError):
        return False


@contextlib.contextmanager
def _hub_offline_unless_reachable():
    """Without a route to the Hub, run in huggingface_hub's offline mode: cached weights still
    load, missing ones fail at once instead of after ~50 s of retries (measured here)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    if constants.HF_HUB_OFFLINE or _hub_reachable():
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def _load_open_clip(name: str, pretrained: Optional[str], device, quick_gelu: Optional[bool]) -> ClipBackbone:
    import open_clip

    config = _open_clip_config(name)
    if pretrained is None:
        model = _seeded_build(lambda: open_clip.create_model(name, pretrained=None,
                                                             force_quick_gelu=bool(quick_gelu)))
        _check_supported_model(model, name)
        return _finish(model, name, None, device, open_clip.get_tokenizer(name))

    if not isinstance(pretrained, (str, os.PathLike)):
        raise ValueError(f"pretrained must be None, an open_clip tag or a file path, got {pretrained!r}")
    pretrained = os.fspath(pretrained)
    tag_config = open_clip.get_pretrained_cfg(name, pretrained)
    if tag_config and not os.path.isfile(pretrained):
        force_quick_gelu = bool(tag_config.get("quick_gelu", False)) if quick_gelu is None else quick_gelu
        try:
            with _hub_offline_unless_reachable():
                model = open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=force_quick_gelu)
        except Exception as error:
            raise RuntimeError(
                f"could not fetch open_clip weights {pretrained!r} for {name!r} ({type(error).__name__}: "
                f"{error}). Without internet access, download the weights elsewhere and pass the local "
                f"file instead, e.g. load_clip({name!r}, pretrained='/path/to/{name}.pt') for an OpenAI "
                "archive or a .safetensors/.bin state dict."
            ) from error
        _check_supported_model(model, name)
        return _finish(model, name, pretrained, device, open_clip.get_tokenizer(name))

    if not _looks_like_path(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(
            f"pretrained={pretrained!r} is neither an open_clip tag for {name!r} (known tags: {tags}) nor "
            "a local file path. Pass a tag, a path to a weight file, or None for a random init."
        )
    path = os.path.abspath(pretrained)
    state_dict, source = load_state_dict_file(path)
    if quick_gelu is None:
        quick_gelu = _is_openai_format(state_dict, source)
    if config.get("custom_text") or "hf_model_name" in config.get("text_cfg", {}):
        raise ValueError(f"backbone {name!r} has a non-standard text tower, which mudpt does not support.")
    model = _seeded_build(lambda: open_clip.create_model(name, pretrained=None, force_quick_gelu=bool(quick_gelu)))
    _check_supported_model(model, name)
    _load_weights_into(model, state_dict, name, path)
    return _finish(model, name, path, device, open_clip.get_tokenizer(name))


def load_clip(
    name: str,
    pretrained: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    quick_gelu: Optional[bool] = None,
) -> ClipBackbone:
    """Load a frozen CLIP backbone.

    Args:
        name: an open_clip model name (``"ViT-B-16"``, ``"RN50"``, ...; OpenAI spellings such as
            ``"ViT-B/16"`` work too) or a registered backbone (``"world-tiny"``,
            ``"test-vit-tiny"``, ``"test-rn-tiny"``).
        pretrained: ``None`` for a seeded random init, an open_clip tag (``"openai"``, ...), or a
            local weight file (OpenAI ``.pt`` archive, ``.safetensors``, ``.bin``, ``.pt``).
        device: where to put the model.
        quick_gelu: force QuickGELU on/off; by default it is on for OpenAI-format files and
            for tags that open_clip marks as QuickGELU.

    Returns:
        a :class:`ClipBackbone` whose model is frozen and in eval mode.
    """
    name = normalize_model_name(name)
    if name in _BACKBONES:
        builder = _resolve_builder(name)
        if quick_gelu is not None:
            backbone = builder(pretrained, device, quick_gelu=quick_gelu)
        else:
            backbone = builder(pretrained, device)
        if not isinstance(backbone, ClipBackbone):
            raise TypeError(f"builder of backbone {name!r} returned {type(backbone).__name__}, not ClipBackbone")
        return backbone
    return _load_open_clip(name, pretrained, device, quick_gelu)


# --------------------------------------------------------------------------------------------
# Built-in tiny test backbones (random init, seeded; a few MB, built in milliseconds)
# --------------------------------------------------------------------------------------------
TEST_VIT_TINY_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 3, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
}
TEST_RN_TINY_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _test_builder(name: str, config: dict) -> BackboneBuilder:
    def build(pretrained=None, device="cpu", quick_gelu=None):
        return build_from_config(name, config, pretrained=pretrained, device=device, quick_gelu=quick_gelu)

    build.__doc__ = f"Tiny random-init test backbone {name!r} (seeded), or that architecture with a weight file."
    return build


register_backbone("test-vit-tiny", _test_builder("test-vit-tiny", TEST_VIT_TINY_CONFIG))
register_backbone("test-rn-tiny", _test_builder("test-rn-tiny", TEST_RN_TINY_CONFIG))
register_backbone("world-tiny", "mudpt.world.model:load_world_tiny")
