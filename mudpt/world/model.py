"""The world's tiny CLIP: an open_clip ``CLIP`` with the standard text transformer and tokenizer
and a small ViT whose patch embedding is a convolutional stem.

Why a conv stem: a plain ViT this small (patch 6-8 px on 48 px images, width 128, 4 layers)
learns colour, size and fill from the world's captions but never shape (measured in issue 5);
the stem ``visual.conv1`` below sees local edges and corners first and keeps the same 6 x 6
output grid, so the rest of open_clip's ``VisionTransformer`` — and every prompted forward pass
that calls ``visual.conv1(x)`` — is unchanged.

Shipped weights (``assets/world-tiny.safetensors``) are fp16 and hold only the token-embedding
rows that pretraining changed (the world's vocabulary); every other row of the 49,408-row table
is restored bit-for-bit from the seeded initialisation recorded in the recipe.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from mudpt.core.errors import ConfigError, CorruptFileError, MissingFileError
from mudpt.core.files import atomic_write

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
SHIPPED_WEIGHTS = ASSETS_DIR / "world-tiny.safetensors"
SHIPPED_RECIPE = ASSETS_DIR / "world-tiny.json"
BACKBONE_NAME = "world-tiny"
TOKENIZER_NAME = "ViT-B-32"  # open_clip's standard SimpleTokenizer, context 77
EMBEDDING_INIT_STD = 0.02
# The image normalisation of OpenAI's CLIP, kept so that the tiny model looks like any other.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

# Training-time augmentation the world's backbone asks the data layer for (see load_world_tiny).
TRAIN_AUGMENTATION = {"train_crop_scale": None, "train_hflip": False, "train_randaugment": False}

DEFAULT_ARCH = {
    "embed_dim": 128,
    "image_size": 48,
    "grid": 6,
    "vision_width": 128,
    "vision_layers": 4,
    "vision_heads": 4,
    "stem_channels": [32, 64, 128],
    # "group": GroupNorm after every stem convolution but the last. Without it the default conv
    # init shrinks the signal ~3x per layer, so the stem's output (std ~0.02) is swamped by the
    # positional embedding (std ~0.09) and every image starts with the same features (cosine
    # 0.99), which contrastive training is slow to escape. GroupNorm, not BatchNorm: no running
    # statistics, so the frozen backbone behaves the same in train and eval mode.
    "stem_norm": "group",
    "text_width": 128,
    "text_layers": 4,
    "text_heads": 4,
    "context_length": 77,
    "vocab_size": 49408,
}


def _groups(channels: int, target: int = 8) -> int:
    """The largest group count <= ``target`` that divides ``channels``."""
    return next(g for g in range(min(target, channels), 0, -1) if channels % g == 0)


class ConvStem(nn.Module):
    """Small convolutional stem in place of a ViT's patch embedding.

    A 3x3 convolution at full resolution, then stride-2 3x3 convolutions halving the grid until
    it is ``image_size / 2**k`` = the ViT grid, ending with ``width`` channels: the output shape
    ``(B, width, grid, grid)`` is exactly that of the patch-embedding ``conv1`` it replaces.
    """

    def __init__(self, width: int, channels: list[int], image_size: int, grid: int, norm: str = "none"):
        super().__init__()
        if norm not in ("none", "group"):
            raise ConfigError(f"ConvStem: norm must be 'none' or 'group', got {norm!r}")

        def normalised(conv_channels: int) -> list[nn.Module]:
            return [nn.GroupNorm(_groups(conv_channels), conv_channels)] if norm == "group" else []

        downsamples = 0
        size = image_size
        while size > grid:
            if size % 2:
                raise ConfigError(f"ConvStem: image size {image_size} cannot be halved down to grid {grid}")
            size //= 2
            downsamples += 1
        if size != grid:
            raise ConfigError(f"ConvStem: image size {image_size} is not grid {grid} times a power of two")
        if len(channels) < 1:
            raise ConfigError("ConvStem: channels must list at least one width")
        layers: list[nn.Module] = [nn.Conv2d(3, channels[0], 3, 1, 1), *normalised(channels[0]), nn.GELU()]
        previous = channels[0]
        for i in range(downsamples):
            out = width if i == downsamples - 1 else channels[min(i + 1, len(channels) - 1)]
            layers.append(nn.Conv2d(previous, out, 3, 2, 1))
            if i != downsamples - 1:
                layers.extend([*normalised(out), nn.GELU()])
            previous = out
        self.layers = nn.Sequential(*layers)
        self.out_channels = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build_world_clip(arch: dict | None = None) -> nn.Module:
    """A randomly initialised tiny CLIP (open_clip ``CLIP`` with a conv-stem ViT)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    cfg = dict(DEFAULT_ARCH)
    if arch:
        unknown = sorted(set(arch) - set(DEFAULT_ARCH))
        if unknown:
            raise ConfigError(f"world-tiny architecture: unknown keys {unknown}; expected some of {sorted(DEFAULT_ARCH)}")
        cfg.update(arch)
    if cfg["image_size"] % cfg["grid"]:
        raise ConfigError(f"world-tiny architecture: image_size {cfg['image_size']} is not a multiple of grid {cfg['grid']}")
    vision = CLIPVisionCfg(
        layers=cfg["vision_layers"], width=cfg["vision_width"],
        head_width=cfg["vision_width"] // cfg["vision_heads"],
        patch_size=cfg["image_size"] // cfg["grid"], image_size=cfg["image_size"])
    text = CLIPTextCfg(context_length=cfg["context_length"], vocab_size=cfg["vocab_size"],
                       width=cfg["text_width"], heads=cfg["text_heads"], layers=cfg["text_layers"])
    model = CLIP(embed_dim=cfg["embed_dim"], vision_cfg=vision, text_cfg=text)
    model.visual.conv1 = ConvStem(cfg["vision_width"], list(cfg["stem_channels"]), cfg["image_size"], cfg["grid"],
                                 norm=cfg["stem_norm"])
    model.visual.image_mean = IMAGE_MEAN
    model.visual.image_std = IMAGE_STD
    return model


def initial_token_embedding(vocab_size: int, width: int, seed: int) -> torch.Tensor:
    """The seeded initial token-embedding table; rows pretraining never touches keep these values,
    which is what lets the shipped file omit them."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(vocab_size, width, generator=generator) * EMBEDDING_INIT_STD


def export_weights(model: nn.Module, recipe: dict, path: str | os.PathLike) -> dict:
    """Write ``path`` (.safetensors, fp16, sparse token embedding) and ``path`` with ``.json``
    (the recipe). Returns the written recipe. Both files are written atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k != "attn_mask"}
    table = state.pop("token_embedding.weight").float()
    init = initial_token_embedding(table.shape[0], table.shape[1], recipe["embedding_seed"])
    changed = torch.nonzero((table != init).any(dim=1)).flatten()
    tensors = {k: v.to(torch.float16).contiguous() for k, v in state.items()}
    tensors["token_embedding.rows"] = table[changed].to(torch.float16).contiguous()
    tensors["token_embedding.ids"] = changed.to(torch.int32).contiguous()
    recipe = dict(recipe)
    recipe["kept_token_rows"] = int(changed.numel())
    # Package data and shared results: readable by everyone.
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", "recipe": json.dumps(recipe)}),
                 mode=0o644)
    atomic_write(path.with_suffix(".json"),
                 lambda tmp: Path(tmp).write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8"), mode=0o644)
    return recipe


def _read_recipe(path: Path) -> dict:
    json_path = path.with_suffix(".json")
    if json_path.is_file():
        try:
            return json.loads(json_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptFileError(f"world-tiny recipe {json_path} is not valid JSON: {err}") from err
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except Exception as error:  # safetensors' own error types: not a (complete) safetensors file
        raise CorruptFileError(f"world-tiny weights {path} are not a readable .safetensors file ({error}); pass "
                               "the world-tiny.safetensors written by `mudpt world pretrain`") from None
    if "recipe" not in meta:
        raise MissingFileError(
            f"world-tiny weights {path} have no recipe: expected {json_path} beside them (written by "
            "`mudpt world pretrain`) or a 'recipe' entry in the file's metadata")
    return json.loads(meta["recipe"])


def load_world_model(path: str | os.PathLike | None = None) -> tuple[nn.Module, dict]:
    """Build the tiny CLIP from exported weights (default: the shipped ones): ``(model, recipe)``.

    ``path`` may be a ``.safetensors`` file written by :func:`export_weights` or a folder holding
    ``world-tiny.safetensors`` (the output folder of ``mudpt world pretrain``).
    """
    from safetensors.torch import load_file

    path = Path(path) if path is not None else SHIPPED_WEIGHTS
    if path.is_dir():
        path = path / "world-tiny.safetensors"
    if not path.is_file():
        hint = ("the package was installed without its data files; reinstall it"
                if path == SHIPPED_WEIGHTS else "pass the .safetensors file written by `mudpt world pretrain`")
        raise MissingFileError(f"world-tiny weights not found at {path}: {hint}")
    recipe = _read_recipe(path)
    arch = recipe.get("arch")
    if not isinstance(arch, dict) or "embedding_seed" not in recipe:
        raise CorruptFileError(f"world-tiny recipe for {path} lacks 'arch' or 'embedding_seed'; was it written by "
                         "`mudpt world pretrain`?")
    # Recipes written before "stem_norm" existed describe the plain stem.
    model = build_world_clip({"stem_norm": "none", **arch})
    try:
        tensors = load_file(str(path))
    except Exception as error:  # a truncated file whose header still reads
        raise CorruptFileError(f"world-tiny weights {path} cannot be read ({error}): the file is truncated or "
                               "corrupt") from None
    try:
        rows = tensors.pop("token_embedding.rows").float()
        ids = tensors.pop("token_embedding.ids").long()
    except KeyError as err:
        raise CorruptFileError(f"world-tiny weights {path} lack {err.args[0]!r}") from None
    table = initial_token_embedding(model.vocab_size, model.token_embedding.weight.shape[1], recipe["embedding_seed"])
    table[ids] = rows
    state = {k: v.float() for k, v in tensors.items()}
    state["token_embedding.weight"] = table
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # the names fit, the shapes do not: another architecture's weights
        raise CorruptFileError(f"world-tiny weights {path} do not fit the recipe's architecture: "
                               f"{' '.join(str(error).split())[:300]}") from None
    missing = [k for k in missing if k != "attn_mask"]
    if missing or unexpected:
        raise CorruptFileError(f"world-tiny weights {path} do not match the recipe's architecture: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    return model, recipe


def world_tokenizer(context_length: int = 77):
    """open_clip's standard tokenizer (the one every OpenAI CLIP uses)."""
    import open_clip

    tokenizer = open_clip.get_tokenizer(TOKENIZER_NAME)
    if getattr(tokenizer, "context_length", context_length) != context_length:
        tokenizer.context_length = context_length
    return tokenizer


def encode_text_truncated(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` on only the first ``max_eot + 1`` positions.

    The causal mask and EOT pooling make every later position irrelevant, so this equals the
    full 77-token pass (to float rounding) at a fraction of the cost; used in pretraining.
    """
    from open_clip.transformer import text_global_pool

    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens)
    x = x + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    return x @ model.text_projection if not isinstance(model.text_projection, nn.Linear) else model.text_projection(x)


def encode_text_bucketed(model: nn.Module, tokens: torch.Tensor, buckets: int = 2) -> torch.Tensor:
    """:func:`encode_text_truncated` on ``buckets`` groups of captions of similar length (each
    truncated to its own longest): the same features, less padding to compute."""
    if buckets <= 1 or tokens.shape[0] < 2 * buckets:
        return encode_text_truncated(model, tokens)
    order = torch.argsort(tokens.argmax(dim=-1))
    chunks = [encode_text_truncated(model, tokens[idx]) for idx in torch.chunk(order, buckets)]
    features = torch.empty(tokens.shape[0], chunks[0].shape[1], dtype=chunks[0].dtype)
    features[order] = torch.cat(chunks)
    return features


def _weights_path(pretrained) -> Path:
    path = Path(pretrained) if pretrained not in (None, "", "world", "shipped") else SHIPPED_WEIGHTS
    return path / "world-tiny.safetensors" if path.is_dir() else path


def world_tiny_fingerprint(pretrained=None) -> str:
    """``sha256:<hex>`` of the weights file ``load_world_tiny(pretrained)`` reads."""
    from mudpt.core.files import file_sha256

    path = _weights_path(pretrained)
    return "sha256:" + file_sha256(path) if path.is_file() else f"missing:{path}"


def load_world_tiny(pretrained: str | os.PathLike | None = None, device="cpu"):
    """The ``world-tiny`` backbone as a ``mudpt.ClipBackbone`` (frozen, eval mode).

    ``pretrained``: None (or "world") for the shipped weights, else the path of a
    ``.safetensors`` written by ``mudpt world pretrain`` (or its output folder).
    """
    from mudpt.core.backbones import ClipBackbone

    path = None if pretrained in (None, "", "world", "shipped") else pretrained
    model, recipe = load_world_model(path)
    model = model.to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.eval()
    label = str(path) if path is not None else "world"
    backbone = ClipBackbone.from_model(model, BACKBONE_NAME, label, tokenizer=world_tokenizer(),
                                       image_size=int(recipe["arch"]["image_size"]))
    # The world's labels include an object's size and position: a random zoom or flip would
    # change them (a zoom also cuts objects out of 48 px scenes), so tuning sees whole scenes;
    # RandAugment's colour operations (solarise, posterise, ...) would change its colour labels.
    backbone.extra.update(TRAIN_AUGMENTATION)
    return backbone
