"""MuDPT's Injection Model: fuses textual and visual prompts across modalities and depths.

Three variants:

* :class:`TransformerInjection` (the paper's design, default): both prompt sets are projected
  into one width-``d`` space, tagged with modality and depth embeddings, and run as a single
  ``2*n*J``-token sequence through a small pre-LN transformer; full self-attention over that
  sequence is the cross-modal (and cross-depth) fusion. Zero-initialised output projections
  translate text-derived tokens to the vision width (``T'``) and vision-derived tokens to the
  text width (``V'``), so at initialisation nothing is injected.
* :class:`LinearInjection` (the released code's ``MuDPT`` trainer): three shared linear maps.
* :class:`AttentionInjection` (the released code's ``UUMuDPT`` trainer): a light transformer
  block per modality over each depth's prompt tokens, then a projection into the other tower.

Both return ``(text_inputs, vision_inputs)``: what each tower receives at its prompt positions
at every depth.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class TransformerInjection(nn.Module):
    """Text receives ``T_i + V'_i``, vision receives ``V_i + T'_i`` at every depth ``i``."""

    def __init__(self, text_width: int, vision_width: int, n_ctx: int, depth: int,
                 width: int, layers: int = 1, heads: int = 8, mlp_ratio: float = 4.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"injection_width={width} must be divisible by injection_heads={heads}")
        self.n_ctx, self.depth = n_ctx, depth
        self.text_norm = nn.LayerNorm(text_width)
        self.text_in = nn.Linear(text_width, width)
        self.vision_norm = nn.LayerNorm(vision_width)
        self.vision_in = nn.Linear(vision_width, width)
        self.modality_embedding = nn.Parameter(torch.empty(2, width).normal_(std=0.02))
        self.depth_embedding = nn.Parameter(torch.empty(depth, width).normal_(std=0.02))
        self.blocks = nn.ModuleList([
            nn.TransformerEncoderLayer(width, heads, dim_feedforward=int(width * mlp_ratio), dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(layers)
        ])
        self.text_out = nn.Linear(width, vision_width)    # text-derived tokens -> T' (for vision)
        self.vision_out = nn.Linear(width, text_width)    # vision-derived tokens -> V' (for text)
        for layer in (self.text_out, self.vision_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, text_prompts: Sequence[torch.Tensor], vision_prompts: Sequence[torch.Tensor]):
        text = torch.stack(list(text_prompts))      # (J, n, d_t)
        vision = torch.stack(list(vision_prompts))  # (J, n, d_v)
        t = self.text_in(self.text_norm(text)) + self.modality_embedding[0]
        v = self.vision_in(self.vision_norm(vision)) + self.modality_embedding[1]
        depth_tags = self.depth_embedding.unsqueeze(1)  # (J, 1, d)
        tokens = torch.cat([t + depth_tags, v + depth_tags], dim=1)  # (J, 2n, d)
        x = tokens.reshape(1, -1, tokens.shape[-1])  # one sequence of 2*n*J tokens
        for block in self.blocks:
            x = block(x)
        x = x.reshape(self.depth, 2 * self.n_ctx, -1)
        text_to_vision = self.text_out(x[:, :self.n_ctx])     # T'_i (J, n, d_v)
        vision_to_text = self.vision_out(x[:, self.n_ctx:])   # V'_i (J, n, d_t)
        text_inputs = list((text + vision_to_text).unbind(0))
        vision_inputs = list((vision + text_to_vision).unbind(0))
        return text_inputs, vision_inputs


class LinearInjection(nn.Module):
    """The released variant: vision gets ``V_0 + shallow(T_0)`` and ``V_i + text_to_vision(T_i)``;
    text gets ``T_0`` and ``T_i + vision_to_text(V_i)`` (i >= 1). Maps are shared across depths."""

    def __init__(self, text_width: int, vision_width: int):
        super().__init__()
        self.shallow_text_to_vision = nn.Linear(text_width, vision_width)
        self.text_to_vision = nn.Linear(text_width, vision_width)
        self.vision_to_text = nn.Linear(vision_width, text_width)

    def forward(self, text_prompts: Sequence[torch.Tensor], vision_prompts: Sequence[torch.Tensor]):
        text_inputs = [text_prompts[0]]
        vision_inputs = [vision_prompts[0] + self.shallow_text_to_vision(text_prompts[0])]
        for t, v in zip(text_prompts[1:], vision_prompts[1:]):
            text_inputs.append(t + self.vision_to_text(v))
            vision_inputs.append(v + self.text_to_vision(t))
        return text_inputs, vision_inputs


class AttentionInjection(nn.Module):
    """The released ``trainers/uumudpt.py`` (``UUMuDPTPromptLearner`` with the
    ``VisionTransformer_UUMuDPT`` it feeds), wired as that code wires it:

    * text to vision: all ``J`` text prompts ``T_i`` -> LayerNorm -> one pre-LN transformer block
      of width ``d_t`` (QuickGELU, ``d_t / 64`` heads) attending over the ``n`` tokens of each
      depth (depths are the batch) -> LayerNorm -> ``Linear(d_t -> d_v)``: ``T'_i``;
    * vision to text: the deep visual prompts ``V_1 .. V_{J-1}`` only -> the same in width ``d_v``
      -> ``Linear(d_v -> embed_dim)``: ``V'_i`` (embed_dim equals ``d_t`` on every CLIP it runs on);
    * the vision tower receives ``V_i + T'_i`` at every depth, the text tower ``T_0`` and
      ``T_i + V'_i`` (``i >= 1``).
    """

    def __init__(self, text_width: int, vision_width: int, embed_dim: int):
        super().__init__()
        from open_clip.transformer import QuickGELU, ResidualAttentionBlock

        if embed_dim != text_width:
            raise ValueError(f"injection='attention' adds {embed_dim}-wide projections to {text_width}-wide text "
                             "prompts (the released code's wiring); this backbone's widths differ")
        self.text_norm_pre = nn.LayerNorm(text_width)
        self.text_block = ResidualAttentionBlock(text_width, max(text_width // 64, 1), act_layer=QuickGELU)
        self.text_norm_post = nn.LayerNorm(text_width)
        self.text_to_vision = nn.Linear(text_width, vision_width)
        self.vision_norm_pre = nn.LayerNorm(vision_width)
        self.vision_block = ResidualAttentionBlock(vision_width, max(vision_width // 64, 1), act_layer=QuickGELU)
        self.vision_norm_post = nn.LayerNorm(vision_width)
        self.vision_to_text = nn.Linear(vision_width, embed_dim)

    @staticmethod
    def _light(prompts: torch.Tensor, pre: nn.Module, block: nn.Module, post: nn.Module) -> torch.Tensor:
        # (depths, n, d): the block attends over the n tokens of each depth, depths are the batch
        return post(block(pre(prompts)))

    def forward(self, text_prompts: Sequence[torch.Tensor], vision_prompts: Sequence[torch.Tensor]):
        text, vision = torch.stack(list(text_prompts)), torch.stack(list(vision_prompts))
        t2v = self.text_to_vision(self._light(text, self.text_norm_pre, self.text_block, self.text_norm_post))
        vision_inputs = list((vision + t2v).unbind(0))
        text_inputs = [text[0]]
        if len(text) > 1:
            v2t = self.vision_to_text(self._light(vision[1:], self.vision_norm_pre, self.vision_block,
                                                  self.vision_norm_post))
            text_inputs += list((text[1:] + v2t).unbind(0))
        return text_inputs, vision_inputs
