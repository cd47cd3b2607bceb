"""The tiny CLIP: conv stem, sparse fp16 export and exact reload, truncated text encoding, the
pretraining loop (a few steps), and the shipped checkpoint's zero-shot accuracy."""

import json

import numpy as np
import pytest
import torch

from mudpt.world import model as M
from mudpt.world import pretrain as P

SMALL_ARCH = {"embed_dim": 32, "vision_width": 32, "vision_layers": 2, "vision_heads": 2, "stem_channels": [8, 16, 32],
              "text_width": 32, "text_layers": 2, "text_heads": 2}


def test_conv_stem_keeps_the_patch_grid():
    model = M.build_world_clip()
    x = torch.randn(2, 3, 48, 48)
    assert model.visual.conv1(x).shape == (2, 128, 6, 6)
    assert model.encode_image(x).shape == (2, 128)
    with pytest.raises(ValueError, match="not a multiple of grid"):
        M.build_world_clip({"grid": 7})
    with pytest.raises(ValueError, match="unknown keys"):
        M.build_world_clip({"widht": 3})


def _mean_pairwise_cosine(features):
    features = torch.nn.functional.normalize(features, dim=-1)
    similarity = features @ features.T
    return similarity[~torch.eye(len(features), dtype=torch.bool)].mean().item()


def test_normalised_stem_lets_images_differ_at_initialisation():
    images = P.images_to_tensor(P.monitor_set(n_per_class=1)[0])
    cosines = {}
    for norm in ("none", "group"):
        torch.manual_seed(0)
        model = M.build_world_clip({"stem_norm": norm}).eval()
        assert sum(isinstance(m, torch.nn.GroupNorm) for m in model.visual.conv1.modules()) == (3 if norm == "group" else 0)
        with torch.no_grad():
            cosines[norm] = _mean_pairwise_cosine(model.encode_image(images))
    # Plain stem: the positional embedding swamps the image (measured 0.99); normalised: 0.93.
    assert cosines["none"] > 0.98
    assert cosines["group"] < 0.96
    with pytest.raises(ValueError, match="norm must be"):
        M.build_world_clip({"stem_norm": "batch"})


def test_recipes_without_stem_norm_load_the_plain_stem(tmp_path):
    torch.manual_seed(0)
    plain = {**M.DEFAULT_ARCH, **SMALL_ARCH, "stem_norm": "none"}
    model = M.build_world_clip(plain)
    recipe = {"arch": {k: v for k, v in plain.items() if k != "stem_norm"}, "embedding_seed": 3}
    with torch.no_grad():
        model.token_embedding.weight.copy_(M.initial_token_embedding(49408, 32, 3))
    M.export_weights(model, recipe, tmp_path / "old.safetensors")
    loaded, _ = M.load_world_model(tmp_path / "old.safetensors")
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in loaded.modules())


def test_truncated_text_encoding_equals_the_full_pass():
    torch.manual_seed(0)
    model = M.build_world_clip(SMALL_ARCH).eval()
    tokens = M.world_tokenizer()(["a red star.", "three shapes: a small striped blue heart at the top, a cross and a disc.",
                                  "just a circle in blue."] * 3)
    with torch.no_grad():
        full = model.encode_text(tokens)
        truncated = M.encode_text_truncated(model, tokens)
        bucketed = M.encode_text_bucketed(model, tokens, buckets=3)
    assert torch.allclose(full, truncated, atol=1e-5)
    assert torch.allclose(full, bucketed, atol=1e-5)


def test_export_keeps_only_changed_rows_and_reloads_exactly(tmp_path):
    torch.manual_seed(0)
    model = M.build_world_clip(SMALL_ARCH)
    recipe = {"arch": {**M.DEFAULT_ARCH, **SMALL_ARCH}, "embedding_seed": 11}
    with torch.no_grad():
        model.token_embedding.weight.copy_(M.initial_token_embedding(49408, 32, 11))
        model.token_embedding.weight[[5, 320, 49407]] += 1.0  # "trained" rows
    written = M.export_weights(model, recipe, tmp_path / "w.safetensors")
    assert written["kept_token_rows"] == 3
    assert json.loads((tmp_path / "w.json").read_text())["kept_token_rows"] == 3
    for name in ("w.safetensors", "w.json"):  # shipped as package data: readable by everyone
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
    loaded, _ = M.load_world_model(tmp_path / "w.safetensors")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        # fp16 storage: equal to half precision; untouched embedding rows bit-exact.
        assert torch.allclose(a.float(), b.float(), atol=2e-3, rtol=1e-3), name
    assert torch.equal(loaded.token_embedding.weight[100], model.token_embedding.weight[100])


def test_missing_or_foreign_weights_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="world-tiny weights not found"):
        M.load_world_model(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(FileNotFoundError, match="no recipe"):
        M.load_world_model(tmp_path / "foreign.safetensors")


@pytest.fixture
def one_thread():
    # One thread: on a shared 2-core CI machine, 2 threads spin-wait far more than they compute.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_pretraining_steps_lower_the_loss_and_are_reproducible(tmp_path, one_thread):
    def run(folder):
        return P.pretrain(folder, steps=30, batch_size=32, lr=2e-3, warmup_steps=5, arch=SMALL_ARCH,
                          threads=None, checkpoint_minutes=100, log_every=1, log=lambda *_: None)

    recipe = run(tmp_path / "a")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert recipe["steps_done"] == 30 and (tmp_path / "a" / "world-tiny.safetensors").is_file()
    # InfoNCE starts near log(batch) and must drop within 30 steps (fresh data every step, so a
    # drop is learning, not memorising); same recipe, same weights.
    assert np.mean(losses[-5:]) < np.mean(losses[:3]) - 0.2, losses
    run(tmp_path / "b")
    a, _ = M.load_world_model(tmp_path / "a")
    b, _ = M.load_world_model(tmp_path / "b")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_second_stage_continues_from_a_checkpoint(tmp_path, one_thread):
    common = dict(batch_size=16, warmup_steps=2, arch=SMALL_ARCH, threads=None, checkpoint_minutes=100,
                  log=lambda *_: None)
    first = P.pretrain(tmp_path / "a", steps=4, **common)
    second = P.pretrain(tmp_path / "b", steps=3, seed=1, init_from=tmp_path / "a" / "checkpoint.pt", **common)
    assert second["parent"]["steps_done"] == 4 and second["parent"]["seed"] == first["seed"]
    assert second["embedding_seed"] == first["embedding_seed"]
    a, _ = M.load_world_model(tmp_path / "a")
    b, _ = M.load_world_model(tmp_path / "b")
    assert not torch.equal(a.visual.proj, b.visual.proj)  # trained further
    with pytest.raises(FileNotFoundError, match="init_from"):
        P.pretrain(tmp_path / "c", steps=1, init_from=tmp_path / "nope.pt", **common)


def test_stop_at_is_a_snapshot_of_the_longer_schedule(tmp_path, one_thread):
    common = dict(steps=6, batch_size=16, warmup_steps=2, arch=SMALL_ARCH, threads=None, checkpoint_minutes=100,
                  log=lambda *_: None)
    snapshot = P.pretrain(tmp_path / "a", stop_at=3, **common)
    assert snapshot["steps_done"] == 3 and snapshot["steps"] == 6 and snapshot["stop_at"] == 3
    with pytest.raises(ValueError, match="past stop_at"):
        P.pretrain(tmp_path / "a", stop_at=2, **common)
    P.pretrain(tmp_path / "a", **common)  # resumes the snapshot to the end of the schedule
    P.pretrain(tmp_path / "b", **common)  # the same schedule in one go
    a, _ = M.load_world_model(tmp_path / "a")
    b, _ = M.load_world_model(tmp_path / "b")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="stop_at"):
        P.pretrain(tmp_path / "c", stop_at=7, **common)


def test_pretraining_rejects_ambiguous_budgets(tmp_path):
    with pytest.raises(ValueError, match="exactly one of"):
        P.pretrain(tmp_path, minutes=1, steps=3)
    with pytest.raises(ValueError, match="exactly one of"):
        P.pretrain(tmp_path)


def test_batches_are_a_function_of_seed_and_step():
    a = P.make_batch(0, 3, 8, [0.6, 0.25, 0.15])
    b = P.make_batch(0, 3, 8, [0.6, 0.25, 0.15])
    c = P.make_batch(0, 4, 8, [0.6, 0.25, 0.15])
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and not np.array_equal(a[0], c[0])
