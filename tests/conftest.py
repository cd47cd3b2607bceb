"""Fixtures shared by the test modules."""

import pytest

import mudpt


# Module scope (not session): a module that mutates its backbone cannot leak into another.
@pytest.fixture(scope="module")
def vit():
    """The seeded tiny ViT CLIP (no download)."""
    return mudpt.load_clip("test-vit-tiny")


@pytest.fixture(scope="module")
def resnet():
    """The seeded tiny ModifiedResNet CLIP (no download)."""
    return mudpt.load_clip("test-rn-tiny")


@pytest.fixture(scope="session")
def device():
    """The device of the tests whose device matters: ``$MUDPT_TEST_DEVICE`` (default cpu; the
    GPU check, benchmarks/gpu_check.sh, sets cuda)."""
    import os

    import torch

    name = os.environ.get("MUDPT_TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail(f"MUDPT_TEST_DEVICE={name} but CUDA is not available on this machine")
    return torch.device(name)
