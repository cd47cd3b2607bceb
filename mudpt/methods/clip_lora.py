"""CLIP-LoRA (Zanella & Ben Ayed, CVPR-W 2024): low-rank updates of the attention projections of
both frozen towers, exactly as the authors' code computes them (github.com/MaxZanella/CLIP-LoRA:
``loralib/layers.py`` ``LinearLoRA`` / ``PlainMultiheadAttentionLoRA``, ``loralib/utils.py``
``apply_lora`` and ``INDEX_POSITIONS_*``, ``lora.py`` ``run_lora``).

For every adapted projection ``W`` (q, k, v of the packed attention, and o on request) of the
chosen blocks, the output is ``W x + b + scaling * dropout(x) (B A)^T`` with ``A`` (r, d_in)
initialised as ``nn.Linear``'s weight (Kaiming-uniform, a = sqrt(5)), ``B`` (d_out, r) zeros,
``scaling = alpha / sqrt(r)`` (the authors' scaling, not LoRA's ``alpha / r``) and a dropout of
its own per projection on the LoRA branch's input only (training only). The logits are
``100 * cos(image, text)`` with the text features of ``"a photo of a {class}."`` computed by the
adapted text tower (the constant 100 is the authors'; ``logit_scale=None`` uses the backbone's).

The authors' blocks (``block.attn`` replaced by ``PlainMultiheadAttentionLoRA``) compute the
same values as mudpt's towers with a block adapter (``core/towers.py``). The exact speed-ups:
text truncation and the CLS-only last vision block stay on (a position the pooled output never
reads does not change it, with or without a dropout mask on it); the shared text prefix is
switched off while the LoRA dropout is active in training (the authors draw an independent
mask for every class prompt's prefix positions), and is on otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from mudpt.core import towers
from mudpt.methods import register_method
from mudpt.methods.base import PromptMethod, Prompts, classname_text
from mudpt.methods.config import MethodConfig, option

POSITIONS = ("all", "bottom", "mid", "up", "half-up", "half-bottom", "top3")
MATRICES = ("q", "k", "v", "o")


def block_indices(position: str, layers: int) -> list[int]:
    """The blocks of a tower with ``layers`` blocks that get LoRA. For 12-block towers these are
    the authors' ``INDEX_POSITIONS_TEXT`` / ``INDEX_POSITIONS_VISION['ViT-B/16']`` (thirds for
    bottom / mid / up, halves, the top 3); for ViT-L/14's 24 vision blocks the halves and ``all``
    are theirs, and the thirds (which they do not define there) follow the same rule."""
    third, half = layers // 3, layers // 2
    return {
        "all": list(range(layers)),
        "bottom": list(range(third)),
        "mid": list(range(third, 2 * third)),
        "up": list(range(2 * third, layers)),
        "half-bottom": list(range(half)),
        "half-up": list(range(half, layers)),
        "top3": list(range(max(layers - 3, 0), layers)),
    }[position]


@dataclass
class CLIPLoRAConfig(MethodConfig):
    """CLIP-LoRA's options (the authors' argument names and defaults)."""

    r: int = option(2, "rank of the low-rank matrices", min=1)
    alpha: float = option(1.0, "LoRA's alpha; the update is scaled by alpha / sqrt(r)", min=0.0)
    dropout_rate: float = option(0.25, "dropout on the input of each LoRA branch (training only)",
                                 check=lambda p: 0.0 <= p < 1.0, expected="a number in [0, 1)")
    params: list[str] = option(["q", "k", "v"], "attention matrices to adapt: q, k, v, o",
                               check=lambda m: bool(m) and set(m) <= set(MATRICES) and len(set(m)) == len(m),
                               expected="a non-empty list of distinct names among q, k, v, o")
    encoder: Literal["text", "vision", "both"] = option("both", "which towers get LoRA")
    position: Literal["all", "bottom", "mid", "up", "half-up", "half-bottom", "top3"] = option(
        "all", "which blocks get LoRA")
    template: str = option("a photo of a {}.", "the class prompt", check=lambda t: t.count("{}") == 1,
                           expected="a string with exactly one '{}'")
    logit_scale: Optional[float] = option(100.0, "logit scale (the authors' constant 100; None: the backbone's)",
                                          min=0.0)


class LowRankUpdate(nn.Module):
    """``scaling * dropout(x) (B A)^T``: the LoRA branch of one projection (``LinearLoRA``)."""

    def __init__(self, in_features: int, out_features: int, r: int, scaling: float, dropout_rate: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(r, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, r))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear's weight, the authors' init
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            x = self.dropout(x)
        return torch.matmul(x, (self.B @ self.A).transpose(0, 1)) * self.scaling


class BlockLoRA(nn.Module):
    """The LoRA branches of one block's attention: a block adapter for ``core/towers.py``."""

    def __init__(self, width: int, matrices, r: int, scaling: float, dropout_rate: float):
        super().__init__()
        self.updates = nn.ModuleDict({m: LowRankUpdate(width, width, r, scaling, dropout_rate) for m in matrices})

    def update(self, name: str, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The low-rank term added to projection ``name`` of ``x`` (None: not adapted)."""
        return self.updates[name](x) if name in self.updates else None


@register_method("clip_lora")
class CLIPLoRA(PromptMethod):
    """Frozen CLIP with LoRA on the attention projections of the chosen blocks of both towers."""

    Config = CLIPLoRAConfig
    label = "CLIP-LoRA"
    report_order = 75
    # The authors publish a few-shot recipe (lora.py, run_utils.py); later work runs the same one
    # in base-to-new, cross-dataset and domain generalisation.
    published_presets = "clip_lora/vit_b16"

    @classmethod
    def requires_vit(cls, config: MethodConfig) -> bool:
        return config.encoder in ("vision", "both")

    @classmethod
    def merges_into_backbone(cls, config: MethodConfig) -> bool:
        return True

    @classmethod
    def uses_frozen_image_tower(cls, config: MethodConfig) -> bool:
        return config.encoder == "text"

    def merged_backbone_state(self) -> dict:
        """The backbone's state dict (open_clip's keys) with every LoRA update folded in:
        ``W + scaling * B A`` in the rows of the attention's packed q/k/v weight (or its separate
        q/k/v weights) and in its output projection. At inference (no dropout) the merged model
        computes the same features as the adapted one."""
        model = self.clip.model
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        text_prefix, vision_prefix = towers.block_prefixes(model)
        for prefix, loras, blocks in ((text_prefix, self.text_lora, towers.text_blocks(model)),
                                      (vision_prefix, self.vision_lora, towers.vision_blocks(model))):
            for index, block in loras.items():
                where = towers.projection_weights(blocks[int(index)])
                for name, update in block.updates.items():
                    delta = (update.B @ update.A).detach() * update.scaling
                    suffix, rows = where[name]
                    key = f"{prefix}.{index}.{suffix}"
                    target = state[key] if rows is None else state[key][rows]
                    target += delta.to(target.dtype)
        return state

    def build(self):
        s = self.settings
        scaling = s.alpha / math.sqrt(s.r)
        model = self.clip.model
        self.text_lora = nn.ModuleDict()
        self.vision_lora = nn.ModuleDict()
        for tower, blocks, width, adapted in (
                ("text", towers.text_blocks(model), self.clip.text_width, self.text_lora),
                ("vision", towers.vision_blocks(model), self.clip.vision_width, self.vision_lora)):
            if s.encoder not in (tower, "both"):
                continue
            for i in block_indices(s.position, len(blocks)):
                adapted[str(i)] = BlockLoRA(width, s.params, s.r, scaling, s.dropout_rate)

    # -- text: the template, through the adapted text tower --------------------------------------
    def prompt_texts(self, classnames):
        return [self.settings.template.format(classname_text(c)) for c in classnames]

    def text_learned_tensors(self) -> list:
        return list(self.text_lora.parameters())

    def _dropout_active(self) -> bool:
        return self.training and self.settings.dropout_rate > 0

    def encode_class_text(self, prompts: Prompts) -> torch.Tensor:
        self.text_encoder_calls += 1
        adapters = {int(i): block for i, block in self.text_lora.items()}
        # the shared prefix would share one dropout mask among the classes (see the module doc)
        return self.text_tower(self.class_tokens, (), adapters=adapters,
                               share_prefix=self.truncate_text and not self._dropout_active())

    def encode_images(self, images: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        adapters = {int(i): block for i, block in self.vision_lora.items()}
        return towers.encode_image(self.clip.model, images, cls_only_last_block=self.cls_only_last_block,
                                   adapters=adapters)
