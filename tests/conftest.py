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
