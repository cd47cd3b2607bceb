"""KgCoOp: CoOp whose learned class text features are kept close to the hand-crafted prompt's.

Yao et al., "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization"
(CVPR 2023), as their code (htyao89/KgCoOp, ``trainers/kgcoop.py``) computes it: CoOp's prompt
(context from "a photo of a", class token at the end) and the loss

    cross-entropy + weight * (1 - mean_i cos(w_i, w_i^clip))

between the learned class text features ``w_i`` and frozen CLIP's features ``w_i^clip`` of the
same classes under the dataset's hand-crafted template. The paper writes the term as
``lambda * mean ||w_i - w_i^clip||^2``; for unit vectors that is ``2 * (1 - cos)``, so the code's
``W = 8`` is the paper's ``lambda = 4`` in that form. Frozen features come from the shared cache
(computed once per class list).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn.functional as F

from mudpt.methods import register_method
from mudpt.methods.coop import CoOp, CoOpConfig
from mudpt.methods.config import option
from mudpt.methods.zsclip import DATASET_TEMPLATES, DEFAULT_TEMPLATE

# KgCoOp's hand-crafted templates (its CUSTOM_TEMPLATES): CoOp's, except DTD's.
KGCOOP_TEMPLATES = {**DATASET_TEMPLATES, "dtd": "a photo of a {}, a type of texture."}


@dataclass
class KgCoOpConfig(CoOpConfig):
    """KgCoOp's options: CoOp's (with its init phrase by default) plus the regulariser's."""

    ctx_init: Optional[str] = option("a photo of a", "phrase initialising the context (KgCoOp: 'a photo of a')")
    weight: float = option(8.0, "weight W of 1 - mean cos(learned, hand-crafted) in the loss", min=0)
    template: Optional[str] = option(None, "hand-crafted template of the frozen features (default: the "
                                           "dataset's, else 'a photo of a {}.')",
                                     check=lambda t: t.count("{}") == 1, expected="a string with one '{}'")
    dataset: Optional[str] = option(None, "take KgCoOp's hand-crafted template of this benchmark dataset")

    dataset_templates = KGCOOP_TEMPLATES

    def resolve(self, clip):
        resolved = super().resolve(clip)
        template = self.template or KGCOOP_TEMPLATES.get(self.dataset or "", DEFAULT_TEMPLATE)
        return resolved.resolved(template=template)


@register_method("kgcoop")
class KgCoOp(CoOp):
    """CoOp + knowledge-guided regularisation (see the module docstring)."""

    Config = KgCoOpConfig
    label = "KgCoOp"
    report_order = 80
    published_presets = "kgcoop/vit_b16_ep100_ctxv1"

    def training_step(self, images, labels):
        image_features, text_features = self.features(images)
        logits = self.clip_logits(image_features, text_features)
        frozen = self.frozen_text_features([self.settings.template])
        # The authors' torch.nn.CosineSimilarity(dim=1, eps=1e-07) of two normalised feature sets.
        kg = 1.0 - F.cosine_similarity(text_features, frozen, dim=1, eps=1e-7).mean()
        ce = F.cross_entropy(logits.float(), labels)
        return {"logits": logits, "loss": ce + self.settings.weight * kg, "terms": {"ce": ce.detach(), "kg": kg.detach()}}
