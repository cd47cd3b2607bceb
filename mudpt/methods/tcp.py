"""TCP (Yao et al., CVPR 2024): textual-based class-aware prompt tuning, as the authors' code
computes it (github.com/htyao89/Textual-based_Class-aware_prompt_tuning, ``trainers/tcp.py``
``PromptLearner``, ``CustomCLIP.forward``; ``trainers/clip_text/model.py``
``ResidualAttentionBlock_MaPLe.forward``; ``configs/trainers/TCP/vit_b16_ep100_ctxv1.yaml`` and
``scripts/base2new_train.sh``):

* a CoOp context of ``n_ctx`` (4) vectors drawn from N(0, 0.02) fills the first ``n_ctx`` tokens
  of the dataset's prompt template (their ``CUSTOM_TEMPLATES``: ``"X X X X {}, a type of pet."``
  and so on; where a template starts with "a photo of a", those four tokens are the ones
  replaced);
* class-aware tokens: a small network (their ``meta_net``: Linear(D, D/4) with bias, QuickGELU,
  Linear(D/4, n_ctx * d_text) with bias) maps frozen CLIP's normalised text feature of each class
  (their ``CUSTOM_TEMPLATES_ori``, another template set) to ``n_ctx`` tokens that *replace* the
  context positions at the input of text block ``layer`` (8 of ViT-B/16's 12, their ``layers=[8]``;
  by default two thirds of the way up on other backbones), with the
  weight 1.0 their ``weights=[1.0]`` fixes: the ``TRAINER.COOP.W`` passed in is overwritten);
* logits ``s * norm(f) . norm(t_c)`` with CLIP's logit scale;
* loss: cross-entropy plus ``weight`` (8.0, hard-coded in their ``forward``) x
  ``(1 - mean_c cos(t_c, t_c^clip))`` against the frozen text features of the same templates
  (KgCoOp's regulariser).

Their recipe (the preset): Adam (Dassl's ``adam``) at lr 0.002 with weight decay 5e-4 and
``eps=1e-3``, which their README asks to patch into Dassl because Adam's default eps gives NaN
losses in fp16; batch 32, 50 epochs, one constant warm-up epoch at 1e-5, cosine per epoch.
Where mudpt differs (docs/METHODS.md, "TCP"): their evaluation of ImageNet's and SUN397's new
classes loads the epoch-25 checkpoint (``LOADEP=25`` in their script), and mudpt evaluates the
trained model; the class-aware tokens' count follows ``n_ctx`` (their network's output is
hard-coded to 4 tokens of 512, ViT-B/16's text width, which equals the scripts' ``NCTX=4``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mudpt.methods import register_method
from mudpt.methods.base import PromptMethod, Prompts, classname_text
from mudpt.methods.config import MethodConfig, option
from mudpt.methods.zsclip import DATASET_TEMPLATES

#: Their CUSTOM_TEMPLATES (the prompt the context fills), by mudpt's dataset keys. Their
#: "a photo of a ..." ones are written with the four tokens the context replaces as X.
TCP_PROMPT_TEMPLATES = {
    "oxford_pets": "X X X X {}, a type of pet.", "oxford_flowers": "X X X X {}, a type of flower.",
    "fgvc_aircraft": "X X X X {}, a type of aircraft.", "dtd": "X X X X {} texture.", "eurosat": "X X X X {}.",
    "stanford_cars": "X X X X {}, a type of car", "food101": "X X X X {}, a type of food.",
    "sun397": "X X X X {}.", "caltech101": "X X X X {}.", "ucf101": "X X X X person doing {}.",
    "imagenet": "X X X X {}.", "imagenet_sketch": "X X X X {}.", "imagenetv2": "X X X X {}.",
    "imagenet_a": "X X X X {}.", "imagenet_r": "X X X X {}.",
}
#: Their CUSTOM_TEMPLATES_ori (the frozen features the class-aware tokens come from, and the
#: regulariser's target).
TCP_FROZEN_TEMPLATES = {
    **DATASET_TEMPLATES, "fgvc_aircraft": "a photo of an aircraft {}.", "dtd": "a photo of a {}, a type of texture.",
    "food101": "a photo of a {}, a type of food.",
}


class QuickGELU(nn.Module):
    """CLIP's activation, which their network uses."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


@dataclass
class TCPConfig(MethodConfig):
    """TCP's options."""

    n_ctx: int = option(4, "context vectors, and class-aware tokens per class", min=1)
    layer: Optional[int] = option(None, "the text block at whose input the class-aware tokens replace the context "
                                        "(default: two thirds of the way up, the authors' block 8 of ViT-B/16's 12)",
                                  min=1)
    weight: float = option(8.0, "weight of 1 - mean cos(learned, frozen class text features) in the loss", min=0)
    template: Optional[str] = option(None, "the prompt template, its first n_ctx tokens filled by the context "
                                           "(default: the dataset's, else 'X X X X {}.')",
                                     check=lambda t: t.count("{}") == 1, expected="a string with one '{}'")
    frozen_template: Optional[str] = option(None, "template of the frozen features (default: the dataset's)",
                                            check=lambda t: t.count("{}") == 1, expected="a string with one '{}'")
    dataset: Optional[str] = option(None, "take TCP's templates of this benchmark dataset")

    dataset_templates = TCP_PROMPT_TEMPLATES

    def resolve(self, clip):
        layer = self.layer if self.layer is not None else max(1, round(clip.text_layers * 8 / 12))
        if layer >= clip.text_layers:
            raise self.field_error("layer", layer, f"a text block index below the backbone's {clip.text_layers}",
                                   "the text block of the class-aware tokens")
        template = self.template or TCP_PROMPT_TEMPLATES.get(self.dataset or "", " ".join(["X"] * self.n_ctx) + " {}.")
        frozen = self.frozen_template or TCP_FROZEN_TEMPLATES.get(self.dataset or "", "a photo of a {}.")
        return self.resolved(template=template, frozen_template=frozen, layer=layer)


@register_method("tcp")
class TCP(PromptMethod):
    """Textual-based class-aware prompt tuning (see the module docstring)."""

    Config = TCPConfig
    label = "TCP"
    report_order = 85
    frozen_image_tower = True
    published_presets = "tcp/vit_b16_ep50"

    def build(self):
        s = self.settings
        self.ctx, _ = self.context_init(s.n_ctx, None)
        self.ctx = nn.Parameter(self.ctx)
        dim, width = self.clip.embed_dim, self.clip.text_width
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(dim, dim // 4, bias=True)),
            ("relu", QuickGELU()),
            ("linear2", nn.Linear(dim // 4, s.n_ctx * width, bias=True)),
        ]))

    def prompt_texts(self, classnames):
        return [self.settings.template.format(classname_text(c)) for c in classnames]

    def frozen_features(self) -> torch.Tensor:
        """Frozen CLIP's normalised text features (C, D) under the frozen template."""
        return self.frozen_text_features([self.settings.frozen_template])

    def class_tokens_of(self, frozen: torch.Tensor) -> torch.Tensor:
        """The class-aware tokens (C, n_ctx, d_text) of frozen class text features (C, D)."""
        return self.meta_net(frozen).reshape(frozen.shape[0], self.settings.n_ctx, self.clip.text_width)

    def compute_prompts(self) -> Prompts:
        tokens = self.class_tokens_of(self.frozen_features().to(self.ctx.dtype))
        depths = [self.ctx] + [None] * (self.settings.layer - 1) + [tokens]
        return Prompts(text=depths, vision=[])

    def training_step(self, images, labels):
        image_features, text_features = self.features(images)
        logits = self.clip_logits(image_features, text_features)
        # their torch.nn.CosineSimilarity(dim=1, eps=1e-07) of the normalised learned and frozen features
        kg = 1.0 - F.cosine_similarity(text_features, self.frozen_features(), dim=1, eps=1e-7).mean()
        ce = F.cross_entropy(logits.float(), labels)
        return {"logits": logits, "loss": ce + self.settings.weight * kg, "terms": {"ce": ce.detach(), "kg": kg.detach()}}
