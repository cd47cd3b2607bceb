"""ProGrad: CoOp updated only along directions that do not conflict with zero-shot CLIP's knowledge.

Zhu et al., "Prompt-aligned Gradient for Prompt Tuning" (ICCV 2023), as their code
(BeierZhu/Prompt-align, ``trainers/prograd.py`` and ``Dassl.ProGrad.pytorch``'s
``prograd_backward_and_update``) computes it, per trainable tensor ``p``:

* ``g_ce``: gradient of the cross-entropy; ``g_kl``: gradient of the distillation loss
  ``T^2 * mean_b sum_c -softmax(z_zs / T) * log_softmax(z / T)`` towards zero-shot CLIP's logits
  ``z_zs`` (its hand-crafted template per dataset, on the same images);
* if ``cos(g_ce, g_kl) < 0``: ``g = g_ce - lambda * (g_ce . g_kl_hat) g_kl_hat`` (with ``lambda = 1``
  the projection of ``g_ce`` onto the normal plane of ``g_kl``), else ``g = g_ce``;
* the optimiser steps with ``g`` (weight decay is the optimiser's, added after).

The prompt is ProGrad's: ``n_ctx`` context vectors, the last ``w`` of them initialised with the
first ``w`` token embeddings of the dataset template's words before ``{}`` (``w`` = its number of
words; "a photo of a" for ImageNet), the others with zeros; the text is ``"X ... X <words> {c}."``.
Under DDP both gradients are the all-reduced ones. Zero-shot CLIP's image features are the
prompted model's own (CoOp prompts only the text), so the teacher costs no extra image forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mudpt.core.errors import ConfigError
from mudpt.methods import register_method
from mudpt.methods.base import PromptMethod, Prompts, classname_text
from mudpt.methods.config import MethodConfig, option
from mudpt.methods.zsclip import DATASET_TEMPLATES, DEFAULT_TEMPLATE

# ProGrad's hand-crafted templates (its CUSTOM_TEMPLATES): the teacher's prompts and the context
# initialisation (the words before "{}").
PROGRAD_TEMPLATES = {
    **DATASET_TEMPLATES,  # CoOp's, with the type of object first where CoOp names it last
    "oxford_pets": "a type of pet, a photo of a {}.",
    "oxford_flowers": "a type of flower, a photo of a {}.",
    "fgvc_aircraft": "a type of aircraft, a photo of a {}.",
    "dtd": "a texture of {}.",
    "food101": "a type of food, a photo of {}.",
}


@dataclass
class ProGradConfig(MethodConfig):
    """ProGrad's options."""

    n_ctx: int = option(16, "context vectors", min=1)
    init_from_template: bool = option(True, "initialise the last context vectors from the template's words "
                                            "(ProGrad's CTX_INIT); else N(0, 0.02) and prefix 'X ... X'")
    template: Optional[str] = option(None, "the teacher's hand-crafted template (default: the dataset's, else "
                                           "'a photo of a {}.')",
                                     check=lambda t: t.count("{}") == 1, expected="a string with one '{}'")
    dataset: Optional[str] = option(None, "take ProGrad's hand-crafted template of this benchmark dataset")
    grad_lambda: float = option(1.0, "lambda of the projection (1: onto the normal plane of the KL gradient)", min=0)
    temperature: float = option(1.0, "temperature T of the distillation loss", min=1e-6)

    dataset_templates = PROGRAD_TEMPLATES

    def resolve(self, clip):
        template = self.template or PROGRAD_TEMPLATES.get(self.dataset or "", DEFAULT_TEMPLATE)
        if self.init_from_template:
            words = classname_text(template.replace(" {}.", "")).split(" ")
            if len(words) > self.n_ctx:
                raise ConfigError(f"prograd: n_ctx={self.n_ctx} is fewer than the {len(words)} words of the template "
                                  f"{template!r} that initialise it", field="method_options.n_ctx")
        return self.resolved(template=template)


@register_method("prograd")
class ProGrad(PromptMethod):
    """CoOp (shared context, class token at the end) with prompt-aligned gradients (see the
    module docstring)."""

    Config = ProGradConfig
    label = "ProGrad"
    report_order = 90
    frozen_image_tower = True
    # ProGrad's few-shot scripts: 50 epochs for 1 shot, 100 for 2-4 and 200 for 8-16
    published_presets = {"fewshot": {None: "prograd/vit_b16_ep100", 1: "prograd/vit_b16_ep50", 4: "prograd/vit_b16_ep100",
                                     16: "prograd/vit_b16"},
                         "base2new": "prograd/vit_b16_ep100", "xd": "prograd/vit_b16_ep100"}

    def build(self):
        s = self.settings
        if not s.init_from_template:
            ctx, self.prompt_prefix = self.context_init(s.n_ctx, None)
        else:
            phrase = classname_text(s.template.replace(" {}.", ""))
            words = len(phrase.split(" "))
            ctx = torch.zeros(s.n_ctx, self.clip.text_width)
            ctx[s.n_ctx - words:] = self.phrase_embeddings(phrase)[:words]
            self.prompt_prefix = " ".join(["X"] * (s.n_ctx - words) + [phrase])
        self.ctx = nn.Parameter(ctx)

    def compute_prompts(self) -> Prompts:
        return Prompts(text=[self.ctx], vision=[])

    def training_step(self, images, labels):
        image_features, text_features = self.features(images)
        logits = self.clip_logits(image_features, text_features)
        teacher = self.clip_logits(image_features.detach(), self.frozen_text_features([self.settings.template]))
        t = self.settings.temperature
        ce = F.cross_entropy(logits.float(), labels)
        kl = (-F.softmax(teacher / t, dim=-1) * F.log_softmax(logits / t, dim=-1) * t * t).sum(1).mean()
        return {"logits": logits, "loss": ce, "kl": kl, "terms": {"ce": ce.detach(), "kl": kl.detach()}}

    def backward(self, outputs, context):
        params = context.params
        kl_grads = torch.autograd.grad(context.scale(outputs["kl"]), params, retain_graph=True, allow_unused=True)
        kl_grads = context.average([torch.zeros_like(p) if g is None else g for p, g in zip(params, kl_grads)])
        context.scale(outputs["loss"]).backward()
        with torch.no_grad():
            for p, g_kl in zip(params, kl_grads):
                if p.grad is None:
                    continue
                p.grad.copy_(project_gradient(p.grad, g_kl, self.settings.grad_lambda))


def project_gradient(g_ce: torch.Tensor, g_kl: torch.Tensor, grad_lambda: float = 1.0) -> torch.Tensor:
    """ProGrad's update of one tensor: ``g_ce``, or, when it conflicts with ``g_kl`` (negative
    cosine), ``g_ce - lambda * (g_ce . g_kl_hat) g_kl_hat``."""
    kl_hat = g_kl / torch.linalg.norm(g_kl)
    ce_hat = g_ce / torch.linalg.norm(g_ce)
    if torch.dot(ce_hat.flatten(), kl_hat.flatten()) < 0:
        return g_ce - grad_lambda * torch.dot(g_ce.flatten(), kl_hat.flatten()) * kl_hat
    return g_ce
