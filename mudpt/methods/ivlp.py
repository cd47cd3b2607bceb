"""IVLP: independent deep prompts in both towers."""

from __future__ import annotations

from torch import nn

from mudpt.methods import register_method
from mudpt.methods.base import Option, PromptMethod, Prompts, is_positive_int

_POSITIVE = dict(check=is_positive_int, check_message="a positive int")
_POSITIVE_OR_NONE = dict(check=is_positive_int, check_message="a positive int or None")


@register_method("ivlp")
class IVLP(PromptMethod):
    """Independent vision-language prompting (Khattak et al., 2023's baseline).

    Text prompts ``text_prompts[i]`` (n x d_t) and visual prompts ``vision_prompts[i]``
    (n x d_v) at depths ``0 .. J-1``, unconnected. ``text_prompts[0]`` is initialised from
    ``ctx_init`` and the prompt prefix is the whole phrase (its later tokens stay fixed), the
    rest from N(0, 0.02).
    """

    uses_vision_prompts = True
    OPTIONS = {
        "n_ctx": Option(2, (int,), "prompt tokens per depth (text)", **_POSITIVE),
        "depth": Option(None, (int, None), "prompt depth J of the text tower (default 12, capped)",
                        **_POSITIVE_OR_NONE),
        "ctx_init": Option("a photo of a", (str, None), "phrase initialising the shallow text prompt"),
        "n_ctx_vision": Option(None, (int, None), "prompt tokens per depth (vision); default n_ctx",
                               **_POSITIVE_OR_NONE),
        "depth_vision": Option(None, (int, None), "prompt depth of the vision tower; default = depth",
                               **_POSITIVE_OR_NONE),
    }

    def finalize_options(self, options):
        self._resolve_depth(options, "depth", 12, self.clip.text_layers, "text")
        if options["n_ctx_vision"] is None:
            options["n_ctx_vision"] = options["n_ctx"]
        if options["depth_vision"] is None:
            options["depth_vision"] = min(options["depth"], self.clip.vision_layers)
        self._resolve_depth(options, "depth_vision", options["depth_vision"], self.clip.vision_layers, "vision")
        return options

    def build(self):
        o = self.options
        self.text_prompts = self.deep_text_prompts(o["n_ctx"], o["ctx_init"], o["depth"])
        self.vision_prompts = nn.ParameterList(
            [self.normal_parameter(o["n_ctx_vision"], self.clip.vision_width) for _ in range(o["depth_vision"])])

    def _text_learned_tensors(self):
        return list(self.text_prompts)

    def compute_prompts(self) -> Prompts:
        return Prompts(text=list(self.text_prompts), vision=list(self.vision_prompts))
