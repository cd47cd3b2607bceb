"""benchmarks/gpu_check.sh runs on a machine without a GPU (its CUDA parts skipped) and prints its
table: CI checks that the script a GPU session will run is not broken."""

import os
import subprocess

import pytest

from test_engine_support import REPO


@pytest.mark.slow
def test_the_gpu_check_runs_on_cpu_and_prints_its_table(tmp_path):
    env = {**os.environ, "GPU_CHECK_OUT": str(tmp_path), "PYTHON": os.sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--quick"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    table = done.stdout[done.stdout.index("| check | result | wall |"):]
    assert "| tests on cpu (tests/test_device.py) | " in table and " passed" in table
    for precision in ("fp32", "bf16", "fp16"):
        assert f"| bench_core {precision} " in table
    assert table.count("x faster vs naive") == 3 and "step ? s" not in table
    assert "2 of 2 configurations ran" in table
    assert "| torchrun, 2 GPUs | skipped (0 GPU(s) visible) |" in table
    assert "base new HM trainable: mudpt" in table
