"""CLIP-LoRA against an independent rewrite of the authors' computation.

The reference below follows github.com/MaxZanella/CLIP-LoRA (loralib/layers.py): every adapted
block's ``nn.MultiheadAttention`` of a copy of the backbone is replaced by separate q/k/v/o
``nn.Linear`` s cut from the packed weights, each LoRA projection computing
``W x + b + (dropout(x) @ (B A)^T) * alpha / sqrt(r)``, attention by
``F.scaled_dot_product_attention``; the copy then runs open_clip's own ``encode_text`` /
``encode_image`` (all 77 text positions, every vision token) and the authors' logits
``100 * cos``. mudpt's method runs its towers with every exact speed-up on.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mudpt
from mudpt.methods.clip_lora import block_indices

CLASSES = ["golden retriever", "tabby cat", "fire truck", "tulip", "red panda"]


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class ReferenceLoRALinear(nn.Module):
    def __init__(self, weight, bias, A, B, scaling, mask=None):
        super().__init__()
        self.weight, self.bias = weight, bias
        self.A, self.B, self.scaling, self.mask = A, B, scaling, mask

    def forward(self, x):
        original = F.linear(x, self.weight, self.bias)
        if self.A is None:
            return original
        x_in = x * self.mask if self.mask is not None else x  # the authors' dropout, made deterministic
        return original + torch.matmul(x_in, (self.B @ self.A).transpose(0, 1)) * self.scaling


class ReferenceAttention(nn.Module):
    """PlainMultiheadAttentionLoRA's computation (batch-first or sequence-first as the original)."""

    def __init__(self, mha: nn.MultiheadAttention, lora: dict, scaling: float, masks: dict):
        super().__init__()
        d = mha.embed_dim
        self.heads, self.batch_first = mha.num_heads, mha.batch_first
        w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
        self.proj = {}
        for i, name in enumerate("qkv"):
            A, B = lora.get(name, (None, None))
            self.proj[name] = ReferenceLoRALinear(w[i * d:(i + 1) * d], b[i * d:(i + 1) * d], A, B, scaling,
                                                  masks.get(name))
        A, B = lora.get("o", (None, None))
        self.proj["o"] = ReferenceLoRALinear(mha.out_proj.weight.detach(), mha.out_proj.bias.detach(), A, B, scaling,
                                             masks.get("o"))

    def forward(self, query, key, value, need_weights=False, attn_mask=None, **kwargs):
        if self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        length, batch, d = query.shape
        q, k, v = self.proj["q"](query), self.proj["k"](key), self.proj["v"](value)
        head = d // self.heads
        q, k, v = (t.view(length, batch * self.heads, head).transpose(0, 1).reshape(batch, self.heads, length, head)
                   for t in (q, k, v))
        mask = attn_mask.to(q.dtype) if attn_mask is not None else None
        out = F.scaled_dot_product_attention(q, k, v, mask)
        out = out.permute(2, 0, 1, 3).contiguous().view(batch * length, d)
        out = self.proj["o"](out).view(length, batch, d)
        return (out.transpose(0, 1) if self.batch_first else out), None


def _reference_model(method, masks=None):
    """A copy of the backbone with the method's LoRA tensors in the authors' attention modules."""
    model = copy.deepcopy(method.clip.model)
    scaling = method.settings.alpha / math.sqrt(method.settings.r)
    for tower, blocks in (("text", model.transformer.resblocks), ("vision", model.visual.transformer.resblocks)):
        adapted = method.text_lora if tower == "text" else method.vision_lora
        for index, block_lora in adapted.items():
            lora = {name: (u.A, u.B) for name, u in block_lora.updates.items()}
            block = blocks[int(index)]
            block.attn = ReferenceAttention(block.attn, lora, scaling, (masks or {}).get(tower, {}))
    return model


def _reference_logits(method, model, images):
    texts = [f"a photo of a {c}." for c in method.classnames]
    text = F.normalize(model.encode_text(method.clip.tokenizer(texts)), dim=-1)
    image = F.normalize(model.encode_image(images), dim=-1)
    return 100 * image @ text.t()


def _live(method):
    with torch.no_grad():  # B starts at zero: give it values so that the update shows
        for update in (m for m in method.modules() if hasattr(m, "B") and isinstance(m.B, nn.Parameter)):
            update.B.normal_(std=0.05)


@pytest.mark.parametrize("options", [{}, {"params": ["q", "k", "v", "o"], "r": 4, "alpha": 2.0},
                                     {"encoder": "text", "position": "half-up"},
                                     {"encoder": "vision", "position": "top3"}],
                         ids=["defaults", "qkvo-r4", "text-half-up", "vision-top3"])
def test_logits_loss_and_every_lora_gradient_equal_the_authors_computation(vit, images, options):
    torch.manual_seed(0)
    method = mudpt.create("clip_lora", vit, CLASSES, dropout_rate=0.0, **options)
    _live(method)
    labels = torch.tensor([0, 3, 4])
    method.train()
    ours = method(images, labels)
    ours["loss"].backward()
    grads = {n: p.grad.clone() for n, p in method.trainable_parameters()}
    method.zero_grad(set_to_none=True)

    reference = _reference_logits(method, _reference_model(method), images)
    loss = F.cross_entropy(reference, labels)
    loss.backward()
    assert torch.allclose(ours["logits"], reference, atol=1e-4)
    assert torch.allclose(ours["loss"], loss, atol=1e-5)
    theirs = {n: p.grad for n, p in method.trainable_parameters()}
    assert set(grads) == set(theirs) and grads
    for name in grads:
        assert torch.allclose(grads[name], theirs[name], atol=1e-5, rtol=1e-4), name
    method.eval()
    with torch.no_grad():  # evaluation: cached text features, every speed-up
        assert torch.allclose(method(images), reference.detach(), atol=1e-4)


def test_the_dropout_is_on_each_lora_branch_input_only(vit, images):
    """With a fixed mask per projection in place of the dropout (the same on both sides), the
    training forward equals the reference: the mask reaches the LoRA branch, not W x."""
    torch.manual_seed(0)
    method = mudpt.create("clip_lora", vit, CLASSES, dropout_rate=0.5, position="top3").train()
    _live(method)
    generator = torch.Generator().manual_seed(1)
    masks = {"text": {}, "vision": {}}
    for tower, adapted in (("text", method.text_lora), ("vision", method.vision_lora)):
        for block_lora in adapted.values():
            for name, update in block_lora.updates.items():
                width = update.A.shape[1]
                mask = (torch.rand(width, generator=generator) > 0.5).float() * 2.0  # inverted dropout's scale
                update.dropout = _FixedMask(mask)
                masks[tower][name] = mask
    ours = method(images, torch.tensor([0, 1, 2]))["logits"]
    # one mask per projection and block: the reference gets the same ones
    model = copy.deepcopy(method.clip.model)
    scaling = method.settings.alpha / math.sqrt(method.settings.r)
    for tower, blocks, adapted in (("text", model.transformer.resblocks, method.text_lora),
                                   ("vision", model.visual.transformer.resblocks, method.vision_lora)):
        for index, block_lora in adapted.items():
            lora = {name: (u.A, u.B) for name, u in block_lora.updates.items()}
            per = {name: u.dropout.mask for name, u in block_lora.updates.items()}
            blocks[int(index)].attn = ReferenceAttention(blocks[int(index)].attn, lora, scaling, per)
    assert torch.allclose(ours, _reference_logits(method, model, images), atol=1e-4)
    # and not on W x: without the LoRA branch (B = 0) the mask changes nothing
    with torch.no_grad():
        for block_lora in list(method.text_lora.values()) + list(method.vision_lora.values()):
            for update in block_lora.updates.values():
                update.B.zero_()
    zero_shot = mudpt.create("zsclip", vit, CLASSES, templates="a photo of a {}.")
    assert torch.allclose(method(images), 100 / zero_shot.logit_scale * zero_shot(images), atol=1e-4)


class _FixedMask(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def forward(self, x):
        return x * self.mask


def test_the_shared_text_prefix_is_off_only_while_the_lora_dropout_trains(vit, monkeypatch):
    from mudpt.core import towers

    seen = []
    real = towers.encode_text

    def spy(*args, **kwargs):
        seen.append(kwargs.get("share_prefix"))
        return real(*args, **kwargs)

    monkeypatch.setattr(towers, "encode_text", spy)
    images = torch.randn(2, 3, 32, 32)
    method = mudpt.create("clip_lora", vit, CLASSES).train()
    method(images, torch.tensor([0, 1]))
    method.eval()
    with torch.no_grad():
        method(images)
    no_dropout = mudpt.create("clip_lora", vit, CLASSES, dropout_rate=0.0).train()
    no_dropout(images, torch.tensor([0, 1]))
    assert seen == [False, True, True]


@pytest.mark.parametrize("layers,position,expected", [
    (12, "all", list(range(12))), (12, "bottom", [0, 1, 2, 3]), (12, "mid", [4, 5, 6, 7]),
    (12, "up", [8, 9, 10, 11]), (12, "half-up", [6, 7, 8, 9, 10, 11]), (12, "half-bottom", [0, 1, 2, 3, 4, 5]),
    (12, "top3", [9, 10, 11]), (24, "half-up", list(range(12, 24))), (24, "half-bottom", list(range(12))),
    (24, "all", list(range(24)))])
def test_block_positions_are_the_authors_index_tables(layers, position, expected):
    # loralib/utils.py: INDEX_POSITIONS_TEXT and INDEX_POSITIONS_VISION['ViT-B/16'] (12 blocks),
    # INDEX_POSITIONS_VISION['ViT-L/14'] (24 blocks)
    assert block_indices(position, layers) == expected


def test_parameter_count_and_init_at_vit_b16():
    clip = mudpt.load_clip("ViT-B-16")
    method = mudpt.create("clip_lora", clip, CLASSES)
    # q, k, v of 12 text blocks (width 512) and 12 vision blocks (width 768), r = 2: A (2, d) + B (d, 2)
    assert method.num_trainable_parameters() == 3 * 12 * (2 * 2 * 512) + 3 * 12 * (2 * 2 * 768) == 184_320
    update = method.text_lora["0"].updates["q"]
    assert torch.count_nonzero(update.B) == 0 and update.A.abs().max() <= 1 / math.sqrt(512) + 1e-6
    assert update.scaling == pytest.approx(1 / math.sqrt(2))  # alpha / sqrt(r), the authors' scaling


def test_the_preset_is_the_authors_recipe_with_an_iteration_budget():
    from mudpt.engine import load_config

    cfg = load_config(overrides={"method": "clip_lora", "backbone": "ViT-B-16", "shots": 4})
    assert cfg.config_name == "clip_lora/vit_b16"
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.optimizer_eps, cfg.batch_size) == ("adamw", 2e-4, 1e-2,
                                                                                            1e-8, 32)
    assert (cfg.steps_per_shot, cfg.min_lr, cfg.warmup_epochs, cfg.precision) == (500, 1e-6, 0, "fp16")
    assert cfg.total_steps(batches_per_epoch=3) == 2000  # 500 x 4 shots, whatever the epoch length
    for protocol in ("fewshot", "base2new", "xd", "dg"):
        assert load_config(overrides={"method": "clip_lora", "backbone": "ViT-B-16"},
                           protocol=protocol).config_name == "clip_lora/vit_b16"


def test_an_iteration_budget_stops_mid_epoch_with_the_cosine_to_its_floor(tmp_path):
    import json

    from test_engine_support import make_image_folder, tiny_config

    from mudpt.engine.trainer import train

    data = make_image_folder(tmp_path / "colours")  # 4 classes x 2 shots = 8 images, batch 3: 2 steps an epoch
    cfg = tiny_config(data, tmp_path / "run", method="clip_lora", batch_size=3, steps_per_shot=3, min_lr=1e-4,
                      lr=0.01, optimizer="adamw", schedule_unit="step")
    train(cfg, progress=False)
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s["kind"] == "step"]
    assert [s["global_step"] for s in steps] == list(range(1, 7))  # 3 x 2 shots, the third epoch cut short
    expected = [1e-4 + (0.01 - 1e-4) * (1 + math.cos(math.pi * t / 6)) / 2 for t in range(6)]
    assert [s["lr"] for s in steps][::2] == pytest.approx(expected[::2], rel=1e-9)  # logged: each epoch's first
    with pytest.raises(mudpt.UserError, match="steps_per_shot counts steps per shot"):
        tiny_config(data, tmp_path / "x", method="clip_lora", shots=0, steps_per_shot=3)
