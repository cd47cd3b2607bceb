"""IVLP: independent deep prompts in both towers (or the text tower only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from torch import nn

from mudpt.core.errors import ConfigError
from mudpt.methods import register_method
from mudpt.methods.base import PromptMethod, Prompts, resolve_depth
from mudpt.methods.config import MethodConfig, option


@dataclass
class IVLPConfig(MethodConfig):
    """IVLP's options. ``n_ctx_vision=0`` (with ``depth_vision`` left out or 0) is deep
    language prompting: prompts in the text tower only."""

    #: the depth a config that gives none gets (capped at the tower's blocks)
    PAPER_DEPTH: ClassVar[int] = 12

    n_ctx: int = option(2, "prompt tokens per depth (text)", min=1)
    depth: Optional[int] = option(None, "prompt depth J of the text tower (default 12, capped)", min=1)
    ctx_init: Optional[str] = option("a photo of a", "phrase initialising the shallow text prompt")
    n_ctx_vision: Optional[int] = option(None, "prompt tokens per depth (vision); default n_ctx; 0 = none", min=0)
    depth_vision: Optional[int] = option(None, "prompt depth of the vision tower; default = depth (0 with "
                                               "n_ctx_vision=0)", min=0)

    def check(self):
        if (self.n_ctx_vision == 0) != (self.depth_vision == 0) and self.depth_vision is not None:
            raise ConfigError(
                f"{self.method_name}: n_ctx_vision={self.n_ctx_vision} and depth_vision={self.depth_vision}: vision prompts "
                "need both > 0, and none means both 0 (deep language prompting)", field="method_options.depth_vision")

    def resolve(self, clip):
        name = self.method_name
        depth = resolve_depth(self.depth, self.PAPER_DEPTH, clip.text_layers, "depth", name, clip.name, "text")
        n_vision = self.n_ctx if self.n_ctx_vision is None else self.n_ctx_vision
        if n_vision == 0:
            return self.resolved(depth=depth, n_ctx_vision=0, depth_vision=0)
        depth_vision = resolve_depth(self.depth_vision, min(depth, clip.vision_layers), clip.vision_layers,
                                     "depth_vision", name, clip.name, "vision")
        return self.resolved(depth=depth, n_ctx_vision=n_vision, depth_vision=depth_vision)


@register_method("ivlp")
class IVLP(PromptMethod):
    """Independent vision-language prompting (Khattak et al., 2023's baseline).

    Text prompts ``text_prompts[i]`` (n x d_t) and visual prompts ``vision_prompts[i]``
    (n x d_v) at depths ``0 .. J-1``, unconnected. ``text_prompts[0]`` is initialised from
    ``ctx_init`` and the prompt prefix is the whole phrase (its later tokens stay fixed), the
    rest from N(0, 0.02). Without vision prompts (``n_ctx_vision=0``) the image tower is CLIP's.
    """

    Config = IVLPConfig
    label = "IVLP"
    report_order = 110
    published_presets = "ivlp/vit_b16_c2_ep5_batch4_2+2ctx"
    uses_vision_prompts = True

    @classmethod
    def requires_vit(cls, config: IVLPConfig) -> bool:
        return config.n_ctx_vision != 0

    @classmethod
    def uses_frozen_image_tower(cls, config: IVLPConfig) -> bool:
        return config.n_ctx_vision == 0  # deep language prompting

    def build(self):
        s = self.settings
        self.text_prompts, self.prompt_prefix = self.deep_text_prompts(s.n_ctx, s.ctx_init, s.depth)
        self.vision_prompts = nn.ParameterList(
            [self.normal_parameter(s.n_ctx_vision, self.clip.vision_width) for _ in range(s.depth_vision)])

    def text_learned_tensors(self):
        return list(self.text_prompts)

    def compute_prompts(self) -> Prompts:
        return Prompts(text=list(self.text_prompts), vision=list(self.vision_prompts))
