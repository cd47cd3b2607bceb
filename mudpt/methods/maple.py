"""MaPLe: deep text prompts; visual prompts are linear maps of the text prompts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

from mudpt.methods import register_method
from mudpt.methods.base import PromptMethod, Prompts, resolve_depth
from mudpt.methods.config import MethodConfig, option


@dataclass
class MaPLeConfig(MethodConfig):
    """MaPLe's options."""

    n_ctx: int = option(2, "prompt tokens per depth", min=1)
    depth: Optional[int] = option(None, "prompt depth J (default 9, capped at the towers' blocks)", min=1)
    ctx_init: Optional[str] = option("a photo of a", "phrase initialising the shallow text context")

    def resolve(self, clip):
        layers = min(clip.text_layers, clip.vision_layers)
        return self.resolved(depth=resolve_depth(self.depth, 9, layers, "depth", "maple", clip.name, "text and vision"))


@register_method("maple")
class MaPLe(PromptMethod):
    """Multi-modal prompt learning (Khattak et al., 2023).

    Text: shallow context ``text_prompts[0]`` from ``ctx_init`` (prefix = the whole phrase, so
    with n=2 the tokens "of a" stay fixed) and deep prompts ``text_prompts[1..J-1]``. Vision:
    ``V_i = vision_projections[i](text_prompts[i])``, one ``Linear(d_t -> d_v)`` per depth.
    """

    Config = MaPLeConfig
    label = "MaPLe"
    report_order = 120
    published_presets = {"fewshot": "maple/vit_b16_c2_ep5_batch4_2ctx", "base2new": "maple/vit_b16_c2_ep5_batch4_2ctx",
                         "xd": "maple/vit_b16_c2_ep5_batch4_2ctx_cross_datasets"}
    uses_vision_prompts = True

    def build(self):
        s = self.settings
        self.text_prompts, self.prompt_prefix = self.deep_text_prompts(s.n_ctx, s.ctx_init, s.depth)
        self.vision_projections = nn.ModuleList(
            [nn.Linear(self.clip.text_width, self.clip.vision_width) for _ in range(s.depth)])

    def text_learned_tensors(self):
        return list(self.text_prompts)

    def compute_prompts(self) -> Prompts:
        text = list(self.text_prompts)
        vision = [projection(prompt) for projection, prompt in zip(self.vision_projections, text)]
        return Prompts(text=text, vision=vision)
