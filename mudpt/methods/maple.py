"""MaPLe: deep text prompts; visual prompts are linear maps of the text prompts."""

from __future__ import annotations

from torch import nn

from mudpt.methods import register_method
from mudpt.methods.base import Option, PromptMethod, Prompts, is_positive_int


@register_method("maple")
class MaPLe(PromptMethod):
    """Multi-modal prompt learning (Khattak et al., 2023).

    Text: shallow context ``text_prompts[0]`` from ``ctx_init`` (prefix = the whole phrase, so
    with n=2 the tokens "of a" stay fixed) and deep prompts ``text_prompts[1..J-1]``. Vision:
    ``V_i = vision_projections[i](text_prompts[i])``, one ``Linear(d_t -> d_v)`` per depth.
    """

    uses_vision_prompts = True
    OPTIONS = {
        "n_ctx": Option(2, (int,), "prompt tokens per depth", check=is_positive_int,
                        check_message="a positive int"),
        "depth": Option(None, (int, None), "prompt depth J (default 9, capped at the towers' blocks)",
                        check=is_positive_int, check_message="a positive int or None"),
        "ctx_init": Option("a photo of a", (str, None), "phrase initialising the shallow text context"),
    }

    def finalize_options(self, options):
        layers = min(self.clip.text_layers, self.clip.vision_layers)
        self._resolve_depth(options, "depth", 9, layers, "text and vision")
        return options

    def build(self):
        o = self.options
        self.text_prompts = self.deep_text_prompts(o["n_ctx"], o["ctx_init"], o["depth"])
        self.vision_projections = nn.ModuleList(
            [nn.Linear(self.clip.text_width, self.clip.vision_width) for _ in range(o["depth"])])

    def _text_learned_tensors(self):
        return list(self.text_prompts)

    def compute_prompts(self) -> Prompts:
        text = list(self.text_prompts)
        vision = [projection(prompt) for projection, prompt in zip(self.vision_projections, text)]
        return Prompts(text=text, vision=vision)
