"""The CLIP families of open_clip's registry, as small random-init models for tests.

Each family is one open_clip model name. Its test backbone is built from open_clip's own config
of that name, with every structural choice kept (the model class, the text tower's mask,
pooling, projection and activation, the timm trunk and its pooling, rotary embeddings, the
widths' ratios) and only the sizes cut: 2 text blocks of width 64, and an image tower of 2
blocks of width 64 at 32 px in 8 px patches (a timm trunk is created by timm with those sizes
passed over its model's own arguments, as timm's ``create_model`` allows). A family whose tokenizer is a Hugging Face
one gets a tiny tokenizer of the same layout, built here (no download).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from typing import Optional
from unittest import mock

import torch

import mudpt
from mudpt.core import backbones


@dataclass(frozen=True)
class Family:
    name: str  # the open_clip model name
    tokenizer: Optional[str] = None  # "t5" (SigLIP) or "gemma" (SigLIP2): a tiny HF tokenizer of that layout
    vision_width: int = 64  # shrunk open_clip ViT width (ViT-L-14 keeps its vision tower wider than its text)


FAMILIES = {
    "openai-vit": Family("ViT-B-16"),
    "openai-rn": Family("RN50"),
    "vit-l-14": Family("ViT-L-14", vision_width=96),
    "quickgelu": Family("ViT-B-16-quickgelu"),  # the DFN / MetaCLIP tags' architecture
    "eva02": Family("EVA02-B-16"),
    "siglip": Family("ViT-B-16-SigLIP", tokenizer="t5"),
    "siglip2": Family("ViT-B-16-SigLIP2", tokenizer="gemma"),
    "pe-core": Family("PE-Core-B-16"),
}

_WORDS = ["a", "photo", "of", "the", "an", "x", "cat", "dog", "tulip", "truck", "fire", "golden", "retriever",
          "tabby", "bright", "small", "large", "red", "blue", "green"]


def tiny_hf_tokenizer(folder: str, style: str) -> str:
    """Save a tiny word-piece Hugging Face tokenizer with the layout of SigLIP's (``"t5"``: no
    leading token, ``</s>`` = 1 ends the text and pads) or SigLIP2's (``"gemma"``: no leading
    token, ``<eos>`` = 1 ends it, ``<pad>`` = 0 pads) to ``folder``; return ``folder``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if style == "t5":
        specials, eos, pad = ["<pad>", "</s>", "<unk>"], "</s>", "</s>"
    elif style == "gemma":
        specials, eos, pad = ["<pad>", "<eos>", "<bos>", "<unk>"], "<eos>", "<pad>"
    else:
        raise ValueError(style)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    pieces = letters + ["##" + c for c in letters] + list(".,-'_/()&") + _WORDS
    vocab = {}
    for token in specials + pieces:
        vocab.setdefault(token, len(vocab))
    model = Tokenizer(models.WordPiece(vocab, unk_token="<unk>"))
    model.normalizer = normalizers.Lowercase()
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    model.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, vocab[eos])])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=model, eos_token=eos, pad_token=pad, unk_token="<unk>")
    wrapped.save_pretrained(folder)
    return folder


def shrunk_config(family: Family) -> dict:
    """open_clip's config of the family's name with the sizes cut (see the module doc)."""
    import open_clip

    config = copy.deepcopy(open_clip.get_model_config(family.name))
    text, vision = config["text_cfg"], config["vision_cfg"]
    text.update(width=64, heads=2, layers=2)
    if family.tokenizer:
        text["vocab_size"] = 256
    if "timm_model_name" in vision:
        vision["image_size"] = 32
        config["embed_dim"] = 64  # also the trunk's width, which SigLIP's (no projection) passes on
    elif isinstance(vision["layers"], (list, tuple)):  # ModifiedResNet
        vision.update(layers=[1, 1, 1, 1], width=8, head_width=32, image_size=64)
        config["embed_dim"] = 64
    else:
        vision.update(layers=2, width=family.vision_width, head_width=32, patch_size=8, image_size=32)
        config["embed_dim"] = 64
    return config


def build(key: str, tokenizer_dir: Optional[str] = None) -> mudpt.ClipBackbone:
    """The seeded small backbone of family ``key`` (a tiny HF tokenizer is saved under
    ``tokenizer_dir`` for the families that need one)."""
    import open_clip

    family = FAMILIES[key]
    config = shrunk_config(family)

    def make():
        import timm

        create = timm.create_model

        def small(model_name, **kwargs):  # the trunk's own arguments, smaller sizes
            return create(model_name, **kwargs, img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)

        with mock.patch.object(timm, "create_model", small):
            return backbones._clip_from_config(config, False, backbones.family_preprocess(family.name))

    model = backbones._seeded_build(make)
    tokenizer = None
    if family.tokenizer:
        folder = os.path.join(tokenizer_dir, family.tokenizer)
        if not os.path.isdir(folder):
            tiny_hf_tokenizer(folder, family.tokenizer)
        tokenizer = open_clip.tokenizer.HFTokenizer(folder, context_length=config["text_cfg"]["context_length"],
                                                    **config["text_cfg"].get("tokenizer_kwargs", {}))
    return mudpt.ClipBackbone.from_model(model.float(), name=f"test-family-{key}", tokenizer=tokenizer)


def register(tokenizer_dir: str) -> list:
    """Register every family's small backbone as ``test-family-<key>`` (so that a saved method
    reloads onto it by name); return the names."""
    names = []
    for key in FAMILIES:
        def builder(pretrained=None, device="cpu", quick_gelu=None, key=key):
            if pretrained is not None:
                raise ValueError("the family test backbones are random-init only")
            return build(key, tokenizer_dir).to(device)

        mudpt.register_backbone(f"test-family-{key}", builder)
        names.append(f"test-family-{key}")
    return names


def config_json(key: str) -> str:
    """The shrunk config (for error messages and docs)."""
    return json.dumps(shrunk_config(FAMILIES[key]), sort_keys=True)


def zero_shot_logits(clip: mudpt.ClipBackbone, images: torch.Tensor, texts: list) -> torch.Tensor:
    """Zero-shot CLIP by open_clip's own ``encode_image`` / ``encode_text`` (the anchor)."""
    model = clip.model
    with torch.no_grad():
        image = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(clip.tokenizer(texts)), dim=-1)
    return model.logit_scale.exp() * image @ text.t()
