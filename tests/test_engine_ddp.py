"""Data-parallel training: 2 CPU processes (gloo, launched by torchrun) equal one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from test_engine_support import REPO, learned_tensors, make_image_folder, tiny_config

from mudpt.engine import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# MuDPT (the default objective), ProGrad (a gradient treatment: its projection must see the
# all-reduced gradients), PromptSRC (extra loss terms, epoch hooks and their state) and CLIP-LoRA
# (adapted towers; without its dropout, whose masks depend on how a batch is split), and the 2024
# baselines TCP (a regulariser against frozen text), MMA (a module shared by both towers) and DePT
# (a wrapped method and a head at another learning rate).
DDP_OPTIONS = {"mudpt": {"n_ctx": 2, "depth": 2}, "prograd": {"n_ctx": 8},
               "clip_lora": {"dropout_rate": 0.0, "position": "top3"}, "tcp": {}, "mma": {"scale": 0.1},
               "dept_maple": {"base_options": {"n_ctx": 2, "depth": 2}},  # a wrapper with a staged lr
               "dept_cocoop": {"base_options": {"n_ctx": 2}},  # ... whose head reads per-image text features
               "coprompt": {"depth": 2},  # two views per image, a description drawn per step (both ranks alike)
               "promptsrc": {"n_ctx": 2, "n_ctx_vision": 2, "depth": 2, "gpa_mean": 1.0, "gpa_std": 1.0}}


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("method", sorted(DDP_OPTIONS))
def test_two_process_gloo_ddp_equals_one_process(method, tmp_path):
    data = make_image_folder(tmp_path / "colours")
    options = DDP_OPTIONS[method]
    if method == "coprompt":  # found beside the dataset
        from test_engine_support import write_descriptions
        write_descriptions(data / "descriptions.json")
    single = train(tiny_config(data, tmp_path / "single", method=method, shots=4, epochs=2, method_options=options),
                   progress=False)

    ddp_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # the single run's own config (JSON is YAML too), in another folder
    config = tmp_path / "single.yaml"
    config.write_text((single.run_dir / "config.json").read_text())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "mudpt", "train", "--config", str(config),
           "--output", str(ddp_dir), "--quiet"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads((ddp_dir / "results.json").read_text())
    assert results["world_size"] == 2
    a, b = learned_tensors(single.run_dir), learned_tensors(ddp_dir)
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    # The test set is sharded across the two ranks and gathered: every image counted once.
    assert results["n"] == single.metrics["n"]
    assert results["accuracy"] == pytest.approx(single.metrics["accuracy"])
    # Same logged losses (reduced over ranks) as the single process, step by step.
    steps = lambda run: [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                         if r["kind"] == "step"]
    assert steps(ddp_dir) == pytest.approx(steps(single.run_dir), rel=1e-4)
    assert len(steps(ddp_dir)) == 2 * 4  # 16 images / global batch 4, 2 epochs; only rank 0 logged
    # Each global batch of 4 was split across the ranks (2 + 2), not trained twice.
    batches = [r["images"] for r in map(json.loads, (ddp_dir / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "step"]
    assert batches == [4] * 8
