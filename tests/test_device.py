"""The tests whose device matters, on ``$MUDPT_TEST_DEVICE`` (cpu here; cuda in the GPU check):
every method's forward and backward under each precision the device runs, the exact speed-ups,
the memory saver and a training run end to end."""

from __future__ import annotations

import os

import pytest
import torch

import mudpt
from mudpt.core.vocabulary import PRECISIONS
from mudpt.engine.evaluation import autocast_context, effective_precision
from mudpt.methods.base import FitContext
from test_engine_support import needed_options

CLASSES = ["golden retriever", "tabby cat", "fire truck", "tulip"]


@pytest.fixture(scope="module")
def clip(device):
    return mudpt.load_clip("test-vit-tiny", device=str(device))


def _images(device, n=4):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)


def _method(name, clip, device):
    torch.manual_seed(0)
    method = mudpt.create(name, clip, CLASSES, **needed_options(name, CLASSES)).to(device)
    method.fit(FitContext.from_tensors(method, _images(device), [0, 1, 2, 3], note=lambda text: None))
    return method


# gpu_check.sh --quick (CI's check that the script runs, on a CPU the main suite already covered)
# sets MUDPT_DEVICE_TESTS_QUICK: one method of each kind instead of the registry.
QUICK_METHODS = ["zsclip", "coop", "cocoop", "mudpt", "clip_lora", "tip_adapter", "dept_maple"]
DEVICE_METHODS = QUICK_METHODS if os.environ.get("MUDPT_DEVICE_TESTS_QUICK") else mudpt.available_methods()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", DEVICE_METHODS)
def test_every_method_trains_on_the_device_under_each_precision(clip, device, name, precision):
    used, _ = effective_precision(precision, device)
    labels = torch.tensor([0, 1, 2, 3], device=device)
    method = _method(name, clip, device).train()
    torch.manual_seed(0)  # the same dropout masks (CLIP-LoRA's) in both passes
    with torch.no_grad():
        reference = method(_images(device)).float()
    torch.manual_seed(0)
    with autocast_context(device, precision):
        out = method(_images(device), labels)
    assert out["logits"].dtype == torch.float32 and torch.isfinite(out["logits"]).all(), used
    tolerance = 1e-4 if used == "fp32" else 0.05 * float(reference.abs().max()) + 0.05
    assert (out["logits"].detach() - reference).abs().max() <= tolerance, used
    if method.num_trainable_parameters():
        out["loss"].backward()
        grads = [p.grad for _, p in method.trainable_parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), used


def test_exact_speed_ups_and_memory_saver_on_the_device(clip, device):
    images = _images(device)
    for name in ("mudpt", "cocoop", "coop"):
        method = _method(name, clip, device).eval()
        with torch.no_grad():
            fast = method(images)
            method.truncate_text, method.cls_only_last_block = False, False
            method.clear_text_cache()
            naive = method(images)
            method.truncate_text, method.cls_only_last_block = True, True
            method.text_chunk = 2
            method.clear_text_cache()
            chunked = method(images)
        assert torch.allclose(fast, naive, atol=1e-4) and torch.allclose(fast, chunked, atol=1e-4), name


def test_a_training_run_on_the_device(device, tmp_path):
    from test_engine_support import make_image_folder, tiny_config

    from mudpt.engine.trainer import train

    data = make_image_folder(tmp_path / "colours")
    result = train(tiny_config(data, tmp_path / "run", method="mudpt", device=str(device),
                               precision="bf16" if device.type == "cuda" else "fp32"), progress=False, quiet=True)
    assert result.metrics["n"] > 0 and 0 <= result.metrics["accuracy"] <= 100
    assert result.metrics["precision_used"] == ("bf16" if device.type == "cuda" else "fp32")
