"""PromptSRC: deep vision-language prompts regularised towards frozen CLIP, aggregated over epochs.

Khattak et al., "Self-regulating Prompts: Foundational Model Adaptation without Forgetting"
(ICCV 2023), as their code (muzairkhattak/PromptSRC, ``trainers/promptsrc.py``) computes it:

* IVLP prompts: ``n_ctx`` text tokens from "a photo of a" and ``n_ctx_vision`` visual tokens at
  depths ``0 .. depth-1`` of each tower (published: 4 + 4 tokens, depth 9);
* the loss ``CE + L1(t, t_zs) * text_loss_weight + L1(v, v_zs) * image_loss_weight + KL`` with
  ``t`` / ``v`` the prompted, normalised class text / image features; ``t_zs`` frozen CLIP's
  class text features averaged (raw, then normalised) over 60 of CLIP's 80 ImageNet templates
  (textual diversity); ``v_zs`` frozen CLIP's image features of the batch (one extra image-tower
  forward per step); ``KL = sum softmax(z_zs) * (log softmax(z_zs) - log softmax(z)) / (B * C)``
  between the prompted logits ``z`` and the zero-shot logits ``z_zs = s * v_zs t_zs^T``;
* Gaussian prompt aggregation (GPA): after epoch ``e`` (1-based) the learned tensors are added
  to a running sum with weight ``N(e; gpa_mean, gpa_std)`` (weights normalised over the epochs);
  the sum replaces the learned tensors at the end of training: it is what is saved and evaluated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F

from mudpt.methods import register_method
from mudpt.methods.config import option
from mudpt.methods.ivlp import IVLP, IVLPConfig


def promptsrc_templates() -> list[str]:
    """The 60 templates PromptSRC averages: CLIP's 80 ImageNet templates (open_clip's
    ``OPENAI_IMAGENET_TEMPLATES``) without the 20 below, which its template list leaves out."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    left_out = {
        "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.",
        "a photo of the small {}.", "a photo of the weird {}.", "the cartoon {}.", "art of the {}.",
        "a drawing of the {}.", "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.",
        "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.",
        "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
    }
    return [t for t in (template("{}") for template in OPENAI_IMAGENET_TEMPLATES) if t not in left_out]


def gpa_weights(epochs: int, mean: float, std: float) -> list[float]:
    """Gaussian prompt-aggregation weights of epochs 1..N (normalised to sum to 1)."""
    gauss = [math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for e in range(1, epochs + 1)]
    total = sum(gauss)
    return [g / total for g in gauss]


@dataclass
class PromptSRCConfig(IVLPConfig):
    """PromptSRC's options: IVLP's (published defaults) plus the regularisers' and GPA's."""

    PAPER_DEPTH: ClassVar[int] = 9

    n_ctx: int = option(4, "prompt tokens per depth (text)", min=1)
    depth: Optional[int] = option(None, "prompt depth of the text tower (default 9, capped)", min=1)
    n_ctx_vision: Optional[int] = option(None, "prompt tokens per depth (vision); default n_ctx", min=1)
    text_loss_weight: float = option(25.0, "weight of L1(prompted, frozen) class text features", min=0)
    image_loss_weight: float = option(10.0, "weight of L1(prompted, frozen) image features", min=0)
    gpa_mean: float = option(15.0, "mean epoch of the Gaussian prompt aggregation (1-based)")
    gpa_std: float = option(1.0, "standard deviation, in epochs, of the Gaussian prompt aggregation", min=1e-6)


@register_method("promptsrc")
class PromptSRC(IVLP):
    """Self-regulating prompts (see the module docstring)."""

    Config = PromptSRCConfig
    label = "PromptSRC"
    report_order = 130
    published_presets = {"fewshot": "promptsrc/vit_b16_c2_ep50_batch4_4+4ctx_few_shot",
                         "base2new": "promptsrc/vit_b16_c2_ep20_batch4_4+4ctx",
                         "xd": "promptsrc/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets"}

    @classmethod
    def requires_vit(cls, config) -> bool:
        return True

    def build(self):
        super().build()
        self._gpa_sum: dict = {}
        self._templates = promptsrc_templates()

    def training_step(self, images, labels):
        s = self.settings
        prompts = self.compute_prompts()
        raw_image = self.encode_images(images, prompts)
        self.tap_features("image", raw_image)
        image_features = F.normalize(raw_image.float(), dim=-1)
        text_features = self.class_text_features(prompts, images.device)
        logits = self.clip_logits(image_features, text_features)
        frozen_text = self.frozen_text_features(self._templates, average="raw")
        frozen_image = self.frozen_image_features(images)
        zero_shot_logits = self.clip_logits(frozen_image, frozen_text)
        ce = F.cross_entropy(logits.float(), labels)
        text = F.l1_loss(text_features, frozen_text, reduction="mean") * s.text_loss_weight
        image = F.l1_loss(image_features, frozen_image, reduction="mean") * s.image_loss_weight
        kl = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(zero_shot_logits, dim=1), reduction="sum",
                      log_target=True) / logits.numel()
        loss = ce + kl + text + image
        return {"logits": logits, "loss": loss,
                "terms": {"ce": ce.detach(), "text": text.detach(), "image": image.detach(), "logits_kl": kl.detach()}}

    # -- Gaussian prompt aggregation --------------------------------------------------------------
    def on_epoch_end(self, epoch, epochs):
        weight = gpa_weights(epochs, self.settings.gpa_mean, self.settings.gpa_std)[epoch]
        with torch.no_grad():
            for name, parameter in self.trainable_parameters():
                weighted = parameter.detach() * weight
                self._gpa_sum[name] = weighted if name not in self._gpa_sum else self._gpa_sum[name] + weighted

    def on_train_end(self, context=None):
        if self._gpa_sum:
            self.load_learned_state_dict(self._gpa_sum)
            self._gpa_sum = {}

    def training_state(self):
        return {"gpa_sum": {k: v.detach().cpu().clone() for k, v in self._gpa_sum.items()}}

    def load_training_state(self, state):
        device = self.clip.device
        self._gpa_sum = {k: v.to(device) for k, v in (state.get("gpa_sum") or {}).items()}
