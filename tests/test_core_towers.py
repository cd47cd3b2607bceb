"""Prompted towers: equivalence with open_clip, exact truncation, prompt placement."""

import pytest
import torch

from mudpt.core import towers

CAPTIONS = ["a photo of a dog.", "a cat", "an extremely long caption about a big red fire truck on a road",
            "x"]


def _images(clip, batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, clip.image_size, clip.image_size, generator=generator)


@torch.no_grad()
def test_no_prompts_reproduce_encode_text_and_encode_image(vit, resnet):
    for clip in (vit, resnet):
        tokens = clip.tokenizer(CAPTIONS)
        expected = clip.model.encode_text(tokens)
        assert torch.allclose(towers.encode_text(clip.model, tokens), expected, atol=1e-5)
        assert torch.allclose(towers.encode_text(clip.model, tokens, truncate=False), expected, atol=1e-5)
        images = _images(clip)
        assert torch.allclose(towers.encode_image(clip.model, images), clip.model.encode_image(images), atol=1e-5)


@torch.no_grad()
def test_truncated_text_equals_full_length_with_deep_prompts(vit):
    tokens = vit.tokenizer(CAPTIONS)
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randn(2, 64, generator=generator) for _ in range(3)]
    full = towers.encode_text(vit.model, tokens, prompts, truncate=False)
    truncated = towers.encode_text(vit.model, tokens, prompts, truncate=True)
    assert torch.allclose(truncated, full, atol=1e-5)
    # the prompts do act on the features
    assert (towers.encode_text(vit.model, tokens) - full).abs().max() > 1e-3


@torch.no_grad()
def test_truncation_really_shortens_the_sequence(vit, monkeypatch):
    seen = []
    block = vit.model.transformer.resblocks[0]
    original = block.forward

    def spy(x, *args, **kwargs):
        seen.append(x.shape[1])
        return original(x, *args, **kwargs)

    monkeypatch.setattr(block, "forward", spy)
    tokens = vit.tokenizer(["a cat", "a dog"])  # SOT a cat EOT -> 4 positions
    towers.encode_text(vit.model, tokens, share_prefix=False)
    towers.encode_text(vit.model, tokens, truncate=False)
    assert seen == [4, 77]


@torch.no_grad()
def test_text_prompts_replace_positions_after_sot(vit):
    """A shallow prompt equal to the word embeddings it replaces changes nothing."""
    tokens = vit.tokenizer(["a photo of a dog."])
    words = vit.model.token_embedding(tokens[0, 1:3])
    assert torch.allclose(towers.encode_text(vit.model, tokens, [words]), vit.model.encode_text(tokens), atol=1e-5)
    other = words.flip(0)
    assert (towers.encode_text(vit.model, tokens, [other]) - vit.model.encode_text(tokens)).abs().max() > 1e-4


@torch.no_grad()
def test_per_sample_prompts_match_shared_prompts(vit):
    images = _images(vit)
    generator = torch.Generator().manual_seed(2)
    shared = [torch.randn(2, 64, generator=generator) for _ in range(3)]
    per_image = [p.unsqueeze(0).expand(3, -1, -1).clone() for p in shared]
    a = towers.encode_image(vit.model, images, shared)
    b = towers.encode_image(vit.model, images, per_image)
    assert torch.allclose(a, b, atol=1e-6)
    assert (a - towers.encode_image(vit.model, images)).abs().max() > 1e-4
    # only sample 0 gets a different prompt -> only its feature changes
    per_image[1] = per_image[1].clone()
    per_image[1][0] += torch.randn(2, 64, generator=generator)  # not a constant shift: LN removes those
    c = towers.encode_image(vit.model, images, per_image)
    assert (c[0] - a[0]).abs().max() > 1e-4 and torch.allclose(c[1:], a[1:], atol=1e-6)


@torch.no_grad()
def test_deep_vision_prompt_replaces_and_is_not_pooled(vit):
    images = _images(vit)
    generator = torch.Generator().manual_seed(3)
    p0, p1 = torch.randn(2, 64, generator=generator), torch.randn(2, 64, generator=generator)
    base = towers.encode_image(vit.model, images, [p0, None])
    deeper = towers.encode_image(vit.model, images, [p0, p1])
    assert (base - deeper).abs().max() > 1e-4
    # a prompt at the last block's input still reaches CLS through that block's attention,
    # but a prompt at depth > layers is rejected.
    with pytest.raises(ValueError, match="only 3 blocks"):
        towers.encode_image(vit.model, images, [p0] * 4)


def test_batch_first_false_transformers(vit):
    """open_clip transformers may run sequence-first; the towers must handle both layouts."""
    import copy

    clip = copy.deepcopy(vit)
    for transformer in (clip.model.transformer, clip.model.visual.transformer):
        transformer.batch_first = False
        for block in transformer.resblocks:
            block.attn.batch_first = False
    images = _images(vit)
    generator = torch.Generator().manual_seed(4)
    text_prompts = [torch.randn(2, 64, generator=generator) for _ in range(3)]
    vision_prompts = [torch.randn(3, 2, 64, generator=generator) for _ in range(3)]
    # the second set shares a prefix, so the shared-prefix path runs on it
    for tokens in (vit.tokenizer(CAPTIONS), vit.tokenizer(["a photo of a dog.", "a photo of a fire truck."])):
        with torch.no_grad():
            assert torch.allclose(towers.encode_text(clip.model, tokens), clip.model.encode_text(tokens), atol=1e-5)
            assert torch.allclose(towers.encode_text(clip.model, tokens, text_prompts),
                                  towers.encode_text(vit.model, tokens, text_prompts, truncate=False), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(towers.encode_image(clip.model, images), clip.model.encode_image(images), atol=1e-5)
        assert torch.allclose(towers.encode_image(clip.model, images, vision_prompts),
                              towers.encode_image(vit.model, images, vision_prompts), atol=1e-5)


def test_vision_prompts_on_resnet_are_a_clear_error(resnet):
    with pytest.raises(ValueError, match="ViT image tower"):
        towers.encode_image(resnet.model, _images(resnet, 1), [torch.zeros(2, 64)])


@torch.no_grad()
def test_shared_prefix_computation_is_exact(vit, monkeypatch):
    """Class prompts share SOT + prompt + fixed words; computing that prefix once is exact."""
    tokens = vit.tokenizer([f"X X of a {c}." for c in ("dog", "tabby cat", "big red fire truck", "tulip")])
    generator = torch.Generator().manual_seed(5)
    prompts = [torch.randn(2, 64, generator=generator) for _ in range(3)]
    length = int(tokens.argmax(-1).max()) + 1
    prefix = towers._shared_prefix_length(tokens[:, :length], prompts, None, tokens.argmax(-1), 2,
                                          vit.model.attn_mask, vit.model.transformer.resblocks)
    assert prefix == 5  # SOT, two prompt positions, "of", "a"
    full = towers.encode_text(vit.model, tokens, prompts, truncate=False)
    shared = towers.encode_text(vit.model, tokens, prompts, share_prefix=True)
    unshared = towers.encode_text(vit.model, tokens, prompts, share_prefix=False)
    assert torch.allclose(shared, full, atol=1e-5) and torch.allclose(unshared, full, atol=1e-5)
    # the shared path really runs: the standard block forward is bypassed
    calls = []
    block = vit.model.transformer.resblocks[0]
    monkeypatch.setattr(block, "forward", lambda *a, **k: calls.append(1) or block.__class__.forward(block, *a, **k))
    towers.encode_text(vit.model, tokens, prompts)
    assert calls == []
    towers.encode_text(vit.model, tokens, prompts, share_prefix=False)
    assert calls == [1]
    # per-sequence prompts (CoCoOp, class-specific context) are never shared
    per_row = [p.unsqueeze(0).expand(4, -1, -1) for p in prompts]
    assert towers._shared_prefix_length(tokens[:, :length], per_row, None, tokens.argmax(-1), 2,
                                        vit.model.attn_mask, vit.model.transformer.resblocks) == 0


def test_shared_prefix_gradients_match(vit):
    tokens = vit.tokenizer([f"a photo of a {c}." for c in ("dog", "cat", "fire truck")])
    grads = []
    for share in (True, False):
        prompts = [torch.randn(2, 64, generator=torch.Generator().manual_seed(i)).requires_grad_() for i in range(3)]
        towers.encode_text(vit.model, tokens, prompts, share_prefix=share).pow(2).sum().backward()
        grads.append([p.grad for p in prompts])
    for shared, plain in zip(*grads):
        assert torch.allclose(shared, plain, atol=1e-4)


def test_cls_only_last_vision_block_is_exact_with_gradients(vit):
    images = _images(vit)
    outputs, grads = [], []
    for cls_only in (True, False):
        prompts = [torch.randn(2, 64, generator=torch.Generator().manual_seed(i)).requires_grad_() for i in range(3)]
        features = towers.encode_image(vit.model, images, prompts, cls_only_last_block=cls_only)
        features.pow(2).sum().backward()
        outputs.append(features.detach())
        grads.append([p.grad for p in prompts])
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-4)
