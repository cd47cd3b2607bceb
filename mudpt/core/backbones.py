"""Frozen CLIP backbones: open_clip models, local weight files and registered backbones.

`load_clip(name, pretrained)` is the single entry point. It returns a :class:`ClipBackbone`:
the frozen open_clip model together with its tokenizer and the facts methods need about it.

Weights come from

* nothing (``pretrained=None``): a random initialisation that is *seeded*, so every call gives
  the same weights (tests, benchmarks and multi-process runs rely on that);
* an open_clip tag (``"openai"``, ``"laion2b_s34b_b88k"``, ...), fetched by open_clip. With
  ``HF_HUB_OFFLINE=1`` they load from the Hugging Face cache; without it and without a route to
  the Hub, loading fails within seconds with that advice instead of retrying for a minute;
* a local file, read by open_clip's own loaders: an OpenAI CLIP archive (TorchScript
  ``ViT-B-16.pt`` as the CoOp family keeps them, or OpenAI's plain state dict; architecture
  inferred by ``build_model_from_openai_state_dict``), or an open_clip ``.safetensors`` /
  ``.bin`` / ``.pt`` state dict (``open_clip.load_checkpoint``: unwraps ``state_dict``, strips
  ``module.``, reshapes ``logit_scale``).

OpenAI's weights were trained with QuickGELU; open_clip's plain configs use GELU. Files in
OpenAI's format (TorchScript, OpenAI's extra keys, or half-precision weights) are built with
QuickGELU, as open_clip does for its ``openai`` tag (and tags such as MetaCLIP's and DFN's that
declare QuickGELU); ``quick_gelu=True/False`` overrides that with a warning when it contradicts
the weights' activation, and open_clip's ``-quickgelu`` model names work too (quick_gelu=False
cannot turn theirs off: an error).

Backbones other than open_clip names are registered with :func:`register_backbone` (the
seeded test models below; plug-ins such as the built-in world register theirs).
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
from typing import Callable, Optional, Union

import torch
from torch import nn

from mudpt.core.errors import (ConfigError, CorruptFileError, MissingFileError, UserError,
                               WeightsUnavailableError)
from mudpt.core.files import not_there
from mudpt.core.plugins import load_plugins
from mudpt.core import towers
from mudpt.core.towers import CLIP_LAYOUT, TextLayout

__all__ = [
    "ClipBackbone",
    "available_backbones",
    "build_from_config",
    "load_clip",
    "normalize_model_name",
    "register_backbone",
    "weights_fingerprint",
]

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
        name: backbone name (open_clip spelling, e.g. ``"ViT-B-16"``).
        pretrained: the weights' tag or absolute file path, or ``None`` for the seeded random init.
        image_size: input resolution in pixels (square).
        mean, std: image normalisation constants (3 floats each).
        text_width: width ``d_t`` of the text transformer.
        vision_width: width ``d_v`` of the vision transformer (``None`` for a ResNet tower).
        is_vit: whether the image tower is a ViT (open_clip's, or a timm ViT / Eva trunk).
        text_layers: number of text transformer blocks.
        vision_layers: number of vision transformer blocks (``None`` for a ResNet tower).
        embed_dim: dimension of the joint image/text feature space.
        context_length: token context length of the text tower.
        extra: backbone-specific hints for other layers (e.g. the data layer's training
            augmentation: ``train_crop_scale``, ``train_hflip``).
        interpolation: image resize interpolation (``"bicubic"``, ``"bilinear"``).
        resize_mode: test-time resize: ``"shortest"`` (shorter side to the size, centre crop),
            ``"squash"`` (both sides to the size) or ``"longest"`` (longer side, then pad).
        text_layout: where the tokenizer puts the text in a token row
            (:class:`mudpt.core.towers.TextLayout`: prompts start after its leading specials);
            ``None`` for a backbone loaded without a tokenizer (:class:`WithoutTokenizer`).
        logit_bias: the model's learned logit bias (SigLIP's sigmoid head), or ``None``.
            Classification uses ``logit_scale * cos`` as logits: a bias common to every class
            changes neither the argmax nor the softmax cross-entropy.

    The test-time image transform is the data layer's ``mudpt.data.build_transform(clip,
    train=False)`` (resize as ``resize_mode`` and ``interpolation`` say, normalise with
    ``mean``/``std``), from the model's own preprocessing config.
    """

    model: nn.Module
    tokenizer: Callable[[list], torch.Tensor]
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
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    text_layout: Optional[TextLayout] = CLIP_LAYOUT

    @property
    def logit_bias(self) -> Optional[float]:
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else float(bias.reshape(-1)[0])

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
    ) -> "ClipBackbone":
        """Wrap any open_clip ``CLIP`` or ``CustomTextCLIP`` instance (open_clip's text
        transformer; an open_clip or timm ViT, or any other image tower for prompt-free methods).

        The model is frozen and put in eval mode. Missing pieces are derived from the model:
        the tokenizer defaults to open_clip's standard BPE tokenizer with the model's context
        length, image size, mean, std, interpolation and resize mode to the model's
        preprocessing config.
        """
        import open_clip

        _check_supported_model(model, name)
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)

        visual = model.visual
        preprocess_cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
        if image_size is None:
            size = preprocess_cfg.get("size", getattr(visual, "image_size", 224))
            image_size = size[0] if isinstance(size, (tuple, list)) else size
        mean = tuple(float(v) for v in (mean or preprocess_cfg.get("mean") or getattr(visual, "image_mean", None)
                                        or open_clip.OPENAI_DATASET_MEAN))
        std = tuple(float(v) for v in (std or preprocess_cfg.get("std") or getattr(visual, "image_std", None)
                                       or open_clip.OPENAI_DATASET_STD))
        text = towers.text_parts(model).tower
        context_length = int(model.context_length)
        blocks = towers.vision_blocks(model)
        trunk = towers.timm_trunk(visual)
        vision_width = None if not blocks else int(trunk.embed_dim if trunk is not None else visual.transformer.width)
        projection = text.text_projection
        if hasattr(projection, "weight"):
            embed_dim = int(projection.weight.shape[0])
        elif projection is not None:
            embed_dim = int(projection.shape[1])
        else:
            embed_dim = int(text.transformer.width)
        tokenizer = tokenizer if tokenizer is not None else _standard_tokenizer(context_length)
        return cls(
            model=model,
            tokenizer=tokenizer,
            name=name,
            pretrained=pretrained,
            image_size=int(image_size),
            mean=mean,
            std=std,
            text_width=int(text.transformer.width),
            vision_width=vision_width,
            is_vit=bool(blocks),
            text_layers=len(text.transformer.resblocks),
            vision_layers=len(blocks) if blocks else None,
            embed_dim=embed_dim,
            context_length=context_length,
            interpolation=str(preprocess_cfg.get("interpolation") or "bicubic"),
            resize_mode=str(preprocess_cfg.get("resize_mode") or "shortest"),
            text_layout=None if isinstance(tokenizer, WithoutTokenizer) else text_layout(tokenizer, name),
        )

    def to(self, device: Union[str, torch.device]) -> "ClipBackbone":
        """Move the model to ``device`` (in place) and return self."""
        self.model.to(device)
        return self


class WithoutTokenizer:
    """The tokenizer of a backbone loaded for its image features only
    (``load_clip(..., tokenizer=False)``): tokenizing is an error that says so."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, texts) -> torch.Tensor:
        raise ConfigError(f"backbone {self.name!r} was loaded without its tokenizer (tokenizer=False: image features "
                          "only); load it with its tokenizer to encode text", field="tokenizer")

    def __repr__(self) -> str:
        return f"WithoutTokenizer({self.name!r})"


@functools.lru_cache(maxsize=4)
def _standard_tokenizer(context_length: int):
    """open_clip's CLIP BPE tokenizer (shared: building it parses the BPE merges, ~0.1 s)."""
    import open_clip

    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


def _check_supported_model(model: nn.Module, name: str) -> None:
    text = towers.text_parts(model).tower
    missing = [attr for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final")
               if not hasattr(text, attr)] + [attr for attr in ("visual", "logit_scale") if not hasattr(model, attr)]
    problem = None
    if missing:
        problem = f"lacks {missing} (a Hugging Face text encoder, or not a CLIP model)"
    elif getattr(text, "cls_emb", None) is not None or hasattr(model, "text_decoder"):
        problem = "appends a class token to its text (CoCa)"
    elif getattr(text, "use_pad_mask", False):
        problem = "masks padding in its text attention"
    if problem:
        raise ConfigError(
            f"Backbone {name!r} is a {type(model).__name__} that {problem}. mudpt supports open_clip's CLIP and "
            "CustomTextCLIP with open_clip's own text transformer: OpenAI CLIP, LAION, DataComp, DFN, MetaCLIP, "
            "EVA02, SigLIP / SigLIP2 and PE-Core weights (mudpt.available_backbones(open_clip=True) lists the "
            "names); models with Hugging Face text encoders (roberta, mt5, nllb) and CoCa are not supported.",
            field="backbone",
        )


def text_layout(tokenizer: Callable, name: str = "backbone") -> TextLayout:
    """Where ``tokenizer`` puts the text in a token row, found by tokenizing probes: the
    leading special tokens (CLIP's SOT; none for SigLIP's) and the token after the text
    (CLIP's EOT, an HF tokenizer's EOS, or its padding when it has no end token)."""
    rows = torch.as_tensor(tokenizer(["x", "y", ""])).long()
    if rows.dim() != 2 or rows.shape[0] != 3:
        raise ConfigError(f"the tokenizer of backbone {name!r} returned {tuple(rows.shape)} for 3 texts; expected "
                          "(3, context_length) token ids", field="tokenizer")
    differ = (rows[0] != rows[1]).nonzero()
    if len(differ) != 1:
        raise ConfigError(f"the tokenizer of backbone {name!r} does not give 'x' and 'y' one token each; mudpt "
                          "places prompts by token position and needs a word-piece tokenizer such as the backbone's "
                          "own (open_clip.get_tokenizer(name), or the folder it was saved to)", field="tokenizer")
    start = int(differ[0])
    end_id = int(rows[0, start + 1]) if start + 1 < rows.shape[1] else None
    return TextLayout(prompt_start=start, end_id=end_id, pad_id=int(rows[2, -1]))


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
BackboneBuilder = Callable[..., ClipBackbone]
_BACKBONES: dict[str, Union[BackboneBuilder, str]] = {}
_FINGERPRINTS: dict[str, Union[Callable[[Optional[str]], str], str]] = {}
_REGISTRY_LOCK = threading.Lock()


def register_backbone(name: str, builder: Union[BackboneBuilder, str],
                      fingerprint: Union[Callable[[Optional[str]], str], str, None] = None) -> None:
    """Register a named backbone.

    ``builder(pretrained, device, quick_gelu=None) -> ClipBackbone`` (``quick_gelu`` may be
    left out of the signature), or an import string ``"module:function"`` resolved on first use
    (so registering costs nothing). Registered names take precedence over open_clip names.
    ``fingerprint(pretrained) -> str`` (or an import string) identifies the weights a
    ``pretrained`` value loads, for backbones whose default weights are a file of their own
    (see :func:`weights_fingerprint`).
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
        if fingerprint is not None:
            _FINGERPRINTS[name] = fingerprint


def weights_fingerprint(name: str, pretrained: Optional[str]) -> str:
    """What identifies the weights ``load_clip(name, pretrained)`` loads, without loading them:
    ``sha256:<hex>`` of a local file's content, ``tag:<name>:<tag>`` for an open_clip tag,
    ``seeded-init:...`` for the seeded random init (open_clip's version decides its values), or
    a registered backbone's own fingerprint."""
    import open_clip

    from mudpt.core.files import file_sha256

    name = normalize_model_name(name)
    if is_registered(name) and name in _FINGERPRINTS:
        function = _FINGERPRINTS[name]
        if isinstance(function, str):
            module_name, _, attr = function.partition(":")
            function = getattr(importlib.import_module(module_name), attr)
        return function(pretrained)
    if pretrained is None:
        return f"seeded-init:{name}:open_clip-{open_clip.__version__}"
    if os.path.isfile(os.fspath(pretrained)):
        return "sha256:" + file_sha256(pretrained)
    return f"tag:{name}:{pretrained}"


def available_backbones(open_clip: bool = False) -> list[str]:
    """Names registered with :func:`register_backbone`, plug-ins included; with
    ``open_clip=True`` also every open_clip model name mudpt can drive (OpenAI-layout CLIPs of
    every size, EVA02, SigLIP / SigLIP2, PE-Core, DFN, MetaCLIP, ...; not CoCa or models with
    Hugging Face text encoders: :func:`unsupported_reason` says why)."""
    load_plugins()
    names = sorted(_BACKBONES)
    if open_clip:
        import open_clip as oc

        names += [name for name in oc.list_models()
                  if name not in _BACKBONES and unsupported_reason(oc.get_model_config(name) or {}) is None]
    return names


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


def normalize_model_name(name: str) -> str:
    """Map OpenAI spellings onto open_clip's: ``ViT-B/16`` -> ``ViT-B-16``,
    ``ViT-L/14@336px`` -> ``ViT-L-14-336``."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"backbone name must be a non-empty string, got {name!r}", field="backbone")
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
        raise ConfigError(
            f"unknown backbone {name!r}: it is neither an open_clip model name nor a registered "
            f"mudpt backbone ({available_backbones()}).{hint} open_clip.list_models() lists all "
            "open_clip names.",
            field="backbone",
        )
    problem = unsupported_reason(config)
    if problem:
        raise ConfigError(f"backbone {name!r} {problem}, which mudpt does not support (it drives open_clip's own "
                          "text transformer; mudpt.available_backbones(open_clip=True) lists the open_clip names it "
                          "supports).", field="backbone")
    return config


def unsupported_reason(config: dict) -> Optional[str]:
    """Why mudpt cannot drive the open_clip model of ``config`` (None: it can)."""
    text = config.get("text_cfg", {})
    if "multimodal_cfg" in config:
        return "is a CoCa captioner"
    if "hf_model_name" in text:
        return f"has a Hugging Face text encoder ({text['hf_model_name']})"
    if text.get("embed_cls") or text.get("use_pad_mask"):
        return "has a text class token or a padding mask"
    return None


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


def _clip_from_config(config: dict, quick_gelu: bool, preprocess: Optional[dict] = None) -> nn.Module:
    """open_clip's ``CLIP`` (or ``CustomTextCLIP`` for a ``custom_text`` config) of ``config``,
    with ``preprocess`` (default: OpenAI's statistics, bicubic, shorter side) as its
    preprocessing config."""
    import open_clip

    config = copy.deepcopy(config)
    config["quick_gelu"] = bool(quick_gelu) or bool(config.get("quick_gelu", False))
    custom_text = bool(config.pop("custom_text", False))
    model = (open_clip.CustomTextCLIP if custom_text else open_clip.CLIP)(**config)
    size = model.visual.image_size
    open_clip.model.set_model_preprocess_cfg(model, {
        "size": size[0] if isinstance(size, (tuple, list)) else size, "mode": "RGB",
        "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD, "interpolation": "bicubic",
        "resize_mode": "shortest", "fill_color": 0, **(preprocess or {}),
    })
    return model


_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def family_preprocess(name: str) -> dict:
    """The preprocessing every open_clip tag of ``name`` declares (SigLIP's 0.5 statistics and
    squash resize, PE-Core's, CLIPA's, ...), for weights that come without a tag (a local file,
    or the seeded random init); ``{}`` when the tags disagree or there are none (open_clip's
    OpenAI defaults apply)."""
    import open_clip

    found = None
    for tag in open_clip.list_pretrained_tags_by_model(name):
        tag_config = open_clip.get_pretrained_cfg(name, tag) or {}
        values = {k: tag_config.get(k) for k in _PREPROCESS_KEYS if tag_config.get(k) is not None}
        if found is None:
            found = values
        elif values != found:
            return {}
    return {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in (found or {}).items()}


def _finish(model: nn.Module, name: str, pretrained: Optional[str], device, tokenizer=None) -> ClipBackbone:
    model = model.float().to(device)
    towers.warn_if_slow_path(model, name)
    return ClipBackbone.from_model(model, name=name, pretrained=pretrained, tokenizer=tokenizer)


# --------------------------------------------------------------------------------------------
# Weight files (read by open_clip's loaders)
# --------------------------------------------------------------------------------------------
def _is_torchscript(path: str) -> bool:
    """TorchScript archives (OpenAI's ``ViT-B-16.pt``) are zips with a ``code/`` folder."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in entry for entry in archive.namelist())


def _read_state_dict(path: str) -> tuple[dict, str]:
    """``(state_dict, source)`` with source ``"torchscript"`` or ``"state_dict"``; any failure
    to read is a :class:`CorruptFileError` naming the file."""
    from open_clip.factory import load_state_dict

    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
                archive = torch.jit.load(path, map_location="cpu")
            return dict(archive.state_dict()), "torchscript"
        state_dict = load_state_dict(path)
    except Exception as error:  # torch, zipfile and safetensors raise their own error types
        raise CorruptFileError(
            f"could not read weight file {path!r} as a TorchScript archive, a torch state dict (read "
            f"with weights_only=True) or a safetensors file: {type(error).__name__}: {error}",
            field="pretrained") from error
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)} \
        if isinstance(state_dict, dict) else {}
    if not tensors:
        raise CorruptFileError(
            f"weight file {path!r} holds no state dict of tensors (got {type(state_dict).__name__}); "
            "expected a dict of tensors, possibly nested under 'state_dict'.", field="pretrained")
    return tensors, "state_dict"


def _is_openai_format(state_dict: dict, source: str) -> bool:
    """OpenAI's archives: TorchScript, or a state dict with its extra keys or fp16 weights."""
    if source == "torchscript" or any(key in state_dict for key in _OPENAI_EXTRA_KEYS):
        return True
    probe = state_dict.get("visual.conv1.weight", state_dict.get("token_embedding.weight"))
    return probe is not None and probe.dtype == torch.float16


def _shapes(state_dict: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state_dict.items() if k not in _OPENAI_EXTRA_KEYS}


def _check_architecture(file_shapes: dict, expected_shapes: dict, name: str, path: str, keys: list) -> None:
    """A clear error when a file's tensors do not fit the named architecture."""
    missing = [k for k in expected_shapes if k not in file_shapes]
    unexpected = [k for k in file_shapes if k not in expected_shapes]
    mismatched = [
        f"{k}: file {file_shapes[k]} vs model {expected_shapes[k]}"
        for k in expected_shapes
        if k in file_shapes and file_shapes[k] != expected_shapes[k]
        and not (k == "logit_scale" and _numel(file_shapes[k]) == _numel(expected_shapes[k]))
    ]
    if not (missing or unexpected or mismatched):
        return
    if any(k.startswith(("text_model.", "vision_model.")) for k in keys):
        raise ConfigError(
            f"{path!r} looks like a Hugging Face transformers CLIPModel checkpoint (keys 'text_model.*', "
            "'vision_model.*'); mudpt reads OpenAI-format archives (e.g. ViT-B-16.pt) and open_clip "
            f"state dicts. Use the OpenAI or open_clip release of these weights for {name!r}.", field="pretrained")
    guess = _guess_open_clip_name(file_shapes)
    described = _describe_shapes(file_shapes)
    file_arch = f"{guess} ({described})" if guess else described
    details = []
    if mismatched:
        details.append(f"{len(mismatched)} shape mismatches, e.g. {mismatched[:3]}")
    if missing:
        details.append(f"{len(missing)} missing keys, e.g. {missing[:3]}")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:3]}")
    raise ConfigError(
        f"the weights in {path!r} do not fit backbone {name!r}: the file looks like {file_arch}, "
        f"while {name!r} expects {_describe_shapes(expected_shapes)}. " + "; ".join(details)
        + ". Give the backbone name that matches the file (or the file that matches the name).",
        field="pretrained")


def _numel(shape: tuple) -> int:
    n = 1
    for size in shape:
        n *= size
    return n


def _count(shapes: dict, prefix: str) -> int:
    """Number of blocks under ``prefix`` (``"<prefix><index>."`` keys)."""
    return len({k[len(prefix):].split(".")[0] for k in shapes if k.startswith(prefix)})


def _embed_dim(shapes: dict) -> Optional[int]:
    for key in ("text_projection", "text.text_projection"):
        if key in shapes:
            return shapes[key][-1]
    if "text.text_projection.weight" in shapes:
        return shapes["text.text_projection.weight"][0]
    return None


def _describe_shapes(shapes: dict) -> str:
    """A short architecture description of an open_clip/OpenAI-format CLIP state dict."""
    parts = []
    if "visual.proj" in shapes and "visual.conv1.weight" in shapes:
        conv = shapes["visual.conv1.weight"]
        layers = _count(shapes, "visual.transformer.resblocks.")
        grid = round((shapes.get("visual.positional_embedding", (1,))[0] - 1) ** 0.5)
        parts.append(f"ViT image tower (width {conv[0]}, {layers} layers, patch {conv[-1]}, "
                     f"image {grid * conv[-1]} px)")
    elif any(k.startswith("visual.trunk.blocks.") for k in shapes):
        patch = shapes.get("visual.trunk.patch_embed.proj.weight", (0, 0, 0, 0))
        traits = [name for name, present in (
            ("class token", "visual.trunk.cls_token" in shapes),
            ("register tokens", "visual.trunk.reg_token" in shapes),
            ("attention pooling", any(k.startswith("visual.trunk.attn_pool.") for k in shapes)),
            ("EVA-style separate q/k/v", any(".attn.q_proj." in k for k in shapes))) if present]
        parts.append(f"timm ViT image tower (width {patch[0]}, {_count(shapes, 'visual.trunk.blocks.')} layers, "
                     f"patch {patch[-1]}{', ' + ', '.join(traits) if traits else ''})")
    elif any(k.startswith("visual.layer1.") for k in shapes):
        parts.append("ResNet image tower")
    elif any(k.startswith("visual.") for k in shapes):
        parts.append("image tower of another kind")
    if "ln_final.weight" in shapes:
        parts.append(f"text transformer (width {shapes['ln_final.weight'][0]}, "
                     f"{_count(shapes, 'transformer.resblocks.')} layers)")
    elif "text.ln_final.weight" in shapes:
        bias = ", projection bias" if "text.text_projection.bias" in shapes else ""
        parts.append(f"separate text tower (width {shapes['text.ln_final.weight'][0]}, "
                     f"{_count(shapes, 'text.transformer.resblocks.')} layers, context "
                     f"{shapes.get('text.positional_embedding', (0,))[0]}{bias})")
    if _embed_dim(shapes) is not None:
        parts.append(f"embed dim {_embed_dim(shapes)}")
    if "logit_bias" in shapes:
        parts.append("a logit bias (SigLIP's sigmoid head)")
    return ", ".join(parts) if parts else "an unrecognised layout"


def _guess_open_clip_name(shapes: dict) -> Optional[str]:
    """The open_clip name whose architecture has exactly these shapes, if any (error messages)."""
    import open_clip

    embed_dim = _embed_dim(shapes)
    if embed_dim is None:
        return None
    wanted = {k: v for k, v in shapes.items() if k not in ("logit_scale", "logit_bias")}
    custom_text = "text.ln_final.weight" in shapes
    timm_trunk = any(k.startswith("visual.trunk.") for k in shapes)
    for name in open_clip.list_models():
        config = open_clip.get_model_config(name) or {}
        # only architectures of the file's layout are built (the guess is on an error path, but not slow)
        if unsupported_reason(config) or config.get("embed_dim") != embed_dim \
                or bool(config.get("custom_text")) != custom_text \
                or ("timm_model_name" in config.get("vision_cfg", {})) != timm_trunk:
            continue
        try:
            found = _skeleton_shapes(lambda: _clip_from_config(config, False))
        except Exception:  # noqa: BLE001 - a guess is best effort
            continue
        if {k: v for k, v in found.items() if k not in ("logit_scale", "logit_bias")} == wanted:
            return name
    return None


def _skeleton_shapes(build: Callable[[], nn.Module]) -> dict:
    """Parameter shapes of an architecture, built on the meta device (no memory, milliseconds)."""
    with torch.device("meta"), _quiet_random_init():
        model = build()
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "attn_mask"}


def _load_file(name: str, path: str, quick_gelu: Optional[bool], build: Callable[[bool], nn.Module],
               load_open_clip_file: Callable[[bool], nn.Module]) -> nn.Module:
    """The model of architecture ``build`` with the weights of ``path``.

    OpenAI-format files are built by open_clip's ``build_model_from_openai_state_dict`` (which
    infers the architecture, checked against ``name``); open_clip state dicts by
    ``load_open_clip_file(quick_gelu)`` (open_clip's ``load_checkpoint``).
    """
    from open_clip.model import build_model_from_openai_state_dict

    if not os.path.isfile(path):
        raise MissingFileError(
            f"weight file: {not_there(path)}. Give an existing local file (an OpenAI CLIP archive such "
            "as ViT-B-16.pt, or a .safetensors/.bin/.pt state dict) or an open_clip tag such as 'openai'.",
            field="pretrained")
    state_dict, source = _read_state_dict(path)
    openai_format = _is_openai_format(state_dict, source)
    if openai_format:  # OpenAI trained with QuickGELU (another state dict does not say)
        _warn_activation(name, f"from the OpenAI-format file {path}", True, quick_gelu)
    quick = openai_format if quick_gelu is None else bool(quick_gelu)
    _check_architecture(_shapes(state_dict), _skeleton_shapes(lambda: build(quick)), name, path, list(state_dict))
    if openai_format:
        return _seeded_build(lambda: build_model_from_openai_state_dict(dict(state_dict), quick_gelu=quick,
                                                                        cast_dtype=None))
    return _seeded_build(lambda: load_open_clip_file(quick))


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


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.is_offline_mode())


def _warn_activation(name: str, weights: str, trained_quick: bool, asked: Optional[bool]) -> None:
    """An explicit ``quick_gelu`` that is not the activation the weights were trained with builds
    a model whose features are not the weights': allowed, never silent."""
    if asked is None or bool(asked) == trained_quick:
        return
    import warnings

    def activation(quick):
        return "QuickGELU" if quick else "GELU"

    warnings.warn(f"backbone {name!r} with weights {weights}: they were trained with {activation(trained_quick)}, "
                  f"and quick_gelu={asked} builds the model with {activation(asked)}, so its features are not the "
                  "weights' (leave quick_gelu unset to follow the weights)", UserWarning, stacklevel=4)


def _from_hub(load: Callable, what: str, advice: str, field: str):
    """``load()`` of something open_clip fetches from the Hugging Face Hub (a tag's weights, a
    tokenizer): without ``HF_HUB_OFFLINE`` and without a route to the Hub it fails at once with
    that advice instead of retrying for a minute; any failure says where it looked and what to
    do (``advice``)."""
    offline = _hub_offline()
    if not offline and not _hub_reachable():
        raise WeightsUnavailableError(
            f"cannot fetch {what}: the Hugging Face Hub ({os.environ.get('HF_ENDPOINT') or 'https://huggingface.co'}) "
            "cannot be reached from this machine. If it is in your Hugging Face cache, set HF_HUB_OFFLINE=1 to load "
            f"it from there; otherwise {advice}.", field=field)
    try:
        return load()
    except Exception as error:  # open_clip / transformers wrap download and cache failures in their own errors
        where = "in the Hugging Face cache (HF_HUB_OFFLINE is set)" if offline else "from the network"
        raise WeightsUnavailableError(f"could not fetch {what} {where} ({type(error).__name__}: {error}); {advice}.",
                                      field=field) from error


def _fetch_tag(name: str, tag: str, tag_config: dict, quick_gelu: Optional[bool]) -> nn.Module:
    import open_clip

    _warn_activation(name, f"{tag!r}", bool(tag_config.get("quick_gelu", False)), quick_gelu)
    force_quick_gelu = bool(tag_config.get("quick_gelu", False)) if quick_gelu is None else bool(quick_gelu)
    return _from_hub(
        lambda: _seeded_build(lambda: open_clip.create_model(name, pretrained=tag, force_quick_gelu=force_quick_gelu)),
        f"open_clip weights {tag!r} for {name!r}",
        f"download them on a machine with internet access and give the local file, e.g. load_clip({name!r}, "
        f"pretrained='/path/to/{name}.pt') for an OpenAI archive or a .safetensors/.bin state dict", "pretrained")


def _looks_like_path(pretrained: str) -> bool:
    return (os.sep in pretrained or "/" in pretrained or os.path.exists(pretrained)
            or pretrained.lower().endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt")))


def _open_clip_tokenizer(name: str, config: dict, tokenizer) -> Callable:
    """The tokenizer of open_clip model ``name``: open_clip's own (its BPE, or the Hugging Face
    tokenizer its config names, from the HF cache or the Hub), ``tokenizer`` when it is a
    callable, or the Hugging Face tokenizer saved in the local folder ``tokenizer``."""
    import open_clip

    if tokenizer is False:
        return WithoutTokenizer(name)
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        if not callable(tokenizer):
            raise ConfigError(f"tokenizer must be a callable, a local folder, None (the name's own) or False (none: "
                              f"image features only), got {tokenizer!r}",
                              field="tokenizer")
        return tokenizer
    text_cfg = config.get("text_cfg", {})
    context_length = int(text_cfg.get("context_length", 77))
    hub_name = text_cfg.get("hf_tokenizer_name")
    if tokenizer is not None:
        folder = os.fspath(tokenizer)
        if not os.path.isdir(folder):
            raise MissingFileError(f"tokenizer folder: {not_there(folder)}. Give the folder a Hugging Face tokenizer "
                                   "was saved to (save_pretrained), or leave tokenizer unset.", field="tokenizer")
        try:
            return open_clip.tokenizer.HFTokenizer(folder, context_length=context_length,
                                                   **text_cfg.get("tokenizer_kwargs", {}))
        except Exception as error:  # transformers raises its own error types for a bad folder
            raise ConfigError(f"could not load a Hugging Face tokenizer from {folder!r}: {type(error).__name__}: "
                              f"{error}", field="tokenizer") from error
    if not hub_name:
        return open_clip.get_tokenizer(name)
    return _from_hub(
        lambda: open_clip.get_tokenizer(name), f"the Hugging Face tokenizer {hub_name!r} of backbone {name!r}",
        f"give the folder it was saved to as the tokenizer setting, e.g. load_clip({name!r}, ..., "
        f"tokenizer='/path/to/tokenizer') (save it on a machine with internet access with "
        f"open_clip.get_tokenizer({name!r}).save_pretrained(folder))", "tokenizer")


def _load_open_clip(name: str, pretrained: Optional[str], device, quick_gelu: Optional[bool],
                    tokenizer=None) -> ClipBackbone:
    import open_clip

    config = _open_clip_config(name)
    if quick_gelu is False and config.get("quick_gelu"):
        raise ConfigError(f"quick_gelu=False: {name!r} is open_clip's QuickGELU variant of its architecture, which "
                          "quick_gelu cannot turn off; use the name without '-quickgelu' for GELU", field="quick_gelu")
    tokenizer = _open_clip_tokenizer(name, config, tokenizer)
    preprocess = family_preprocess(name)  # for weights without a tag (a tag brings its own)
    if pretrained is None:
        model = _seeded_build(lambda: open_clip.create_model(name, pretrained=None, force_quick_gelu=bool(quick_gelu),
                                                             force_preprocess_cfg=preprocess))
        return _finish(model, name, None, device, tokenizer)
    if not isinstance(pretrained, (str, os.PathLike)):
        raise ConfigError(f"pretrained must be None, an open_clip tag or a file path, got {pretrained!r}",
                          field="pretrained")
    pretrained = os.fspath(pretrained)
    tag_config = open_clip.get_pretrained_cfg(name, pretrained)
    if tag_config and not os.path.isfile(pretrained):
        return _finish(_fetch_tag(name, pretrained, tag_config, quick_gelu), name, pretrained, device, tokenizer)
    if not _looks_like_path(pretrained):
        raise ConfigError(
            f"pretrained={pretrained!r} is neither an open_clip tag for {name!r} (known tags: "
            f"{open_clip.list_pretrained_tags_by_model(name)}) nor a local file path. Give a tag, a path to a "
            "weight file, or None for a random init.", field="pretrained")
    path = os.path.abspath(pretrained)
    model = _load_file(
        name, path, quick_gelu,
        build=lambda quick: _clip_from_config(config, quick),
        load_open_clip_file=lambda quick: open_clip.create_model(name, pretrained=path, force_quick_gelu=quick,
                                                                 force_preprocess_cfg=preprocess))
    return _finish(model, name, path, device, tokenizer)


def build_from_config(
    name: str,
    config: dict,
    pretrained: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    quick_gelu: Optional[bool] = None,
    tokenizer: Optional[Callable] = None,
    preprocess: Optional[dict] = None,
) -> ClipBackbone:
    """A backbone of an open_clip ``CLIP`` (or ``custom_text``: ``CustomTextCLIP``) config
    dict: seeded random init, or a weight file; ``preprocess`` sets preprocessing config keys
    (``mean``, ``std``, ``interpolation``, ``resize_mode``).

    Used for the built-in test backbones; also handy for custom small CLIPs.
    """
    import open_clip

    if pretrained is None:
        model = _seeded_build(lambda: _clip_from_config(config, bool(quick_gelu), preprocess))
        return _finish(model, name, None, device, tokenizer)
    if not isinstance(pretrained, (str, os.PathLike)):
        raise ConfigError(f"pretrained must be None or a path, got {pretrained!r}", field="pretrained")
    path = os.path.abspath(os.fspath(pretrained))

    def load_open_clip_file(quick: bool) -> nn.Module:
        model = _clip_from_config(config, quick, preprocess)
        open_clip.load_checkpoint(model, path)
        return model

    model = _load_file(name, path, quick_gelu, build=lambda quick: _clip_from_config(config, quick),
                       load_open_clip_file=load_open_clip_file)
    return _finish(model, name, path, device, tokenizer)


def load_clip(
    name: str,
    pretrained: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    quick_gelu: Optional[bool] = None,
    tokenizer=None,
) -> ClipBackbone:
    """Load a frozen CLIP backbone.

    Args:
        name: an open_clip model name (``"ViT-B-16"``, ``"RN50"``, ...; OpenAI spellings such as
            ``"ViT-B/16"`` work too) or a registered backbone (:func:`available_backbones`).
        pretrained: ``None`` for a seeded random init, an open_clip tag (``"openai"``, ...), or a
            local weight file (OpenAI ``.pt`` archive, ``.safetensors``, ``.bin``, ``.pt``).
        device: where to put the model.
        quick_gelu: force QuickGELU on/off; by default it is on for OpenAI-format files and
            for tags that open_clip marks as QuickGELU.
        tokenizer: for an open_clip name, the folder a Hugging Face tokenizer was saved to (for
            SigLIP-style names, when it is not in the Hugging Face cache), or a callable
            ``list[str] -> LongTensor``; default: open_clip's tokenizer of the name. ``False``
            loads none, for image features only (an exported class-embedding head needs no
            tokenizer): the backbone's ``tokenizer`` then refuses text, and ``text_layout`` is
            ``None``.

    Returns:
        a :class:`ClipBackbone` whose model is frozen and in eval mode.

    Raises:
        UserError: unknown name, missing or unreadable file, weights of another architecture,
            or a tag that cannot be fetched.
    """
    name = normalize_model_name(name)
    if name not in _BACKBONES:
        load_plugins()
        name = normalize_model_name(name)
    if name in _BACKBONES:
        if tokenizer is not None and tokenizer is not False:  # False: its own is local and costs nothing
            raise ConfigError(f"tokenizer is for open_clip names; the registered backbone {name!r} brings its own",
                              field="tokenizer")
        builder = _resolve_builder(name)
        backbone = builder(pretrained, device) if quick_gelu is None else builder(pretrained, device,
                                                                                  quick_gelu=quick_gelu)
        if not isinstance(backbone, ClipBackbone):
            raise TypeError(f"builder of backbone {name!r} returned {type(backbone).__name__}, not ClipBackbone")
        return backbone
    return _load_open_clip(name, pretrained, device, quick_gelu, tokenizer)


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered backbone (not an open_clip name)."""
    try:
        name = normalize_model_name(name)
    except UserError:
        return False
    if name not in _BACKBONES:
        load_plugins()
    return name in _BACKBONES


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
