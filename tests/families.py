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

import contextlib
import copy
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
    timm_model: Optional[str] = None  # another timm trunk under the name's text tower (open_clip's TimmModel)


FAMILIES = {
    "openai-vit": Family("ViT-B-16"),
    "openai-rn": Family("RN50"),
    "vit-l-14": Family("ViT-L-14", vision_width=96),
    "quickgelu": Family("ViT-B-16-quickgelu"),  # the DFN / MetaCLIP tags' architecture
    "eva02": Family("EVA02-B-16"),
    "siglip": Family("ViT-B-16-SigLIP", tokenizer="t5"),
    "siglip2": Family("ViT-B-16-SigLIP2", tokenizer="gemma"),
    "pe-core": Family("PE-Core-B-16"),
    # no open_clip config has one: a timm ViT with a class token, 4 register tokens and average pooling
    "timm-registers": Family("ViT-B-16", timm_model="vit_base_patch16_reg4_gap_256"),
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
    if family.timm_model:
        config["vision_cfg"] = {"timm_model_name": family.timm_model, "timm_model_pretrained": False,
                                "timm_pool": "", "timm_proj": "linear"}
        config["custom_text"] = True
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


@contextlib.contextmanager
def small_timm_trunks():
    """timm trunks created inside are created with the small sizes (their own arguments, then
    these): 2 blocks of width 64 with 2 heads at 32 px in 8 px patches."""
    import timm

    create = timm.create_model

    def small(model_name, **kwargs):
        return create(model_name, **kwargs, img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)

    with mock.patch.object(timm, "create_model", small):
        yield


def tokenizer_for(key: str, tokenizer_dir: Optional[str]):
    """The family's tokenizer: open_clip's BPE (None), or its tiny HF tokenizer."""
    import open_clip

    family = FAMILIES[key]
    if not family.tokenizer:
        return None
    text_cfg = shrunk_config(family)["text_cfg"]
    folder = os.path.join(tokenizer_dir, family.tokenizer)
    if not os.path.isdir(folder):
        tiny_hf_tokenizer(folder, family.tokenizer)
    return open_clip.tokenizer.HFTokenizer(folder, context_length=text_cfg["context_length"],
                                           **text_cfg.get("tokenizer_kwargs", {}))


def build(key: str, tokenizer_dir: Optional[str] = None, pretrained: Optional[str] = None) -> mudpt.ClipBackbone:
    """The seeded small backbone of family ``key`` (or its architecture with the weights of the
    file ``pretrained``); a tiny HF tokenizer is saved under ``tokenizer_dir`` for the families
    that need one."""
    family = FAMILIES[key]
    with small_timm_trunks():
        return backbones.build_from_config(f"test-family-{key}", shrunk_config(family), pretrained=pretrained,
                                           tokenizer=tokenizer_for(key, tokenizer_dir),
                                           preprocess=backbones.family_preprocess(family.name))


def register(tokenizer_dir: str) -> list:
    """Register every family's small backbone as ``test-family-<key>`` (so that a saved method
    reloads onto it by name); return the names."""
    names = []
    for key in FAMILIES:
        def builder(pretrained=None, device="cpu", quick_gelu=None, key=key):
            return build(key, tokenizer_dir, pretrained).to(device)

        mudpt.register_backbone(f"test-family-{key}", builder)
        names.append(f"test-family-{key}")
    return names


def zero_shot_logits(clip: mudpt.ClipBackbone, images: torch.Tensor, texts: list) -> torch.Tensor:
    """Zero-shot CLIP by open_clip's own ``encode_image`` / ``encode_text`` (the anchor)."""
    model = clip.model
    with torch.no_grad():
        image = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(clip.tokenizer(texts)), dim=-1)
    return model.logit_scale.exp() * image @ text.t()
