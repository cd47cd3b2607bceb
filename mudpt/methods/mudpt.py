"""MuDPT: multi-modal deep-symphysis prompt tuning (the flagship method)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from torch import nn

from mudpt.core.errors import ConfigError
from mudpt.methods import register_method
from mudpt.methods.base import PromptMethod, Prompts, classname_text, resolve_depth
from mudpt.methods.config import MethodConfig, option
from mudpt.methods.injection import AttentionInjection, LinearInjection, TransformerInjection

_TRANSFORMER_ONLY = ("injection_width", "injection_layers", "injection_heads")


@dataclass
class MuDPTConfig(MethodConfig):
    """MuDPT's options (``injection_*`` apply to ``injection="transformer"`` only)."""

    injection: Literal["transformer", "linear", "attention"] = option(
        "transformer", "injection model: the paper's transformer, or the released code's linear or attention variant")
    n_ctx: int = option(2, "prompt tokens per depth and modality", min=1)
    depth: Optional[int] = option(None, "prompt depth J (default 9 transformer / 8 linear and attention, capped)",
                                  min=1)
    ctx_init: Optional[str] = option("a photo of a", "phrase initialising the shallow text prompt")
    injection_width: Optional[int] = option(None, "width d of the injection transformer (default d_t)", min=1)
    injection_layers: Optional[int] = option(None, "blocks of the injection transformer (default 1)", min=1)
    injection_heads: Optional[int] = option(None, "attention heads (default d/64, at least 1)", min=1)

    def check(self):
        if self.injection != "transformer":
            given = [k for k in _TRANSFORMER_ONLY if getattr(self, k) is not None]
            if given:
                raise ConfigError(f"mudpt: options {given} apply only to injection='transformer'",
                                  field=f"method_options.{given[0]}")

    def resolve(self, clip):
        layers = min(clip.text_layers, clip.vision_layers)
        paper_depth = 9 if self.injection == "transformer" else 8
        depth = resolve_depth(self.depth, paper_depth, layers, "depth", "mudpt", clip.name, "text and vision")
        if self.injection != "transformer":
            return self.resolved(depth=depth)
        width = self.injection_width or clip.text_width
        heads = self.injection_heads or max(width // 64, 1)
        if width % heads:
            raise ConfigError(f"mudpt: injection_width={width} must be divisible by injection_heads={heads}",
                              field="method_options.injection_heads")
        return self.resolved(depth=depth, injection_width=width, injection_layers=self.injection_layers or 1,
                             injection_heads=heads)


@register_method("mudpt")
class MuDPT(PromptMethod):
    """Independent deep prompts in both towers (like IVLP) plus an Injection Model that fuses
    them across modalities and depths, in both directions.

    ``injection="transformer"`` (default): the paper's design; zero-initialised output
    projections make MuDPT equal IVLP (same prompts, same prefix) at initialisation.
    ``injection="linear"`` / ``"attention"``: the released code's linear maps / light
    transformers (its ``MuDPT`` / ``UUMuDPT`` trainers); the prompt prefix is the first ``n_ctx``
    words of ``ctx_init`` (``"a photo {c}."`` for n=2) and the default depth 8.
    """

    Config = MuDPTConfig
    label = "MuDPT"
    report_order = 140
    published_presets = {"fewshot": "mudpt/vit_b16_ep10", "base2new": "mudpt/vit_b16_ep5", "xd": "mudpt/vit_b16_ep5"}
    uses_vision_prompts = True

    def build(self):
        s, clip = self.settings, self.clip
        ctx_init = s.ctx_init
        if s.injection != "transformer" and ctx_init:
            # released code: the prefix is the first n words of the phrase ("a photo {c}.")
            ctx_init = " ".join(classname_text(ctx_init).split()[:s.n_ctx])
        self.text_prompts, self.prompt_prefix = self.deep_text_prompts(s.n_ctx, ctx_init, s.depth)
        self.vision_prompts = nn.ParameterList(
            [self.normal_parameter(s.n_ctx, clip.vision_width) for _ in range(s.depth)])
        if s.injection == "transformer":
            self.injection = TransformerInjection(
                clip.text_width, clip.vision_width, s.n_ctx, s.depth,
                width=s.injection_width, layers=s.injection_layers, heads=s.injection_heads)
        elif s.injection == "linear":
            self.injection = LinearInjection(clip.text_width, clip.vision_width)
        else:
            try:
                self.injection = AttentionInjection(clip.text_width, clip.vision_width, clip.embed_dim)
            except ValueError as error:
                raise ConfigError(f"mudpt: {error}", field="method_options.injection") from None

    def compute_prompts(self) -> Prompts:
        text, vision = self.injection(list(self.text_prompts), list(self.vision_prompts))
        return Prompts(text=text, vision=vision)
