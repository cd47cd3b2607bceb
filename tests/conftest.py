"""Fixtures shared by the test modules, and the suite's own cache.

The suite is hermetic: before anything is collected, ``$MUDPT_CACHE`` (the built-in world's
generated data, cached frozen features) points to a folder of this test session's own, created
empty and removed at the end, so a run never reads or writes the user's ``~/.cache/mudpt`` and
two runs never share one. The world's data is generated into it once, on first use (about 20 s).
``MUDPT_TEST_CACHE=DIR`` keeps the suite's cache in DIR instead, across runs (everyday work:
the data is then generated once). ``$MUDPT_DATA_ROOT`` and ``$MUDPT_PLUGINS`` are cleared.
"""

import os
import shutil
import tempfile

import pytest

import mudpt

_OWN_CACHE: list = []


def pytest_configure(config):
    chosen = os.environ.get("MUDPT_TEST_CACHE")
    if chosen:
        os.makedirs(chosen, exist_ok=True)
        path = chosen
    else:
        path = tempfile.mkdtemp(prefix="mudpt-test-cache-")
        _OWN_CACHE.append(path)
    os.environ["MUDPT_CACHE"] = path
    for name in ("MUDPT_DATA_ROOT", "MUDPT_PLUGINS"):
        os.environ.pop(name, None)


def pytest_unconfigure(config):
    for path in _OWN_CACHE:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def suite_cache():
    """The test session's own ``$MUDPT_CACHE`` folder."""
    from pathlib import Path

    return Path(os.environ["MUDPT_CACHE"])


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
