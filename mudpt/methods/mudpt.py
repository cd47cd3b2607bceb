"""MuDPT: multi-modal deep-symphysis prompt tuning (the flagship method)."""

from __future__ import annotations

from torch import nn

from mudpt.methods import register_method
from mudpt.methods.base import Option, PromptMethod, Prompts, classname_text, is_positive_int
from mudpt.methods.injection import LinearInjection, TransformerInjection

_POSITIVE_OR_NONE = dict(check=is_positive_int, check_message="a positive int or None")


@register_method("mudpt")
class MuDPT(PromptMethod):
    """Independent deep prompts in both towers (like IVLP) plus an Injection Model that fuses
    them across modalities and depths, in both directions.

    ``injection="transformer"`` (default): the paper's design; zero-initialised output
    projections make MuDPT equal IVLP (same prompts, same prefix) at initialisation.
    ``injection="linear"``: the released code's linear maps; its prompt prefix is the first
    ``n_ctx`` words of ``ctx_init`` (``"a photo {c}."`` for n=2) and its default depth is 8.
    """

    uses_vision_prompts = True
    OPTIONS = {
        "injection": Option("transformer", (str,), "injection model", choices=("transformer", "linear")),
        "n_ctx": Option(2, (int,), "prompt tokens per depth and modality", check=is_positive_int,
                        check_message="a positive int"),
        "depth": Option(None, (int, None), "prompt depth J (default 9 transformer / 8 linear, capped)",
                        **_POSITIVE_OR_NONE),
        "ctx_init": Option("a photo of a", (str, None), "phrase initialising the shallow text prompt"),
        "injection_width": Option(None, (int, None), "width d of the injection transformer (default d_t)",
                                  **_POSITIVE_OR_NONE),
        "injection_layers": Option(None, (int, None), "blocks of the injection transformer (default 1)",
                                   **_POSITIVE_OR_NONE),
        "injection_heads": Option(None, (int, None), "attention heads (default d/64, at least 1)",
                                  **_POSITIVE_OR_NONE),
    }
    _TRANSFORMER_ONLY = ("injection_width", "injection_layers", "injection_heads")

    def finalize_options(self, options):
        layers = min(self.clip.text_layers, self.clip.vision_layers)
        paper_depth = 9 if options["injection"] == "transformer" else 8
        self._resolve_depth(options, "depth", paper_depth, layers, "text and vision")
        if options["injection"] == "transformer":
            width = options["injection_width"] or self.clip.text_width
            options["injection_width"] = width
            options["injection_layers"] = options["injection_layers"] or 1
            options["injection_heads"] = options["injection_heads"] or max(width // 64, 1)
            if width % options["injection_heads"]:
                raise ValueError(
                    f"mudpt: injection_width={width} must be divisible by injection_heads="
                    f"{options['injection_heads']}"
                )
        else:
            given = [k for k in self._TRANSFORMER_ONLY if options[k] is not None]
            if given:
                raise ValueError(f"mudpt: options {given} apply only to injection='transformer'")
        return options

    def build(self):
        o, clip = self.options, self.clip
        n, depth = o["n_ctx"], o["depth"]
        ctx_init = o["ctx_init"]
        if o["injection"] == "linear" and ctx_init:
            # released code: the prefix is the first n words of the phrase ("a photo {c}.")
            ctx_init = " ".join(classname_text(ctx_init).split()[:n])
        self.text_prompts = self.deep_text_prompts(n, ctx_init, depth)
        self.vision_prompts = nn.ParameterList(
            [self.normal_parameter(n, clip.vision_width) for _ in range(depth)])
        if o["injection"] == "transformer":
            self.injection = TransformerInjection(
                clip.text_width, clip.vision_width, n, depth,
                width=o["injection_width"], layers=o["injection_layers"], heads=o["injection_heads"])
        else:
            self.injection = LinearInjection(clip.text_width, clip.vision_width)

    def compute_prompts(self) -> Prompts:
        text, vision = self.injection(list(self.text_prompts), list(self.vision_prompts))
        return Prompts(text=text, vision=vision)
