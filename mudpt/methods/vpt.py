"""VPT-deep: independent visual prompts at every depth; fixed text template."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

from mudpt.methods import register_method
from mudpt.methods.base import PromptMethod, Prompts, resolve_depth
from mudpt.methods.config import MethodConfig, option


@dataclass
class VPTConfig(MethodConfig):
    """VPT's options."""

    n_ctx: int = option(8, "visual prompt tokens per depth", min=1)
    depth: Optional[int] = option(None, "prompt depth J (default 12, capped at the tower's blocks)", min=1)

    def resolve(self, clip):
        return self.resolved(depth=resolve_depth(self.depth, 12, clip.vision_layers, "depth", "vpt", clip.name,
                                                 "vision"))


@register_method("vpt")
class VPT(PromptMethod):
    """Deep visual prompt tuning (Jia et al., 2022) on CLIP's image tower; the text side is the
    fixed template ``"a photo of a {c}."`` (so its features are cached even in training)."""

    Config = VPTConfig
    label = "VPT"
    report_order = 100
    published_presets = "vpt/vit_b16_c2_ep5_batch4_4"
    uses_vision_prompts = True

    def build(self):
        self.prompt_prefix = "a photo of a"
        self.vision_prompts = nn.ParameterList(
            [self.normal_parameter(self.settings.n_ctx, self.clip.vision_width) for _ in range(self.settings.depth)])

    def text_learned_tensors(self):
        return []

    def compute_prompts(self) -> Prompts:
        return Prompts(text=[], vision=list(self.vision_prompts))
