"""The text tower's memory saver (class chunks under activation checkpointing): the same loss
and gradients for every method, and far fewer activations kept for the backward pass."""

from __future__ import annotations

import random

import pytest
import torch

import mudpt
from mudpt.core import towers
from mudpt.methods.base import FitContext, PromptMethod
from test_engine_support import needed_options

CLASSES = ["golden retriever", "tabby cat", "fire truck", "tulip", "red panda", "oak tree", "violin"]


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


LABELS = torch.tensor([0, 3, 6])
OPTIMISED = [name for name in mudpt.available_methods() if mudpt.methods.get_method_class(name).optimized]


def _loss_and_grads(method, images):
    random.seed(0)  # CoPrompt draws its description index with Python's random: the same one in both
    method.zero_grad(set_to_none=True)
    out = method(images, LABELS)
    out["loss"].backward()
    return out["loss"].detach(), {n: p.grad.clone() for n, p in method.trainable_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", OPTIMISED)
def test_chunked_checkpointed_text_tower_gives_the_same_loss_and_gradients(vit, images, name):
    torch.manual_seed(0)
    # a training-time dropout (CLIP-LoRA's) would draw other masks per chunk: off for this comparison
    cls = mudpt.methods.get_method_class(name)
    options = {"dropout_rate": 0.0} if "dropout_rate" in cls.Config.option_names() else {}
    method = mudpt.create(name, vit, CLASSES, **needed_options(name, CLASSES, options)).train()
    method.fit(FitContext.from_tensors(method, images, LABELS.tolist(), note=lambda text: None))
    with torch.no_grad():  # away from zero initialisations (MuDPT's output projections)
        for _, parameter in method.trainable_parameters():
            if not parameter.any():
                parameter.normal_(std=0.05)
    loss, grads = _loss_and_grads(method, images)
    method.text_chunk = 2  # 7 classes: chunks of 2, 2, 2, 1 (CoCoOp: of its 3 x 7 sequences)
    chunked_loss, chunked_grads = _loss_and_grads(method, images)
    assert torch.allclose(chunked_loss, loss, atol=1e-6)
    assert grads and sorted(chunked_grads) == sorted(grads)
    for key, grad in grads.items():
        # float rounding of other matmul shapes, relative to the gradient's scale
        assert torch.allclose(chunked_grads[key], grad, atol=1e-5 * float(grad.abs().max()), rtol=1e-4), key


def _saved_bytes(run) -> int:
    total = [0]

    def pack(tensor):
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return total[0]


def test_checkpointing_keeps_only_each_chunks_inputs_for_the_backward_pass(vit):
    tokens = vit.tokenizer([f"a photo of a {c}." for c in CLASSES * 8])  # 56 sequences
    ctx = torch.randn(4, vit.text_width, requires_grad=True)

    def plain():
        towers.encode_text(vit.model, tokens, [ctx]).sum().backward()

    def chunked():
        towers.encode_text_in_chunks(vit.model, tokens, [ctx], chunk=8).sum().backward()

    plain_bytes, chunked_bytes = _saved_bytes(plain), _saved_bytes(chunked)
    # Without checkpointing autograd keeps every block's activations of all 56 sequences; with it
    # only the chunks' inputs and outputs (the activations are recomputed chunk by chunk).
    assert chunked_bytes * 10 < plain_bytes, (plain_bytes, chunked_bytes)
    with torch.no_grad():
        assert torch.allclose(towers.encode_text_in_chunks(vit.model, tokens, [ctx], chunk=8),
                              towers.encode_text(vit.model, tokens, [ctx]), atol=1e-6)


def test_per_sequence_prompts_and_embeddings_are_split_with_the_tokens(vit):
    tokens = vit.tokenizer([f"a photo of a {c}." for c in CLASSES])
    per_sequence = torch.randn(len(CLASSES), 2, vit.text_width)
    embeddings = towers.text_token_embeddings(vit.model, tokens) + 0.01
    with torch.no_grad():
        for kwargs in ({"prompts": [per_sequence]}, {"embeddings": embeddings}):
            whole = towers.encode_text(vit.model, tokens, **kwargs)
            assert torch.allclose(towers.encode_text_in_chunks(vit.model, tokens, chunk=3, **kwargs), whole,
                                  atol=1e-6)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        towers.encode_text_in_chunks(vit.model, tokens, chunk=0)


def test_text_chunk_is_a_checked_config_field_outside_the_run_identity():
    from mudpt.core.errors import ConfigError
    from mudpt.engine.config import TrainConfig
    from mudpt.engine.identity import RunIdentity

    cfg = TrainConfig(method="coop", dataset="x", backbone="test-vit-tiny", text_chunk=100)
    plain = TrainConfig(method="coop", dataset="x", backbone="test-vit-tiny")
    assert RunIdentity.of_config(cfg) == RunIdentity.of_config(plain)
    with pytest.raises(ConfigError, match="text_chunk=0 must be an integer >= 1"):
        TrainConfig(text_chunk=0).validate()
