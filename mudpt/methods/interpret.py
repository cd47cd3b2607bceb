"""What a learned text prompt "says": the vocabulary tokens nearest to each context vector.

CoOp's ``interpret_prompt.py`` reads a learned context this way: the Euclidean distance
(``torch.cdist``) from every context vector to every row of the text tower's token-embedding
table, smallest first. :func:`interpret_prompts` does it for every depth of the text context
as the text tower receives it (:meth:`~mudpt.methods.base.PromptMethod.text_context`): depth 0
lies in the token-embedding space, where the nearest tokens are the reading CoOp reports;
deeper prompts (IVLP, MaPLe, MuDPT, PromptSRC) are inputs to later blocks, in the same width but
not the same space, so their nearest tokens are only indicative. Methods without a learned text
context (zero-shot CLIP, VPT, the feature-space baselines) give no entries, and
:func:`format_interpretation` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from mudpt.core import towers

__all__ = ["ContextVector", "format_interpretation", "interpret_prompts", "token_strings"]


@dataclass
class ContextVector:
    """One learned context vector and its nearest vocabulary tokens.

    Attributes:
        depth: the text block whose input it is (0 = the token embeddings).
        position: its index among the context vectors of that depth.
        classname: the class it belongs to for class-specific contexts (CoOp ``csc``), else None.
        nearest: ``(token, token_id, distance)``, nearest first.
        norm: the vector's L2 norm (the token embeddings' typical norm is a scale for distances).
    """

    depth: int
    position: int
    classname: Optional[str]
    nearest: list = field(default_factory=list)
    norm: float = 0.0


def token_strings(tokenizer, ids) -> list[str]:
    """Vocabulary entries of token ids: open_clip's BPE entries as CoOp prints them (``</w>``
    marks a word's end), a Hugging Face tokenizer's tokens, else the ids."""
    ids = [int(i) for i in ids]
    decoder = getattr(tokenizer, "decoder", None)
    if isinstance(decoder, dict):
        return [str(decoder.get(i, f"<{i}>")) for i in ids]
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None and hasattr(inner, "convert_ids_to_tokens"):
        return [str(t) for t in inner.convert_ids_to_tokens(ids)]
    return [f"<{i}>" for i in ids]


@torch.no_grad()
def interpret_prompts(method, topk: int = 5) -> list[ContextVector]:
    """The ``topk`` nearest vocabulary tokens of every learned text context vector of
    ``method``, depth by depth (empty for methods without a learned text context)."""
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    contexts = method.text_context()
    if not contexts:
        return []
    clip = method.clip
    table = towers.text_parts(clip.model).tower.token_embedding.weight.detach().float()
    topk = min(topk, table.shape[0])
    entries = []
    for depth, context in enumerate(contexts):
        if context is None:
            continue
        context = context.detach().float().to(table.device)
        per_class = context.dim() == 3  # class-specific contexts: (classes, n, d)
        blocks = list(context) if per_class else [context]
        for block_index, block in enumerate(blocks):
            distances = torch.cdist(block, table)
            values, indices = distances.topk(topk, dim=1, largest=False)
            for position in range(block.shape[0]):
                names = token_strings(clip.tokenizer, indices[position].tolist())
                entries.append(ContextVector(
                    depth=depth, position=position,
                    classname=method.classnames[block_index] if per_class else None,
                    nearest=[(name, int(i), float(d)) for name, i, d in
                             zip(names, indices[position].tolist(), values[position].tolist())],
                    norm=float(block[position].norm())))
    return entries


def format_interpretation(method, entries: list[ContextVector]) -> str:
    """A plain-text report of :func:`interpret_prompts`' entries."""
    if not entries:
        learns = " (what it learns lies on the image side)" if method.learned_state_dict() else ""
        return (f"{method.method_name} has no learned text context to interpret: its text tower receives "
                f"hand-crafted prompts only{learns}.")
    table_norm = float(towers.text_parts(method.clip.model).tower.token_embedding.weight.detach().float().norm(dim=1).mean())
    lines = [f"{method.method_name}: nearest vocabulary tokens of each learned text context vector "
             f"(Euclidean distance to the token-embedding table, as CoOp's interpret_prompt.py; mean token "
             f"norm {table_norm:.3f})"]
    depth = None
    for entry in entries:
        if entry.depth != depth:
            depth = entry.depth
            where = ("depth 0 (the token embeddings)" if depth == 0 else
                     f"depth {depth} (input of text block {depth}: not the embedding space, indicative only)")
            lines.append(where)
        owner = f" [{entry.classname}]" if entry.classname is not None else ""
        tokens = ", ".join(f"{name} ({distance:.4f})" for name, _, distance in entry.nearest)
        lines.append(f"  ctx {entry.position}{owner} (norm {entry.norm:.3f}): {tokens}")
    return "\n".join(lines)
