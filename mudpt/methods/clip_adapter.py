"""CLIP-Adapter: a residual bottleneck MLP on frozen CLIP's image features.

Gao et al., "CLIP-Adapter: Better Vision-Language Models with Feature Adapters" (IJCV 2023), as
the released ``clip_adapter.py`` (gaopengcuhk/CLIP-Adapter) computes it:
``f' = ratio * A(f) + (1 - ratio) * f`` with ``A = Linear(D, D/reduction, no bias) -> ReLU ->
Linear(D/reduction, D, no bias) -> ReLU`` on the (unnormalised) image feature ``f``; logits
``s * normalise(f') . normalise(t_c)`` against frozen CLIP's class text features under the
dataset's hand-crafted template (CoOp's table), computed once per class list. Only the adapter
trains, with the training loop's optimiser (the released code runs under CoOp's configs).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

from torch import nn

from mudpt.methods import register_method
from mudpt.methods.base import PromptMethod, Prompts
from mudpt.methods.config import MethodConfig, option
from mudpt.methods.zsclip import DATASET_TEMPLATES, dataset_template


@dataclass
class CLIPAdapterConfig(MethodConfig):
    """CLIP-Adapter's options."""

    reduction: int = option(4, "bottleneck reduction of the adapter (hidden width D / reduction)", min=1)
    ratio: float = option(0.2, "residual ratio: the adapted feature's share", min=0)
    template: Optional[str] = option(None, "hand-crafted template of the class text (default: the dataset's)",
                                     check=lambda t: t.count("{}") == 1, expected="a string with one '{}'")
    dataset: Optional[str] = option(None, "take CoOp's hand-crafted template of this benchmark dataset")

    dataset_templates = DATASET_TEMPLATES

    def resolve(self, clip):
        return self.resolved(template=self.template or dataset_template(self.dataset))


@register_method("clip_adapter")
class CLIPAdapter(PromptMethod):
    """CLIP's image features through a residual adapter (see the module docstring)."""

    Config = CLIPAdapterConfig
    label = "CLIP-Adapter"
    report_order = 50
    published_presets = "clip_adapter/vit_b16"

    def build(self):
        width = self.clip.embed_dim
        hidden = max(width // self.settings.reduction, 1)
        self.adapter = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(width, hidden, bias=False)), ("relu1", nn.ReLU(inplace=True)),
            ("fc2", nn.Linear(hidden, width, bias=False)), ("relu2", nn.ReLU(inplace=True)),
        ]))

    def use_dataset(self, dataset):
        if self.config.template is None:
            self.settings = self.settings.resolved(template=dataset_template(dataset))

    def logits(self, images):
        features = self.encode_images(images, Prompts(text=[], vision=[])).float()
        ratio = self.settings.ratio
        adapted = ratio * self.adapter(features.to(self.adapter.fc1.weight.dtype)).float() + (1 - ratio) * features
        return self.clip_logits(adapted, self.frozen_text_features([self.settings.template]))

    def text_learned_tensors(self):
        return []
