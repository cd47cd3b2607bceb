"""CoCoOp: CoOp context shifted per image by a meta-network of the image feature."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mudpt.methods import register_method
from mudpt.methods.base import PromptMethod, Prompts
from mudpt.methods.config import MethodConfig, option


@dataclass
class CoCoOpConfig(MethodConfig):
    """CoCoOp's options."""

    n_ctx: int = option(4, "number of context vectors", min=1)
    ctx_init: Optional[str] = option("a photo of a", "phrase initialising the context (None: random)")


@register_method("cocoop")
class CoCoOp(PromptMethod):
    """Conditional CoOp (Zhou et al., 2022b). A meta-net ``Linear(D, D//16) -> ReLU ->
    Linear(D//16, d_t)`` maps each normalised image feature to a bias added to every context
    vector, so the class text features are per image and never cached."""

    Config = CoCoOpConfig
    label = "CoCoOp"
    report_order = 40
    published_presets = "cocoop/vit_b16_c4_ep10_batch1_ctxv1"

    def build(self):
        ctx, self.prompt_prefix = self.context_init(self.settings.n_ctx, self.settings.ctx_init)
        self.ctx = nn.Parameter(ctx)
        feature_dim = self.clip.embed_dim
        hidden = max(feature_dim // 16, 1)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(feature_dim, hidden)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(hidden, self.clip.text_width)),
        ]))

    # Upper bound on prompt sequences per text-tower call: the text side is batch x classes
    # sequences (64 images x 1000 ImageNet classes would not fit in memory at once).
    max_text_sequences = 4096

    def text_context(self) -> list:
        """The learned context before the meta-net's per-image shift (the shift depends on the
        image; the shared part is what a reading of the prompt can describe)."""
        return [self.ctx.detach()]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        raw_image = self.encode_images(images, Prompts(text=[], vision=[]))
        self.tap_features("image", raw_image)
        image_features = F.normalize(raw_image.float(), dim=-1)
        bias = self.meta_net(image_features.to(self.meta_net.linear1.weight.dtype))  # (B, d_t)
        contexts = self.ctx.unsqueeze(0) + bias.unsqueeze(1)  # (B, n, d_t)
        n_classes = len(self.classnames)
        chunk = max(1, self.max_text_sequences // n_classes)
        self.text_encoder_calls += 1
        text = []
        # traced for export: one piece, so that the batch size stays symbolic
        parts = [contexts] if self.tracing else [contexts[s:s + chunk] for s in range(0, images.shape[0], chunk)]
        for part in parts:
            tokens = self.class_tokens.repeat(part.shape[0], 1)  # (b*C, L)
            prompts = part.repeat_interleave(n_classes, dim=0)  # (b*C, n, d_t)
            features = self.text_tower(tokens, [prompts])
            text.append(features.reshape(part.shape[0], n_classes, -1))
        text = torch.cat(text)
        self.tap_features("text", text)
        return self.clip_logits(image_features, text)

    def class_text_features(self, prompts: Prompts, device=None):
        raise NotImplementedError("cocoop's text features depend on the image; call forward(images)")
