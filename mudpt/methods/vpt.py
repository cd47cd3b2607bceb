"""VPT-deep: independent visual prompts at every depth; fixed text template."""

from __future__ import annotations

from torch import nn

from mudpt.methods import register_method
from mudpt.methods.base import Option, PromptMethod, Prompts, is_positive_int


@register_method("vpt")
class VPT(PromptMethod):
    """Deep visual prompt tuning (Jia et al., 2022) on CLIP's image tower; the text side is the
    fixed template ``"a photo of a {c}."`` (so its features are cached even in training)."""

    uses_vision_prompts = True
    OPTIONS = {
        "n_ctx": Option(8, (int,), "visual prompt tokens per depth", check=is_positive_int,
                        check_message="a positive int"),
        "depth": Option(None, (int, None), "prompt depth J (default 12, capped at the tower's blocks)",
                        check=is_positive_int, check_message="a positive int or None"),
    }

    def finalize_options(self, options):
        self._resolve_depth(options, "depth", 12, self.clip.vision_layers, "vision")
        return options

    def build(self):
        self._prompt_prefix = "a photo of a"
        n, depth = self.options["n_ctx"], self.options["depth"]
        self.vision_prompts = nn.ParameterList(
            [self.normal_parameter(n, self.clip.vision_width) for _ in range(depth)])

    def _text_learned_tensors(self):
        return []

    def compute_prompts(self) -> Prompts:
        return Prompts(text=[], vision=list(self.vision_prompts))
