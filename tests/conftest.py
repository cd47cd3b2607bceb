"""Fixtures shared by the test modules, and the suite's own cache.

The suite is hermetic: before anything is collected, ``$MUDPT_CACHE`` (the built-in world's
generated data, cached frozen features) points to a folder of this test session's own, created
empty and removed at the end, so a run never reads or writes the user's ``~/.cache/mudpt`` and
two runs never share one. The world's data is generated into it once, on first use (about 20 s).
``MUDPT_TEST_CACHE=DIR`` keeps the suite's cache in DIR instead, across runs (everyday work:
the data is then generated once; one subfolder per pytest-xdist worker). ``$MUDPT_DATA_ROOT`` and
``$MUDPT_PLUGINS`` are cleared.
"""

import os
import shutil
import tempfile

import pytest

import mudpt

_OWN_CACHE: list = []


def pytest_configure(config):
    worker = getattr(config, "workerinput", None)  # set in a pytest-xdist worker (-n N)
    if worker:
        # The workers share the cores: as many torch threads each as leave none waiting, and the
        # same count in the processes a test starts (a run in a subprocess equals one in-process
        # bit for bit only with the same thread count).
        import torch

        threads = max(1, (os.cpu_count() or 1) // int(worker["workercount"]))
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    chosen = os.environ.get("MUDPT_TEST_CACHE")
    if chosen:
        path = os.path.join(chosen, worker["workerid"]) if worker else chosen  # no two workers write one cache
        os.makedirs(path, exist_ok=True)
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
