"""The shipped world-tiny checkpoint (size, loading, zero-shot accuracy on a fixed set) and a
shortened ``mudpt demo`` end to end through the engine."""

import json

import numpy as np
import pytest
import torch

from mudpt.world import datasets as D
from mudpt.world import model as M
from mudpt.world import pretrain as P

# Measured on the shipped weights (docs/WORLD.md: 20.3% shape, 20.3% colour x shape on this set;
# chance 12.5% and 1.6%); thresholds sit a few points below. NOTE: below issue 5's bar (45% / 40%),
# see docs/WORLD.md "Status".
SHIPPED_MIN_SHAPE = 17.0
SHIPPED_MIN_COLOUR_SHAPE = 16.0


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_shipped_weights_are_small_and_load_as_a_backbone():
    assert M.SHIPPED_WEIGHTS.is_file(), "world-tiny.safetensors must ship inside the package"
    assert M.SHIPPED_WEIGHTS.stat().st_size <= 8 * 1024 * 1024
    recipe = json.loads(M.SHIPPED_RECIPE.read_text())
    assert recipe["steps_done"] == recipe["steps"] and recipe["kept_token_rows"] < 2000
    import mudpt

    clip = mudpt.load_clip("world-tiny")
    assert clip.name == "world-tiny" and clip.image_size == 48 and clip.is_vit
    assert clip.model.token_embedding.weight.shape == (49408, 128)
    assert not any(p.requires_grad for p in clip.model.parameters())


def test_shipped_zero_shot_accuracy_on_a_fixed_set(one_thread):
    """Shape and colour x shape zero-shot on 256 fixed single-object scenes (the pretraining
    monitor set), with the default template."""
    model, _ = M.load_world_model()
    result = P.zero_shot_monitor(model, M.world_tokenizer(), *P.monitor_set())
    assert result["shape/photo"] >= SHIPPED_MIN_SHAPE, result
    assert result["colour_shape/photo"] >= SHIPPED_MIN_COLOUR_SHAPE, result
    # Not saturated: there is something left for prompt tuning to do.
    assert result["colour_shape/photo"] < 90 and result["shape/photo"] < 90


def test_pretrained_path_loads_the_same_weights(tmp_path):
    import shutil

    import mudpt

    shutil.copy(M.SHIPPED_WEIGHTS, tmp_path / "world-tiny.safetensors")
    shutil.copy(M.SHIPPED_RECIPE, tmp_path / "world-tiny.json")
    a = mudpt.load_clip("world-tiny")
    b = mudpt.load_clip("world-tiny", pretrained=str(tmp_path / "world-tiny.safetensors"))
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, one_thread):
    from mudpt.world.demo import DemoSettings, format_table, run_demo

    root = tmp_path / "world"
    D.generate_all(root, scale="small", names=["world_source", "world_source_foggy"], progress=False)
    settings = DemoSettings.quick(root=str(root), shifts=("world_source_foggy",))
    lines = []
    summary = run_demo(tmp_path / "demo", settings, progress=False, log=lines.append)
    rows = {r["method"]: r for r in summary["rows"]}
    assert list(rows) == ["zsclip", "coop", "mudpt"]
    for row in rows.values():
        for key in ("base", "new", "hm"):
            assert 0.0 <= row[key] <= 100.0
        assert row["hm"] == pytest.approx(2 * row["base"] * row["new"] / (row["base"] + row["new"]))
        assert set(row["shifted"]) == {"world_source_foggy"}
    assert rows["zsclip"]["trainable_parameters"] == 0 and rows["mudpt"]["trainable_parameters"] > 0
    # Zero-shot on the base classes: far above chance (1/32).
    assert rows["zsclip"]["base"] > 3 * 100 / 32
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 5000
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert [r["method"] for r in saved["rows"]] == ["zsclip", "coop", "mudpt"]
    table = format_table(summary["rows"], settings)
    assert "mudpt" in table and "HM" in table and any("HM" in line for line in lines)


def test_demo_cli_is_registered():
    from mudpt.cli import build_parser

    args = build_parser().parse_args(["demo", "--quick", "--out", "x"])
    assert args.quick and args.out == "x" and callable(args.func)
    args = build_parser().parse_args(["world", "pretrain", "--out", "o", "--steps", "3"])
    assert args.steps == 3


def test_harmonic_mean():
    from mudpt.world.demo import harmonic_mean

    assert harmonic_mean(80.0, 60.0) == pytest.approx(68.571428, rel=1e-5)
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert np.isclose(harmonic_mean(50.0, 50.0), 50.0)
