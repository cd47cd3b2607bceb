"""CoOp: learned context vectors in front of (or around) the class name."""

from __future__ import annotations

import torch
from torch import nn

from mudpt import towers
from mudpt.methods import register_method
from mudpt.methods.base import Option, PromptMethod, Prompts, classname_text, is_positive_int


@register_method("coop")
class CoOp(PromptMethod):
    """CoOp (Zhou et al., 2022). ``n_ctx`` shared (or class-specific, ``csc=True``) context
    vectors; the class token at the ``end`` (default), ``middle`` or ``front``. With
    ``ctx_init`` the context is initialised from the phrase, ``n_ctx`` becomes the phrase's
    token count and the prompt before training is exactly ``"{ctx_init} {class}."``."""

    OPTIONS = {
        "n_ctx": Option(16, (int,), "number of context vectors", check=is_positive_int,
                        check_message="a positive int"),
        "ctx_init": Option(None, (str, None), "phrase initialising the context, e.g. 'a photo of a'"),
        "class_token_position": Option("end", (str,), "where the class name goes",
                                       choices=("end", "middle", "front")),
        "csc": Option(False, (bool,), "class-specific context (one context per class)"),
    }

    def finalize_options(self, options):
        if options["ctx_init"]:
            n_words = len(self.phrase_tokens(classname_text(options["ctx_init"]).strip()))
            if n_words == 0:
                raise ValueError(f"coop: ctx_init={options['ctx_init']!r} has no tokens")
            if "n_ctx" in self._explicit_options and options["n_ctx"] != n_words:
                raise ValueError(
                    f"coop: n_ctx={options['n_ctx']} conflicts with ctx_init={options['ctx_init']!r}, which "
                    f"has {n_words} tokens (with ctx_init, n_ctx is the phrase's token count); drop n_ctx"
                )
            options["n_ctx"] = n_words
        return options

    def build(self):
        n_ctx, ctx_init = self.options["n_ctx"], self.options["ctx_init"]
        ctx, self._prompt_prefix = self.context_init(n_ctx, ctx_init)
        if self.options["csc"]:
            n_classes = len(self.classnames)
            if ctx_init:
                ctx = ctx.unsqueeze(0).repeat(n_classes, 1, 1)
            else:
                ctx = torch.empty(n_classes, n_ctx, self.clip.text_width)
                nn.init.normal_(ctx, std=0.02)
        self.ctx = nn.Parameter(ctx)

    def check_classnames(self, classnames):
        if self.options["csc"] and len(classnames) != self.ctx.shape[0]:
            raise ValueError(
                f"coop with class-specific context (csc=True) learned one context per class for "
                f"{self.ctx.shape[0]} classes; it cannot serve {len(classnames)} classes"
            )

    def on_classnames_changed(self):
        # Number of tokens of every class name (for the middle/front layouts).
        name_tokens = self.tokenize([classname_text(c) for c in self.classnames])
        self._name_lengths = (towers.pool_positions(self.clip.model, name_tokens) - 1).tolist()

    def compute_prompts(self) -> Prompts:
        return Prompts(text=[self.ctx], vision=[])

    def encode_class_text(self, prompts: Prompts) -> torch.Tensor:
        self.text_encoder_calls += 1
        model, tokens = self.clip.model, self.class_tokens
        if self.options["class_token_position"] == "end":
            return towers.encode_text(model, tokens, [self.ctx], truncate=self.truncate_text)
        return towers.encode_text(model, tokens, embeddings=self._rearranged_embeddings(),
                                  truncate=self.truncate_text)

    def _rearranged_embeddings(self) -> torch.Tensor:
        """Input embeddings with the class name before (front) or inside (middle) the context."""
        model, tokens = self.clip.model, self.class_tokens
        n_ctx = self.options["n_ctx"]
        embedded = towers.text_token_embeddings(model, tokens)
        ctx = self.ctx.to(embedded.dtype)
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(len(self.classnames), -1, -1)
        sot, rest = embedded[:, :1], embedded[:, 1 + n_ctx:]
        half = n_ctx // 2
        rows = []
        for i, length in enumerate(self._name_lengths):
            name, tail = rest[i:i + 1, :length], rest[i:i + 1, length:]
            if self.options["class_token_position"] == "front":
                parts = [sot[i:i + 1], name, ctx[i:i + 1], tail]
            else:
                parts = [sot[i:i + 1], ctx[i:i + 1, :half], name, ctx[i:i + 1, half:], tail]
            rows.append(torch.cat(parts, dim=1))
        return torch.cat(rows, dim=0)
