"""Prompted forward passes of open_clip's text and image towers.

These functions drive open_clip's own modules (token/positional embeddings, transformer blocks,
final norms and projections); they do not re-implement CLIP. Prompt conventions:

* ``prompts`` is a sequence indexed by depth: ``prompts[0]`` enters the input embeddings,
  ``prompts[i]`` (``i >= 1``) *replaces* the hidden states at the prompt positions at the input
  of transformer block ``i``. ``None`` entries leave a depth alone. Each prompt is ``(n, d)``
  (shared by the batch) or ``(batch, n, d)`` (one per sequence/image).
* Text prompt positions are the ``n`` tokens right after the tokenizer's leading special
  tokens: positions ``1..n`` after CLIP's SOT (:class:`TextLayout` ``prompt_start``; 0 for a
  tokenizer that puts nothing in front, such as SigLIP's).
* Vision prompt positions are ``n`` tokens appended after the image tokens (``[CLS, patches]``,
  or a timm trunk's ``[CLS?, registers?, patches]``), after the positional embedding and before
  the pre-norm; they are dropped before pooling. Under rotary position embeddings (EVA02,
  PE-Core) they get none, as the class and register tokens get none.

The text tower is the CLIP model itself (OpenAI layout) or open_clip's ``TextTransformer``
under ``model.text`` (``CustomTextCLIP``: EVA02, SigLIP, PE-Core, ...); the image tower an
open_clip ``VisionTransformer``, or a timm ``VisionTransformer`` / ``Eva`` trunk wrapped by
open_clip's ``TimmModel`` (SigLIP's ``map`` pooling, EVA02's and PE-Core's rotary embeddings,
register tokens). Other image towers (ResNets, ConvNeXt) run prompt-free only.

The text tower runs only the first ``max_eot + 1`` positions of the batch. With a causal mask
and EOT pooling the dropped positions cannot influence the pooled feature, so this is exact
(to float rounding) and much cheaper than running all 77 positions.

Two more exact speed-ups need blocks whose computation they write out: the text positions every
class prompt shares are computed once (open_clip's standard residual block with a
packed-projection ``nn.MultiheadAttention``), and the last vision block runs for the pooled CLS
token only (that block, or timm's ``Block`` / ``EvaBlock`` with their own attention, under
class-token pooling: EVA02). :func:`fast_paths` says which apply to a model; a model whose
blocks have another layout still gives the same features, more slowly, and
:func:`warn_if_slow_path` says so once when the backbone is loaded.

**Block adapters**: ``adapters`` maps a block index to an object with either or both of
* ``update(name, x)``: a term added to that block's attention projection ``name`` (``"q"``,
  ``"k"``, ``"v"`` or ``"o"``) of ``x``, or ``None`` (CLIP-LoRA's low-rank updates). In a timm
  block it is added to the outputs of the attention's ``qkv`` (or ``q_proj``/``k_proj``/
  ``v_proj``) and ``proj`` modules;
* ``residual(block, x)``: a term added to the block's output, computed from the block's input
  ``x`` (batch-first) position by position (MMA's adapters). Being per position, it is computed
  on exactly the positions each path below keeps.
A block with an adapter is computed explicitly, as open_clip's residual block computes it, on
every path (the plain loop, the shared text prefix, the CLS-only last vision block).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CLIP_LAYOUT", "TextLayout", "encode_image", "encode_text", "encode_text_in_chunks", "fast_paths",
           "pool_positions", "text_parts", "text_token_embeddings", "warn_if_slow_path"]

Prompt = Optional[torch.Tensor]
Adapters = Optional[dict]  # block index -> an object with update(name, x) and/or residual(block, x)


def _batch_first(transformer: nn.Module) -> bool:
    return bool(getattr(transformer, "batch_first", True))


def _replace(x: torch.Tensor, prompt: torch.Tensor, start: int, batch_first: bool) -> torch.Tensor:
    """Return ``x`` with positions ``start .. start+n`` replaced by ``prompt`` (out of place,
    so autograd sees the prompt and not the overwritten activations)."""
    n = prompt.shape[-2]
    prompt = prompt.to(x.dtype)
    if batch_first:
        batch = x.shape[0]
        if prompt.dim() == 2:
            prompt = prompt.unsqueeze(0).expand(batch, -1, -1)
        _check_prompt_batch(prompt, batch)
        return torch.cat([x[:, :start], prompt, x[:, start + n:]], dim=1)
    batch = x.shape[1]
    if prompt.dim() == 2:
        prompt = prompt.unsqueeze(1).expand(-1, batch, -1)
    else:
        _check_prompt_batch(prompt, batch)
        prompt = prompt.transpose(0, 1)
    return torch.cat([x[:start], prompt, x[start + n:]], dim=0)


def _append(x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """Append prompt tokens to batch-first ``x`` (B, L, d)."""
    prompt = prompt.to(x.dtype)
    if prompt.dim() == 2:
        prompt = prompt.unsqueeze(0).expand(x.shape[0], -1, -1)
    _check_prompt_batch(prompt, x.shape[0])
    return torch.cat([x, prompt], dim=1)


def _check_prompt_batch(prompt: torch.Tensor, batch: int) -> None:
    if prompt.dim() != 3 or prompt.shape[0] != batch:
        raise ValueError(
            f"a per-sample prompt must have shape (batch={batch}, n, d), got {tuple(prompt.shape)}"
        )


def _check_depth(prompts: Sequence[Prompt], layers: int, tower: str) -> None:
    if len(prompts) > layers:
        raise ValueError(f"{len(prompts)} prompt depths given but the {tower} tower has only {layers} blocks")


@dataclass(frozen=True)
class TextLayout:
    """Where a tokenizer puts things in a token row (a fact of the backbone's tokenizer).

    Attributes:
        prompt_start: leading special tokens before the text (1: CLIP's SOT; 0: SigLIP's
            tokenizers, which put nothing in front); text prompts start there.
        end_id: the token that ends the text (CLIP's EOT, an HF tokenizer's EOS, or its pad id
            when it has no end token); ``None``: the largest id in the row (CLIP's EOT).
        pad_id: the id that fills the row after the text.
    """

    prompt_start: int = 1
    end_id: Optional[int] = None
    pad_id: int = 0

    def end_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-row index of the token that ends the text (the first ``end_id`` at or after
        ``prompt_start``; the last position when a row has none)."""
        if self.end_id is None:
            return tokens.argmax(dim=-1)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        is_end = (tokens == self.end_id) & (positions >= self.prompt_start)
        found = is_end.any(dim=-1)
        first = is_end.int().argmax(dim=-1)
        return torch.where(found, first, torch.full_like(first, tokens.shape[1] - 1))

    def text_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """The ids of one row's text, without the special tokens around it."""
        row = tokens.reshape(1, -1)
        return row[0, self.prompt_start:int(self.end_positions(row)[0])]


CLIP_LAYOUT = TextLayout()


@dataclass(frozen=True)
class _TextParts:
    """The modules of a text tower and how it pools (the CLIP model itself, or a
    ``CustomTextCLIP``'s ``model.text``): open_clip names them alike in both."""

    tower: nn.Module
    pool_type: str
    eos_id: Optional[int]


def text_parts(model: nn.Module) -> _TextParts:
    """The text tower of an open_clip ``CLIP`` or ``CustomTextCLIP`` (open_clip's
    ``TextTransformer``)."""
    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "token_embedding"):
        return _TextParts(text, getattr(text, "pool_type", "argmax"), getattr(text, "eos_id", None))
    return _TextParts(model, getattr(model, "text_pool_type", "argmax"), getattr(model, "text_eos_id", None))


def pool_positions(model: nn.Module, tokens: torch.Tensor) -> Optional[torch.Tensor]:
    """Per-sequence index of the pooled token (CLIP's EOT), or ``None`` if the model pools
    otherwise (``last``: the last of the full context)."""
    parts = text_parts(model)
    if parts.pool_type == "argmax":
        return tokens.argmax(dim=-1)
    if parts.pool_type == "eos":
        return (tokens == parts.eos_id).int().argmax(dim=-1)
    if parts.pool_type == "first":
        return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
    return None


def text_token_embeddings(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Frozen word embeddings of ``tokens`` in the text transformer's compute dtype."""
    tower = text_parts(model).tower
    return tower.token_embedding(tokens).to(tower.transformer.get_cast_dtype())


def encode_text(
    model: nn.Module,
    tokens: torch.Tensor,
    prompts: Sequence[Prompt] = (),
    embeddings: Optional[torch.Tensor] = None,
    truncate: bool = True,
    normalize: bool = False,
    share_prefix: Optional[bool] = None,
    adapters: Adapters = None,
    layout: TextLayout = CLIP_LAYOUT,
) -> torch.Tensor:
    """Text features of ``tokens`` (N, L) with prompts at positions ``start..start+n``.

    Args:
        model: open_clip ``CLIP`` or ``CustomTextCLIP`` (open_clip's ``TextTransformer``).
        tokens: token ids (N, L); they decide the pooled position and, unless ``embeddings``
            is given, the input embeddings.
        prompts: per-depth prompts (see the module docstring); ``prompts[0]`` replaces the
            word embeddings at the prompt positions.
        embeddings: precomputed input word embeddings (N, L, d) to use instead of looking up
            ``tokens`` (e.g. CoOp with the class token in front or middle).
        truncate: run only the first ``max_eot + 1`` positions (exact with a causal mask and
            a pooled position inside the text; ignored otherwise).
        normalize: L2-normalise the output.
        share_prefix: compute the leading positions that every sequence shares (SOT, shared
            prompts, fixed words of the prompt prefix) once instead of once per sequence; the
            other positions attend to them. Exact with a causal mask. ``None`` (default) =
            follow ``truncate``; only used for open_clip's standard residual blocks.
        adapters: block adapters (see the module docstring), by block index.
        layout: the tokenizer's :class:`TextLayout` (where prompts start).

    Returns:
        (N, embed_dim) text features; with no prompts, equal to ``model.encode_text(tokens)``.
    """
    parts = text_parts(model)
    tower = parts.tower
    transformer = tower.transformer
    blocks = transformer.resblocks
    prompts = list(prompts)
    _check_depth(prompts, len(blocks), "text")
    n_prompt = max((p.shape[-2] for p in prompts if p is not None), default=0)
    start = layout.prompt_start

    pool_index = pool_positions(model, tokens)
    length = tokens.shape[1]
    attn_mask = getattr(tower, "attn_mask", None)
    if truncate and pool_index is not None and attn_mask is not None and length > 0:
        length = min(length, max(int(pool_index.max()) + 1, start + n_prompt))
    if n_prompt + start > length:
        from mudpt.core.errors import ConfigError

        raise ConfigError(f"{n_prompt} text prompt tokens do not fit a context of {tokens.shape[1]} tokens",
                          field="method_options.n_ctx")

    tokens_run = tokens[:, :length]
    if embeddings is None:
        x = text_token_embeddings(model, tokens_run)
    else:
        x = embeddings[:, :length].to(transformer.get_cast_dtype())
    if prompts and prompts[0] is not None:
        x = _replace(x, prompts[0], start, batch_first=True)
    x = x + tower.positional_embedding[:length].to(x.dtype)
    mask = attn_mask[:length, :length] if attn_mask is not None else None

    batch_first = _batch_first(transformer)
    if share_prefix is None:
        share_prefix = truncate
    prefix = _shared_prefix_length(tokens_run, prompts, embeddings, pool_index, start + n_prompt, mask, blocks) \
        if share_prefix else 0
    adapters = adapters or {}
    _check_adapted_blocks(blocks, adapters, "text")
    if prefix:
        pooled = tower.ln_final(_run_with_shared_prefix(x, prompts, blocks, mask, prefix, pool_index, adapters, start))
        return _project_text(tower, pooled, normalize)

    if not batch_first:
        x = x.transpose(0, 1)
    for depth, block in enumerate(blocks):
        if 0 < depth < len(prompts) and prompts[depth] is not None:
            x = _replace(x, prompts[depth], start, batch_first)
        x = _run_block(block, x, mask, adapters.get(depth), batch_first)
    if not batch_first:
        x = x.transpose(0, 1)

    x = tower.ln_final(x)
    if pool_index is None:
        from open_clip.transformer import text_global_pool

        x = text_global_pool(x, tokens_run, parts.pool_type, eos_token_id=parts.eos_id)
    else:
        x = x[torch.arange(x.shape[0], device=x.device), pool_index]
    return _project_text(tower, x, normalize)


def encode_text_in_chunks(
    model: nn.Module,
    tokens: torch.Tensor,
    prompts: Sequence[Prompt] = (),
    embeddings: Optional[torch.Tensor] = None,
    chunk: int = 256,
    checkpoint: Optional[bool] = None,
    **kwargs,
) -> torch.Tensor:
    """:func:`encode_text` over chunks of ``chunk`` sequences, each under activation
    checkpointing when autograd records (``checkpoint=None``: then; ``True`` / ``False`` force
    it): a backward pass keeps only every chunk's inputs and output features, and recomputes the
    chunk's activations when it reaches it. Per-sequence prompts (``(N, n, d)``) and
    ``embeddings`` are split with the tokens; shared prompts go to every chunk. The same
    features and gradients as one call (each chunk computes its own shared prefix), with the
    text tower's activation memory bounded by one chunk's."""
    from torch.utils.checkpoint import checkpoint as run_checkpointed

    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    total = tokens.shape[0]
    prompts = list(prompts)
    if checkpoint is None:
        adapters = kwargs.get("adapters") or {}
        checkpoint = torch.is_grad_enabled() and (
            any(p is not None and p.requires_grad for p in prompts)
            or (embeddings is not None and embeddings.requires_grad)
            or any(p.requires_grad for adapter in adapters.values() for p in adapter.parameters()))
    if total <= chunk and not checkpoint:
        return encode_text(model, tokens, prompts, embeddings=embeddings, **kwargs)
    per_sequence = [p is not None and p.dim() == 3 and p.shape[0] == total for p in prompts]
    outputs = []
    for start in range(0, total, chunk):
        part = slice(start, min(start + chunk, total))
        part_prompts = [p[part] if split else p for p, split in zip(prompts, per_sequence)]
        part_embeddings = embeddings[part] if embeddings is not None else None

        def run(part_tokens, part_embeddings, *part_prompts):
            return encode_text(model, part_tokens, list(part_prompts), embeddings=part_embeddings, **kwargs)

        if checkpoint:
            outputs.append(run_checkpointed(run, tokens[part], part_embeddings, *part_prompts, use_reentrant=False))
        else:
            outputs.append(run(tokens[part], part_embeddings, *part_prompts))
    return torch.cat(outputs)


def _project_text(tower: nn.Module, pooled: torch.Tensor, normalize: bool) -> torch.Tensor:
    projection = tower.text_projection
    if projection is not None:
        pooled = projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection
    return F.normalize(pooled, dim=-1) if normalize else pooled


def _is_plain_block(block: nn.Module) -> bool:
    """open_clip's standard pre-LN residual block with a packed-projection attention (the
    layout the split computations below reproduce)."""
    from open_clip.transformer import ResidualAttentionBlock

    attn = getattr(block, "attn", None)
    return (
        type(block) is ResidualAttentionBlock
        and not hasattr(block, "ln_1_kv")
        and isinstance(attn, nn.MultiheadAttention)
        and attn._qkv_same_embed_dim
        and attn.bias_k is None
        and not attn.add_zero_attn
        and (attn.dropout == 0.0 or not attn.training)
    )


def _shared_prefix_length(tokens, prompts, embeddings, pool_index, prompt_end, mask, blocks) -> int:
    """Number of leading positions identical in every sequence (0 = do not share)."""
    if embeddings is not None or pool_index is None or mask is None or tokens.shape[0] < 2:
        return 0
    if any(p is not None and p.dim() == 3 for p in prompts):
        return 0  # per-sequence prompts: nothing is shared
    if not all(_is_plain_block(b) for b in blocks):
        return 0
    same = (tokens == tokens[:1]).all(dim=0)
    prefix = int(same.int().cumprod(dim=0).sum())
    prefix = min(prefix, int(pool_index.min()))  # every pooled position stays in the suffix
    # sharing pays off only when the prefix holds all prompt positions and is not trivial
    return prefix if prefix >= max(2, prompt_end) else 0


def _check_adapted_blocks(blocks, adapters: dict, tower: str) -> None:
    bad = [i for i in adapters if not (0 <= i < len(blocks)) or not _is_plain_block(blocks[i])]
    if bad:
        raise ValueError(f"block adapters need open_clip's standard residual blocks with a packed-projection "
                         f"attention; {tower} block(s) {bad} are not (or do not exist)")


def _projections(adapter):
    """The adapter's attention projections, or None when it leaves them alone."""
    return adapter if adapter is not None and hasattr(adapter, "update") else None


def _projected(adapter, name: str, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` plus the adapter's update of projection ``name``."""
    out = F.linear(x, weight, bias)
    update = adapter.update(name, x) if adapter is not None else None
    return out if update is None else out + update


def _with_residual(adapter, block: nn.Module, x_in: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
    """``x_out`` plus the adapter's residual term of the block input ``x_in`` (both batch-first)."""
    if adapter is None or not hasattr(adapter, "residual"):
        return x_out
    return x_out + adapter.residual(block, x_in)


def _run_block(block: nn.Module, x: torch.Tensor, mask, adapter, batch_first: bool) -> torch.Tensor:
    """One residual block: open_clip's own forward, or with an adapter the same computation
    written out so that the adapter's projections and residual term take part."""
    if adapter is None:
        return block(x, attn_mask=mask)
    if not batch_first:
        x = x.transpose(0, 1)
    projections = _projections(adapter)
    if projections is None:
        out = block(x, attn_mask=mask) if batch_first else block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
    else:
        hidden = block.ln_1(x)
        query, keys, values = _qkv(block.attn, hidden, adapter=projections)
        out = x + block.ls_1(_attention_output(block.attn, query, keys, values, mask, projections))
        out = out + block.ls_2(block.mlp(block.ln_2(out)))
    out = _with_residual(adapter, block, x, out)
    return out if batch_first else out.transpose(0, 1)


_PARTS = "qkv"


def _qkv(attn: nn.MultiheadAttention, hidden: torch.Tensor, parts=(0, 1, 2), adapter=None) -> list:
    """Per-head query/key/value projections (N, heads, L, head_dim) of batch-first ``hidden``
    with the module's own packed weights (plus ``adapter.update`` when given); ``parts``
    selects among q (0), k (1), v (2)."""
    width = attn.embed_dim
    out = []
    for part in parts:
        weight = attn.in_proj_weight[part * width:(part + 1) * width]
        bias = attn.in_proj_bias[part * width:(part + 1) * width] if attn.in_proj_bias is not None else None
        projected = _projected(adapter, _PARTS[part], hidden, weight, bias)
        n, length, _ = projected.shape
        out.append(projected.view(n, length, attn.num_heads, attn.head_dim).transpose(1, 2))
    return out


def _attention_output(attn: nn.MultiheadAttention, query, keys, values, mask=None, adapter=None) -> torch.Tensor:
    mask = mask.to(query.dtype) if mask is not None else None
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask)
    n, heads, length, head_dim = out.shape
    out = out.transpose(1, 2).reshape(n, length, heads * head_dim)
    return _projected(adapter, "o", out, attn.out_proj.weight, attn.out_proj.bias)


def _run_with_shared_prefix(x, prompts, blocks, mask, prefix, pool_index, adapters=None, start=1):
    """Run the text blocks computing the shared prefix once; return the pooled states (N, d).

    The prefix rows (1, P, d) attend causally to themselves. The per-sequence rows after the
    prefix attend to the prefix's keys/values (projected once) and causally to their own; they
    are grouped by pooled (EOT) position so that every sequence runs only up to its own EOT,
    and the last block computes only the EOT position. This is the computation of open_clip's
    ``ResidualAttentionBlock`` on the full sequences, split by positions (exact, causal mask).
    """
    x_prefix = x[:1, :prefix]
    ends = pool_index + 1  # each sequence needs positions < end
    groups = []
    for end in sorted(set(ends.tolist())):
        rows = (ends == end).nonzero(as_tuple=True)[0]
        groups.append((rows, end, x[rows, prefix:end]))
    last = len(blocks) - 1
    for depth, block in enumerate(blocks):
        if 0 < depth < len(prompts) and prompts[depth] is not None:
            x_prefix = _replace(x_prefix, prompts[depth], start, batch_first=True)
        attn, adapter = block.attn, (adapters or {}).get(depth)
        projections = _projections(adapter)
        q_p, k_p, v_p = _qkv(attn, block.ln_1(x_prefix), adapter=projections)
        updated = []
        for rows, end, x_rows in groups:
            h_rows = block.ln_1(x_rows)
            k_s, v_s = _qkv(attn, h_rows, parts=(1, 2), adapter=projections)
            keys = torch.cat([k_p.expand(len(rows), -1, -1, -1), k_s], dim=2)
            values = torch.cat([v_p.expand(len(rows), -1, -1, -1), v_s], dim=2)
            if depth == last:  # only the pooled (last) position is read after this block
                x_rows, h_rows = x_rows[:, -1:], h_rows[:, -1:]
            (q_s,) = _qkv(attn, h_rows, parts=(0,), adapter=projections)
            rows_mask = mask[end - x_rows.shape[1]:end, :end]
            out = x_rows + block.ls_1(_attention_output(attn, q_s, keys, values, rows_mask, projections))
            out = out + block.ls_2(block.mlp(block.ln_2(out)))
            updated.append((rows, end, _with_residual(adapter, block, x_rows, out)))
        groups = updated
        if depth < last:
            out = x_prefix + block.ls_1(_attention_output(attn, q_p, k_p, v_p, mask[:prefix, :prefix], projections))
            out = out + block.ls_2(block.mlp(block.ln_2(out)))
            x_prefix = _with_residual(adapter, block, x_prefix, out)
    order = torch.cat([rows for rows, _, _ in groups])
    pooled = torch.cat([x_rows[:, -1] for _, _, x_rows in groups])
    return pooled[torch.argsort(order)]  # back to the input order


def _last_block_cls_only(block: nn.Module, x: torch.Tensor, adapter=None) -> torch.Tensor:
    """The last vision block computed for the CLS token only (batch-first ``x``), which is
    all that CLS pooling reads; keys and values still come from every token."""
    attn, projections = block.attn, _projections(adapter)
    hidden = block.ln_1(x)
    (query,) = _qkv(attn, hidden[:, :1], parts=(0,), adapter=projections)
    keys, values = _qkv(attn, hidden, parts=(1, 2), adapter=projections)
    cls = x[:, :1] + block.ls_1(_attention_output(attn, query, keys, values, adapter=projections))
    return _with_residual(adapter, block, x[:, :1], cls + block.ls_2(block.mlp(block.ln_2(cls))))


def encode_image(
    model: nn.Module,
    images: torch.Tensor,
    prompts: Sequence[Prompt] = (),
    normalize: bool = False,
    cls_only_last_block: bool = True,
    adapters: Adapters = None,
) -> torch.Tensor:
    """Image features of ``images`` (B, 3, H, W) with vision prompts.

    ``cls_only_last_block``: with CLS-token pooling, compute the last block for the CLS token
    only (exact; the other tokens' outputs are never read). ``adapters``: block adapters (see
    the module docstring), by block index.

    ``prompts[0]`` is appended after ``[CLS, patches]`` (after the positional embedding, before
    ``ln_pre``); ``prompts[i]`` replaces those positions at the input of block ``i``. Prompt
    tokens are dropped before pooling. With no prompts this equals ``model.encode_image``; with
    a non-ViT image tower only the prompt-free path is available.
    """
    from open_clip.transformer import VisionTransformer

    visual = model.visual
    prompts = list(prompts)
    adapters = adapters or {}
    trunk = timm_trunk(visual)
    if trunk is not None:
        return _encode_timm(visual, trunk, images, prompts, adapters, normalize, cls_only_last_block)
    if not any(p is not None for p in prompts) and not adapters:
        if not isinstance(visual, VisionTransformer):
            features = visual(images)
            return F.normalize(features, dim=-1) if normalize else features
    elif not isinstance(visual, VisionTransformer):
        raise ValueError(
            f"vision prompts and block adapters need a ViT image tower; this backbone's image tower is a "
            f"{type(visual).__name__}"
        )
    blocks = visual.transformer.resblocks
    _check_depth(prompts, len(blocks), "vision")
    _check_adapted_blocks(blocks, adapters, "vision")

    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls_token = visual.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls_token, x], dim=1)
    x = x + visual.positional_embedding.to(x.dtype)
    x = visual.patch_dropout(x)
    n_image_tokens = x.shape[1]
    if prompts and prompts[0] is not None:
        x = _append(x, prompts[0])
    x = visual.ln_pre(x)

    batch_first = _batch_first(visual.transformer)
    # CLS pooling reads one token: the last block need not update the others.
    cls_only = cls_only_last_block and _pools_cls_token(visual) and _is_plain_block(blocks[-1])
    if not batch_first:
        x = x.transpose(0, 1)
    for depth, block in enumerate(blocks):
        if 0 < depth < len(prompts) and prompts[depth] is not None:
            if x.shape[1 if batch_first else 0] == n_image_tokens:
                # no shallow prompt: a deeper prompt is appended where the shallow one would be
                x = _append(x, prompts[depth]) if batch_first else _append(
                    x.transpose(0, 1), prompts[depth]).transpose(0, 1)
            else:
                x = _replace(x, prompts[depth], n_image_tokens, batch_first)
        if cls_only and depth == len(blocks) - 1:
            x = _last_block_cls_only(block, x if batch_first else x.transpose(0, 1), adapters.get(depth))
            batch_first = True
        else:
            x = _run_block(block, x, None, adapters.get(depth), batch_first)
    if not batch_first:
        x = x.transpose(0, 1)
    x = x[:, :n_image_tokens]

    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return F.normalize(pooled, dim=-1) if normalize else pooled


def timm_trunk(visual: nn.Module) -> Optional[nn.Module]:
    """The timm ViT trunk (``VisionTransformer`` or ``Eva``) of an open_clip ``TimmModel``
    image tower, or ``None`` for any other image tower."""
    trunk = getattr(visual, "trunk", None)
    if trunk is None:
        return None
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    return trunk if isinstance(trunk, (TimmViT, Eva)) else None


def _rope_with_prompts(rope: Optional[torch.Tensor], n_extra: int) -> Optional[torch.Tensor]:
    """The rotary table (sin | cos along the last axis, one row per patch) with ``n_extra``
    identity rows (sin 0, cos 1) for the prompt tokens after the patches: prompts get no
    position, as the class and register tokens get none."""
    if rope is None or n_extra == 0:
        return rope
    half = rope.shape[-1] // 2
    shape = list(rope.shape)
    shape[-2] = n_extra
    identity = torch.cat([rope.new_zeros(shape[:-1] + [half]), rope.new_ones(shape[:-1] + [rope.shape[-1] - half])], -1)
    return torch.cat([rope, identity], dim=-2)


@contextlib.contextmanager
def _timm_updates(block: nn.Module, adapter):
    """Add ``adapter.update(name, x)`` to the outputs of a timm block's attention projections
    for one call: a forward hook on each projection module :func:`projection_weights` names
    (a packed ``qkv`` gets the q, k and v updates side by side)."""
    if _projections(adapter) is None:
        yield
        return
    attn = block.attn
    separate = getattr(attn, "qkv_bias_separate", None)
    if getattr(attn, "qkv", None) is not None and getattr(attn, "q_bias", None) is not None:
        # EvaAttention's packed qkv with biases of its own (EVA01-g, EVA02-E) adds them inside
        # F.linear, not calling its qkv module, unless told to add them after it: the same sum,
        # with the module called, so that the hook sees it
        attn.qkv_bias_separate = True
    modules: dict = {}
    for name, (key, _) in projection_weights(block).items():
        modules.setdefault(key.removesuffix(".weight"), []).append(name)

    def adding(names):
        def hook(module, inputs, output):
            updates = [adapter.update(name, inputs[0]) for name in names]
            if all(u is None for u in updates):
                return output
            width = output.shape[-1] // len(names)
            return output + torch.cat([u if u is not None else output.new_zeros(output.shape[:-1] + (width,))
                                       for u in updates], dim=-1)
        return hook

    handles = [block.get_submodule(path).register_forward_hook(adding(names)) for path, names in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        if separate is not None:
            attn.qkv_bias_separate = separate


def _timm_pools_cls_token(trunk: nn.Module) -> bool:
    return (getattr(trunk, "attn_pool", None) is None and getattr(trunk, "global_pool", None) == "token"
            and getattr(trunk, "cls_token", None) is not None)


def _is_written_out_timm_block(block: nn.Module) -> bool:
    """timm 1.0's ``Block`` (ViT), ``EvaBlock`` or ``EvaBlockPostNorm`` (EVA02-E) with their own
    attention, exactly: the blocks :func:`_timm_last_block_cls_only` computes as their
    ``forward`` does."""
    from timm.models.eva import EvaAttention, EvaBlock, EvaBlockPostNorm
    from timm.models.vision_transformer import Attention, Block

    return (type(block) is Block and type(block.attn) is Attention) or \
        (type(block) in (EvaBlock, EvaBlockPostNorm) and type(block.attn) is EvaAttention)


def _timm_last_block_cls_only(block: nn.Module, x: torch.Tensor, rope: Optional[torch.Tensor]) -> torch.Tensor:
    """A timm ``Block`` / ``EvaBlock`` / ``EvaBlockPostNorm`` computed for the class token
    ``x[:, :1]`` only (what class-token pooling reads), keys and values from every token: their
    ``forward`` with one query. The projection modules are called as modules, so block
    adapters' hooks apply."""
    from timm.models.eva import EvaBlockPostNorm

    attn = block.attn
    batch, tokens, _ = x.shape
    post_norm = isinstance(block, EvaBlockPostNorm)  # norms after the attention and the MLP
    hidden = x if post_norm else block.norm1(x)
    heads = attn.num_heads

    def split(t):  # (B, N, C) -> (B, heads, N, C / heads)
        return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

    if getattr(attn, "qkv", None) is None:  # EVA02: separate q / k / v
        q, k, v = split(attn.q_proj(hidden[:, :1])), split(attn.k_proj(hidden)), split(attn.v_proj(hidden))
    else:
        if getattr(attn, "q_bias", None) is None:
            qkv = attn.qkv(hidden)
        else:  # EvaAttention's packed qkv with biases of its own
            bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
            qkv = attn.qkv(hidden) + bias if attn.qkv_bias_separate else F.linear(hidden, attn.qkv.weight, bias)
        q, k, v = qkv.reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q = q[:, :, :1]
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:  # the class token is a prefix token: no rotation of its query
        from timm.layers import apply_rot_embed_cat

        prefix = attn.num_prefix_tokens
        k = torch.cat([k[:, :, :prefix], apply_rot_embed_cat(k[:, :, prefix:], rope,
                                                              half=getattr(attn, "rotate_half", False))], 2).type_as(v)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    out = attn.norm(out.transpose(1, 2).reshape(batch, 1, -1))
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(hidden[:, :1]).sigmoid()
    out = attn.proj_drop(attn.proj(out))
    cls = x[:, :1]
    if post_norm:
        cls = cls + block.drop_path1(block.norm1(out))
        return cls + block.drop_path2(block.norm2(block.mlp(cls)))
    if hasattr(block, "ls1"):  # ViT Block
        cls = cls + block.drop_path1(block.ls1(out))
        return cls + block.drop_path2(block.ls2(block.mlp(block.norm2(cls))))
    cls = cls + block.drop_path1(out if block.gamma_1 is None else block.gamma_1 * out)
    mlp = block.mlp(block.norm2(cls))
    return cls + block.drop_path2(mlp if block.gamma_2 is None else block.gamma_2 * mlp)


def _encode_timm(visual, trunk, images, prompts, adapters, normalize, cls_only_last_block):
    """The image features of a timm ViT trunk (open_clip's ``TimmModel``) with prompts and block
    adapters: timm's own modules in the order of its ``forward_features`` and ``forward_head``
    (patch embedding, class/register tokens and positions, pre-norm, blocks, norm, pooling),
    then open_clip's head."""
    from timm.models.eva import Eva

    blocks = trunk.blocks
    _check_depth(prompts, len(blocks), "vision")
    bad = [i for i in adapters if not 0 <= i < len(blocks)]
    if bad:
        raise ValueError(f"vision block(s) {bad} do not exist (the image tower has {len(blocks)} blocks)")
    x = trunk.patch_embed(images)
    rope = None
    if isinstance(trunk, Eva):
        x, rope = trunk._pos_embed(x)
        if rope is not None and getattr(trunk, "rope_mixed", False) and any(p is not None for p in prompts):
            raise ValueError("vision prompts are not supported with timm's mixed (per-depth) rotary embeddings")
    else:
        x = trunk.patch_drop(trunk._pos_embed(x))
    n_image_tokens = x.shape[1]
    if prompts and prompts[0] is not None:
        x = _append(x, prompts[0])
    x = trunk.norm_pre(x)
    # class-token pooling reads one token: the last block need not update the others
    cls_only = cls_only_last_block and _timm_pools_cls_token(trunk) and _is_written_out_timm_block(blocks[-1])
    for depth, block in enumerate(blocks):
        if 0 < depth < len(prompts) and prompts[depth] is not None:
            x = _append(x, prompts[depth]) if x.shape[1] == n_image_tokens else \
                _replace(x, prompts[depth], n_image_tokens, batch_first=True)
        adapter = adapters.get(depth)
        block_rope = None
        if rope is not None:
            block_rope = _rope_with_prompts(rope[depth] if getattr(trunk, "rope_mixed", False) else rope,
                                            x.shape[1] - n_image_tokens)
        last_cls_only = cls_only and depth == len(blocks) - 1
        with _timm_updates(block, adapter):
            if last_cls_only:
                out = _timm_last_block_cls_only(block, x, block_rope)
            else:
                out = block(x) if block_rope is None else block(x, rope=block_rope)
        x = _with_residual(adapter, block, x[:, :1] if last_cls_only else x, out)
    x = trunk.norm(x)
    pooled = visual.head(trunk.forward_head(x[:, :n_image_tokens]))
    return F.normalize(pooled, dim=-1) if normalize else pooled


def text_blocks(model: nn.Module) -> list:
    """The text transformer's blocks."""
    return list(text_parts(model).tower.transformer.resblocks)


def vision_blocks(model: nn.Module) -> list:
    """The ViT image tower's blocks (open_clip's or a timm trunk's); empty for other towers."""
    from open_clip.transformer import VisionTransformer

    trunk = timm_trunk(model.visual)
    if trunk is not None:
        return list(trunk.blocks)
    return list(model.visual.transformer.resblocks) if isinstance(model.visual, VisionTransformer) else []


def block_prefixes(model: nn.Module) -> tuple[str, str]:
    """The state-dict prefixes of the text and vision blocks (``"<prefix>.<index>."``)."""
    text = "text.transformer.resblocks" if text_parts(model).tower is not model else "transformer.resblocks"
    vision = "visual.trunk.blocks" if timm_trunk(model.visual) is not None else "visual.transformer.resblocks"
    return text, vision


def input_norm(block: nn.Module) -> nn.Module:
    """A block's first (pre-attention) norm: open_clip's ``ln_1``, timm's ``norm1``."""
    return block.ln_1 if hasattr(block, "ln_1") else block.norm1


def projection_weights(block: nn.Module) -> dict:
    """Where a block's attention projections live in its state dict: ``{"q"|"k"|"v"|"o":
    (key under the block, rows or None)}`` (open_clip's packed ``in_proj_weight``, timm's packed
    ``qkv`` or separate ``q_proj``/``k_proj``/``v_proj``, and the output projection)."""
    attn = block.attn
    if isinstance(attn, nn.MultiheadAttention):
        width = attn.embed_dim
        return {**{name: ("attn.in_proj_weight", slice(i * width, (i + 1) * width)) for i, name in enumerate("qkv")},
                "o": ("attn.out_proj.weight", None)}
    if getattr(attn, "qkv", None) is not None:
        width = attn.qkv.weight.shape[0] // 3
        found = {name: ("attn.qkv.weight", slice(i * width, (i + 1) * width)) for i, name in enumerate("qkv")}
    else:
        found = {name: (f"attn.{name}_proj.weight", None) for name in "qkv"}
    return {**found, "o": ("attn.proj.weight", None)}


def _pools_cls_token(visual: nn.Module) -> bool:
    return getattr(visual, "attn_pool", None) is None and getattr(visual, "pool_type", None) == "tok"


def _text_truncates(parts: _TextParts) -> bool:
    """A causal mask and a pooled position inside the text: positions after it cannot matter."""
    return getattr(parts.tower, "attn_mask", None) is not None and parts.pool_type in ("argmax", "eos", "first")


def fast_paths(model: nn.Module) -> dict:
    """Which exact speed-ups apply to an open_clip CLIP or CustomTextCLIP:

    * ``text_truncation``: run the text tower up to the last pooled position only (a causal
      mask and pooling at the end token or the first token; not SigLIP's bidirectional
      ``last`` pooling, which reads every position);
    * ``text_shared_prefix``: compute the positions shared by every class prompt once (also
      needs open_clip's standard residual blocks);
    * ``vision_cls_only_last_block``: run the last vision block for the CLS token only (an
      open_clip ViT, or a timm ViT / EVA trunk, pooling its class token; not attention pooling
      or average pooling, which read every token).
    """
    parts = text_parts(model)
    trunk = timm_trunk(model.visual)
    return {
        "text_truncation": _text_truncates(parts),
        "text_shared_prefix": _text_truncates(parts) and all(_is_plain_block(b) for b in parts.tower.transformer.resblocks),
        "vision_cls_only_last_block": _pools_cls_token_by_design(model.visual) and (
            _is_plain_block(model.visual.transformer.resblocks[-1]) if trunk is None
            else _is_written_out_timm_block(trunk.blocks[-1])),
    }


def _pools_cls_token_by_design(visual: nn.Module) -> bool:
    """An open_clip ViT or a timm ViT / EVA trunk that pools its class token."""
    from open_clip.transformer import VisionTransformer

    trunk = timm_trunk(visual)
    if trunk is not None:
        return _timm_pools_cls_token(trunk)
    return isinstance(visual, VisionTransformer) and _pools_cls_token(visual)


_warned: set = set()


def warn_if_slow_path(model: nn.Module, name: str) -> None:
    """Log once per backbone name when an exact speed-up cannot be used (another open_clip
    block layout): the features are the same, only slower."""
    # a path that does not apply by design (no causal mask, no CLS pooling) is not "slow": only
    # layouts whose blocks the fast paths do not recognise are
    truncates = _text_truncates(text_parts(model))
    expected = {"text_truncation": truncates, "text_shared_prefix": truncates,
                "vision_cls_only_last_block": _pools_cls_token_by_design(model.visual)}
    off = [k for k, v in fast_paths(model).items() if not v and expected[k]]
    if off and name not in _warned:
        _warned.add(name)
        logging.getLogger(__name__).warning(
            "backbone %s: the exact speed-ups %s do not apply to its transformer blocks (a block "
            "layout this mudpt version was not written for); results are the same, training and "
            "evaluation are slower", name, ", ".join(off))
