"""MMA (Yang et al., CVPR 2024): the Multi-Modal Adapter, as the authors' code computes it
(github.com/ZjjConan/Multi-Modal-Adapter: ``trainers/mmadapter.py`` ``AdapterLearner``,
``CustomCLIP.forward``; ``clip/model.py`` ``ModifiedResidualAttentionBlock.forward``;
``clip/gsl.py``; ``configs/trainers/MultiModalAdapter/vit_b16_ep5*.yaml``):

* the class prompt is the fixed ``"a photo of a {class}."`` (their ``TEXT_CTX_INIT``); nothing
  is learned in the token space;
* blocks ``start .. end`` (counted from 1, their ``layer_index``; 5 .. 12 of ViT-B/16) of both
  towers get an adapter whose output is added to the block's output:
  ``x_out = x + attn(ln_1(x)) + mlp(ln_2(...)) + s * up(shared(down(ln_1(x))))`` with ``down`` =
  Linear(width, dim) + ReLU per tower, ``shared`` = Linear(dim, dim) + ReLU, one per block index
  and *the same module in both towers* (the shared projection between the modalities), ``up`` =
  Linear(dim, width) per tower, ``dim`` 32 and the scale ``s`` 0.001; every Linear starts from
  Kaiming-normal weights (fan_out, ReLU) and zero biases;
* their gradient-scale layers: the adapter reads ``x`` through a layer that multiplies the
  gradient passing back by ``s`` and writes through one that multiplies it by ``1/s``, so the
  block input gets the true gradient and the adapter's weights get ``1/s`` times theirs;
* logits ``exp(logit_scale) * cos(image, text)``, cross-entropy.

Their recipe (the presets): SGD lr 0.0015 with Dassl's momentum 0.9 and weight decay 5e-4, no
warm-up, cosine over 5 epochs, batch 16 (128 for ImageNet, their ``vit_b16_ep5_imnet``), amp.
Where mudpt differs (docs/METHODS.md, "MMA"): their block index 0 (an adapter on the input
embeddings, not used by any of their configs) is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from mudpt.core import towers
from mudpt.methods import register_method
from mudpt.methods.base import PromptMethod, Prompts, classname_text
from mudpt.methods.config import MethodConfig, option


class _GradientScale(torch.autograd.Function):
    """Identity forward; the gradient passing back is multiplied by ``scale`` (their
    ``GradientScaleLayer``)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * ctx.scale, None


def gradient_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    return _GradientScale.apply(x, scale)


def _kaiming(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
    return module


class TowerAdapter(nn.Module):
    """One tower's down (Linear + ReLU) and up projections at one block (their
    ``nn.Sequential(down=..., up=...)``; the state-dict keys are theirs)."""

    def __init__(self, width: int, dim: int):
        super().__init__()
        self.down = nn.Sequential(nn.Linear(width, dim), nn.ReLU())
        self.up = nn.Linear(dim, width)
        _kaiming(self)


class AdaptedBlock:
    """A block adapter for ``core/towers.py``: the residual term of one tower at one block."""

    def __init__(self, tower: TowerAdapter, shared: nn.Module, scale: float):
        self.tower, self.shared, self.scale = tower, shared, scale

    def residual(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        y = towers.input_norm(block)(gradient_scale(x, self.scale))
        y = self.tower.up(self.shared(self.tower.down(y))) * self.scale
        return gradient_scale(y, 1.0 / self.scale)

    def parameters(self):
        yield from self.tower.parameters()
        yield from self.shared.parameters()


@dataclass
class MMAConfig(MethodConfig):
    """MMA's options (their ``TRAINER.MMADAPTER`` keys)."""

    start: Optional[int] = option(None, "first adapted block, counted from 1 (default: the top two thirds of the "
                                        "blocks, the authors' 5 of ViT-B/16's 12)", min=1)
    end: Optional[int] = option(None, "last adapted block, counted from 1 (default: the last block)", min=1)
    dim: int = option(32, "the adapters' bottleneck width, which the shared projection maps", min=1)
    scale: float = option(0.001, "the scale of the adapters' output (and the inverse scale of their gradient)",
                          check=lambda s: s > 0, expected="a positive number")
    template: str = option("a photo of a {}.", "the fixed class prompt", check=lambda t: t.count("{}") == 1,
                           expected="a string with exactly one '{}'")

    def resolve(self, clip):
        layers = min(clip.text_layers, clip.vision_layers)
        end = self.end if self.end is not None else layers
        start = self.start if self.start is not None else max(1, layers - round(layers * 8 / 12) + 1)
        if end > layers:
            raise self.field_error("end", end, f"a block of both towers (at most {layers} on this backbone)",
                                   "the last adapted block")
        if start > end:
            raise self.field_error("start", start, f"a block at most the last adapted one ({end})",
                                   "the first adapted block")
        return self.resolved(start=start, end=end)


@register_method("mma")
class MMA(PromptMethod):
    """Multi-modal adapters in the higher blocks of both towers, sharing a projection."""

    Config = MMAConfig
    label = "MMA"
    report_order = 87
    uses_vision_prompts = True
    published_presets = {"fewshot": "mma/vit_b16_ep5", "base2new": "mma/vit_b16_ep5", "xd": "mma/vit_b16_ep5_imnet"}

    def build(self):
        s = self.settings
        model = self.clip.model
        text_width, vision_width = self.clip.text_width, self.clip.vision_width
        indices = [str(i) for i in range(s.start, s.end + 1)]
        self.text_adapter = nn.ModuleDict({i: TowerAdapter(text_width, s.dim) for i in indices})
        self.visual_adapter = nn.ModuleDict({i: TowerAdapter(vision_width, s.dim) for i in indices})
        self.shared_adapter = nn.ModuleDict({i: _kaiming(nn.Sequential(nn.Linear(s.dim, s.dim), nn.ReLU()))
                                             for i in indices})

    def _adapters(self, tower: nn.ModuleDict) -> dict:
        # their layer_index i (from 1) is block i - 1
        return {int(i) - 1: AdaptedBlock(tower[i], self.shared_adapter[i], self.settings.scale) for i in tower}

    def prompt_texts(self, classnames):
        return [self.settings.template.format(classname_text(c)) for c in classnames]

    def text_learned_tensors(self) -> list:
        return list(self.text_adapter.parameters()) + list(self.shared_adapter.parameters())

    def encode_class_text(self, prompts: Prompts) -> torch.Tensor:
        self.text_encoder_calls += 1
        return self.text_tower(self.class_tokens, (), adapters=self._adapters(self.text_adapter))

    def encode_images(self, images: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        return towers.encode_image(self.clip.model, images, cls_only_last_block=self.cls_only_last_block,
                                   adapters=self._adapters(self.visual_adapter))
