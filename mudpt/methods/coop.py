"""CoOp: learned context vectors in front of (or around) the class name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from mudpt.core import towers
from mudpt.core.errors import ConfigError
from mudpt.methods import register_method
from mudpt.methods.base import PromptMethod, Prompts, classname_text, phrase_token_ids
from mudpt.methods.config import MethodConfig, option

DEFAULT_N_CTX = 16


@dataclass
class CoOpConfig(MethodConfig):
    """CoOp's options."""

    n_ctx: Optional[int] = option(None, f"context vectors (default {DEFAULT_N_CTX}; with ctx_init the phrase's "
                                        "token count)", min=1)
    ctx_init: Optional[str] = option(None, "phrase initialising the context, e.g. 'a photo of a'")
    class_token_position: Literal["end", "middle", "front"] = option("end", "where the class name goes")
    csc: bool = option(False, "class-specific context (one context per class)")

    def resolve(self, clip):
        if not self.ctx_init:
            return self.resolved(n_ctx=self.n_ctx or DEFAULT_N_CTX)
        n_words = len(phrase_token_ids(clip, classname_text(self.ctx_init).strip()))
        if n_words == 0:
            raise ConfigError(f"coop: ctx_init={self.ctx_init!r} has no tokens", field="method_options.ctx_init")
        if self.n_ctx is not None and self.n_ctx != n_words:
            raise ConfigError(
                f"coop: n_ctx={self.n_ctx} conflicts with ctx_init={self.ctx_init!r}, which has {n_words} "
                "tokens (with ctx_init, n_ctx is the phrase's token count); leave n_ctx out",
                field="method_options.n_ctx")
        return self.resolved(n_ctx=n_words)


@register_method("coop")
class CoOp(PromptMethod):
    """CoOp (Zhou et al., 2022). ``n_ctx`` shared (or class-specific, ``csc=True``) context
    vectors; the class token at the ``end`` (default), ``middle`` or ``front``. With
    ``ctx_init`` the context is initialised from the phrase, ``n_ctx`` becomes the phrase's
    token count and the prompt before training is exactly ``"{ctx_init} {class}."``."""

    Config = CoOpConfig
    label = "CoOp"
    report_order = 30
    frozen_image_tower = True
    # CoOp's few-shot scripts train 50 epochs for 1-2 shots, 100 for 4-8 and 200 for 16
    published_presets = {"fewshot": {None: "coop/vit_b16_ep50", 2: "coop/vit_b16_ep50", 8: "coop/vit_b16_ep100",
                                     16: "coop/vit_b16"},
                         "base2new": "coop/vit_b16_ep50_ctxv1", "xd": "coop/vit_b16_ep50"}

    def build(self):
        s = self.settings
        ctx, self.prompt_prefix = self.context_init(s.n_ctx, s.ctx_init)
        if s.csc:
            n_classes = len(self.classnames)
            if s.ctx_init:
                ctx = ctx.unsqueeze(0).repeat(n_classes, 1, 1)
            else:
                ctx = torch.empty(n_classes, s.n_ctx, self.clip.text_width)
                nn.init.normal_(ctx, std=0.02)
            # row i of a class-specific context belongs to this class, whatever order or subset
            # of the classes is scored later (the learned-state files store them)
            self.fitted_classnames = list(self.classnames)
        self.ctx = nn.Parameter(ctx)

    #: class-specific contexts (csc): the class of each row of ``ctx``
    fitted_classnames: list = []

    def check_classnames(self, classnames):
        if not (self.settings.csc and self.fitted_classnames):
            return
        known = set(self.fitted_classnames)
        unknown = [name for name in classnames if name not in known]
        if unknown:
            raise ConfigError(
                f"{self.method_name} with class-specific context (csc=True) learned one context per class for "
                f"{len(self.fitted_classnames)} classes ({', '.join(self.fitted_classnames[:3])}, ...); it scores "
                f"those, in any order, or a subset of them; {len(unknown)} of the {len(classnames)} classes asked for "
                f"are not among them ({', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''})")

    def on_classnames_changed(self):
        # Number of tokens of every class name (for the middle/front layouts).
        name_tokens = self.tokenize([classname_text(c) for c in self.classnames])
        layout = self.clip.text_layout
        self._name_lengths = (layout.end_positions(name_tokens) - layout.prompt_start).tolist()
        self._context_rows = None
        if self.settings.csc and self.fitted_classnames and self.classnames != self.fitted_classnames:
            index = {name: i for i, name in enumerate(self.fitted_classnames)}
            self._context_rows = [index[name] for name in self.classnames]

    def context(self) -> torch.Tensor:
        """The learned context; class-specific rows follow the current classes by name."""
        if getattr(self, "_context_rows", None) is None:
            return self.ctx
        return self.ctx[torch.as_tensor(self._context_rows, device=self.ctx.device)]

    def compute_prompts(self) -> Prompts:
        return Prompts(text=[self.context()], vision=[])

    def encode_class_text(self, prompts: Prompts) -> torch.Tensor:
        self.text_encoder_calls += 1
        if self.settings.class_token_position == "end":
            return self.text_tower(self.class_tokens, [self.context()])
        return self.text_tower(self.class_tokens, embeddings=self._rearranged_embeddings())

    def _rearranged_embeddings(self) -> torch.Tensor:
        """Input embeddings with the class name before (front) or inside (middle) the context."""
        model, tokens = self.clip.model, self.class_tokens
        n_ctx = self.settings.n_ctx
        embedded = towers.text_token_embeddings(model, tokens)
        ctx = self.context().to(embedded.dtype)
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(len(self.classnames), -1, -1)
        start = self.clip.text_layout.prompt_start
        sot, rest = embedded[:, :start], embedded[:, start + n_ctx:]
        half = n_ctx // 2
        rows = []
        for i, length in enumerate(self._name_lengths):
            name, tail = rest[i:i + 1, :length], rest[i:i + 1, length:]
            if self.settings.class_token_position == "front":
                parts = [sot[i:i + 1], name, ctx[i:i + 1], tail]
            else:
                parts = [sot[i:i + 1], ctx[i:i + 1, :half], name, ctx[i:i + 1, half:], tail]
            rows.append(torch.cat(parts, dim=1))
        return torch.cat(rows, dim=0)
