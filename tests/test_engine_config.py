"""Engine units that need no training: configs and presets, schedule, data order, metrics, report."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import mudpt
from mudpt.core.errors import UserError
from mudpt.engine import ConfigError, TrainConfig, available_presets, compute_metrics, load_config
from mudpt.engine.config import apply_overrides, parse_set_items, read_preset
from mudpt.engine.identity import RunIdentity
from mudpt.methods import get_method_class
from mudpt.core.vocabulary import harmonic_mean
from mudpt.engine.report import report
from mudpt.engine.sweep import plan_sweep
from mudpt.engine.sampling import RankBatchSampler, epoch_batches

METHODS = mudpt.available_methods()


@pytest.mark.parametrize("method", METHODS)
def test_every_method_has_its_world_preset_and_its_published_presets(method):
    names = available_presets()
    assert f"{method}/world" in names
    for protocol in get_method_class(method).protocols():  # for every protocol and shot count it runs
        for shots in (None, 1, 2, 4, 8, 16, 32):
            assert get_method_class(method).published_preset(protocol, shots) in names, (protocol, shots)


@pytest.mark.parametrize("name", available_presets())
def test_every_preset_loads_and_builds_options_the_core_accepts(name):
    cfg = load_config(name)
    assert cfg.method == name.split("/")[0]
    # The core's typed config must accept every preset's options (names and values).
    mudpt.make_config(cfg.method, cfg.method_options)


def test_presets_inherit_the_optimiser_instead_of_repeating_it():
    """The optimiser block is written once (base/sgd_cosine) and equals TrainConfig's defaults;
    no runnable preset repeats a value of it (a preset may change one: MMA has no warm-up)."""
    import yaml
    from mudpt.engine.config import resolve_preset_path

    base = read_preset("base/sgd_cosine")
    defaults = TrainConfig()
    assert base == {k: getattr(defaults, k) for k in ("momentum", "weight_decay", "warmup_epochs", "warmup_lr")}
    for name in available_presets():
        own = yaml.safe_load(resolve_preset_path(name).read_text())
        repeated = {key for key in set(own) & set(base) if own[key] == base[key]}
        assert not repeated, f"{name} repeats {repeated}"
        assert "inherit" in own, name
    assert read_preset("mudpt/vit_b16_ep10")["momentum"] == 0.9  # reached through the chain


def test_inheritance_merges_method_options_and_detects_cycles(tmp_path):
    (tmp_path / "a.yaml").write_text(f"inherit: {tmp_path / 'b.yaml'}\nmethod: coop\nmethod_options:\n  n_ctx: 8\n")
    (tmp_path / "b.yaml").write_text("inherit: base/published\nlr: 0.1\nmethod_options:\n  csc: true\n  n_ctx: 4\n")
    cfg = load_config(str(tmp_path / "a.yaml"))
    assert cfg.lr == 0.1 and cfg.backbone == "ViT-B-16" and cfg.method_options == {"n_ctx": 8, "csc": True}
    (tmp_path / "b.yaml").write_text(f"inherit: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_config(str(tmp_path / "a.yaml"))


@pytest.mark.parametrize("method", METHODS)
def test_cli_and_api_resolve_the_same_config(method, monkeypatch):
    """The same request gives the same run from the command line and from Python."""
    from mudpt.cli import build_parser
    from mudpt.engine.commands import build_train_config

    for flags, overrides in (([], {}), (["--shots", "4", "--lr", "0.01"], {"shots": 4, "lr": 0.01}),
                             (["--backbone", "test-vit-tiny"], {"backbone": "test-vit-tiny"})):
        args = build_parser().parse_args(["train", "--method", method, "--quiet", *flags])
        from_cli = build_train_config(args)
        from_api = load_config(overrides={"method": method, **overrides})
        assert from_cli.to_dict() == from_api.to_dict()
        assert from_api.config_name == f"{method}/world"
    published = load_config(overrides={"method": method, "backbone": "ViT-B-16"})
    assert published.config_name == get_method_class(method).published_preset("fewshot")
    assert published.pretrained == "openai"  # the preset's backbone: its weights are kept


@pytest.mark.parametrize("name,expected", [
    ("mudpt/vit_b16_ep10", dict(lr=0.0025, batch_size=4, epochs=10, warmup_epochs=1, warmup_lr=1e-5)),
    ("mudpt/vit_b16_ep5", dict(lr=0.0025, batch_size=4, epochs=5)),
    ("coop/vit_b16_ep50", dict(lr=0.002, batch_size=32, epochs=50)),
    ("cocoop/vit_b16_c4_ep10_batch1_ctxv1", dict(lr=0.002, batch_size=1, epochs=10)),
    ("maple/vit_b16_c2_ep5_batch4_2ctx", dict(lr=0.0035, batch_size=4, epochs=5)),
    ("maple/vit_b16_c2_ep5_batch4_2ctx_cross_datasets", dict(lr=0.0026, epochs=2)),
    ("ivlp/vit_b16_c2_ep5_batch4_2+2ctx", dict(lr=0.0035, batch_size=4, epochs=5)),
    ("vpt/vit_b16_c2_ep5_batch4_4", dict(lr=0.0025, batch_size=4, epochs=5)),
])
def test_published_hyper_parameters(name, expected):
    cfg = load_config(name)
    for key, value in expected.items():
        assert getattr(cfg, key) == pytest.approx(value), key
    assert cfg.backbone == "ViT-B-16" and cfg.pretrained == "openai"
    assert cfg.momentum == 0.9 and cfg.weight_decay == pytest.approx(5e-4)


def test_published_prompt_shapes():
    assert load_config("mudpt/vit_b16_ep10").method_options == {
        "injection": "transformer", "n_ctx": 2, "depth": 9, "ctx_init": "a photo of a"}
    assert load_config("maple/vit_b16_c2_ep5_batch4_2ctx").method_options["depth"] == 9
    assert load_config("vpt/vit_b16_c2_ep5_batch4_4").method_options == {"n_ctx": 8, "depth": 12}
    assert load_config("coop/vit_b16_ep50").method_options["n_ctx"] == 16


def test_overrides_flat_dotted_and_from_set_strings():
    overrides = parse_set_items(["lr=0.01", "method_options.n_ctx=4", "root=none", "eval_every_epoch=true"])
    assert overrides == {"lr": 0.01, "method_options.n_ctx": 4, "root": "none", "eval_every_epoch": True}
    cfg = load_config("mudpt/vit_b16_ep10", overrides=overrides)
    assert cfg.lr == 0.01 and cfg.method_options["n_ctx"] == 4 and cfg.method_options["depth"] == 9
    assert cfg.root is None and cfg.eval_every_epoch is True
    assert load_config(None).dataset == "world_source"  # no preset, no backbone: the built-in world


def test_yaml_file_path_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("method: coop\nepochs: 3\nmethod_options:\n  n_ctx: 8\n")
    cfg = load_config(str(path), overrides={"shots": 4})
    assert (cfg.method, cfg.epochs, cfg.shots, cfg.method_options) == ("coop", 3, 4, {"n_ctx": 8})


@pytest.mark.parametrize("overrides,needle", [
    ({"lrate": 1}, "Unknown configuration key 'lrate'"),
    ({"precision": "fp64"}, "precision='fp64' must be one of 'fp32', 'bf16', 'fp16'"),
    ({"subsample": "half"}, "subsample='half' must be one of 'all', 'base', 'new'"),
    ({"epochs": 0}, "epochs=0 must be an integer >= 1"),
    ({"shots": "many"}, "shots='many' must be an integer >= 0"),
    ({"lr": float("nan")}, "lr=nan must be a finite number"),
    ({"epochs.x": 1}, "only method_options.<name> takes a dotted key"),
    ({"device": "tpu"}, "device='tpu' must be one of 'auto', 'cpu'"),
])
def test_bad_config_values_name_field_and_valid_values(overrides, needle):
    with pytest.raises(ConfigError) as info:
        load_config("coop/world", overrides=overrides)
    assert needle in str(info.value)


def test_unknown_preset_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="mudpt/vit_b16_ep10"):
        load_config("mudpt/does_not_exist")


def test_unknown_yaml_key_names_file_and_valid_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method: coop\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "learning_rate" in str(info.value) and "bad.yaml" in str(info.value) and "lr" in str(info.value)


def test_registry_checks_for_method_and_dataset():
    with pytest.raises(ConfigError, match="Valid methods: " + ", ".join(mudpt.available_methods())):
        TrainConfig(method="copo").validate(check_registries=True)
    with pytest.raises(ConfigError, match="Registered datasets: .*oxford_pets"):
        TrainConfig(dataset="oxford_pots").validate(check_registries=True)


def test_identity_ignores_paths_and_workers():  # noqa: D103
    a = TrainConfig(output_dir="a", num_workers=0, root="/x")
    b = TrainConfig(output_dir="b", num_workers=4, root="/y")
    assert RunIdentity.of_config(a) == RunIdentity.of_config(b)
    assert RunIdentity.of_config(a).diff(RunIdentity.of_config(TrainConfig(seed=2))) == {"config.seed": (1, 2)}


def test_dassl_warmup_cosine_schedule():
    from mudpt.core.schedules import warmup_cosine

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.0025)
    schedule = warmup_cosine(opt, epochs=10, warmup_epochs=1, warmup_lr=1e-5)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs[0] == 1e-5
    assert lrs[1] == pytest.approx(0.0025)  # the cosine starts at its first value after warm-up
    for epoch in range(1, 10):
        assert lrs[epoch] == pytest.approx(0.5 * 0.0025 * (1 + math.cos(math.pi * (epoch - 1) / 10)), rel=1e-12)
    # Resuming from the state dict continues the same sequence.
    again = torch.optim.SGD([param], lr=0.0025)
    resumed = warmup_cosine(again, epochs=10, warmup_epochs=1, warmup_lr=1e-5)
    opt2 = torch.optim.SGD([param], lr=0.0025)
    first = warmup_cosine(opt2, epochs=10, warmup_epochs=1, warmup_lr=1e-5)
    for _ in range(4):
        opt2.step()
        first.step()
    again.load_state_dict(opt2.state_dict())
    resumed.load_state_dict(first.state_dict())
    tail = []
    for _ in range(6):
        tail.append(again.param_groups[0]["lr"])
        again.step()
        resumed.step()
    assert tail == lrs[4:]
    no_warmup = torch.optim.SGD([param], lr=0.01)
    warmup_cosine(no_warmup, epochs=3, warmup_epochs=0, warmup_lr=1e-5)
    assert no_warmup.param_groups[0]["lr"] == 0.01


def test_epoch_batches_are_seeded_and_drop_the_last_partial_batch():
    a = epoch_batches(10, 4, seed=1, epoch=0)
    assert a == epoch_batches(10, 4, seed=1, epoch=0)
    assert len(a) == 2 and all(len(b) == 4 for b in a)
    assert a != epoch_batches(10, 4, seed=1, epoch=1)
    assert a != epoch_batches(10, 4, seed=2, epoch=0)
    assert epoch_batches(3, 4, seed=1, epoch=0)[0] != [] and len(epoch_batches(3, 4, 1, 0)) == 1


def test_rank_shares_reassemble_the_global_batches():
    single = [[i for i, _ in b] for b in RankBatchSampler(16, 4, 3, 2, rank=0, world_size=1)]
    r0 = list(RankBatchSampler(16, 4, 3, 2, rank=0, world_size=2))
    r1 = list(RankBatchSampler(16, 4, 3, 2, rank=1, world_size=2))
    assert [[i for i, _ in a] + [i for i, _ in b] for a, b in zip(r0, r1)] == single
    assert all(e == 2 for batch in r0 for _, e in batch)


def test_metrics_against_hand_computation():
    labels = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 2, 2]
    m = compute_metrics(preds, labels, num_classes=4)
    assert m["accuracy"] == pytest.approx(100 * 4 / 6)
    assert m["per_class_accuracy"][:3] == pytest.approx([100 * 2 / 3, 50.0, 100.0])
    assert m["per_class_accuracy"][3] is None
    # F1: class0 2*2/(3+2)=0.8; class1 2*1/(2+2)=0.5; class2 2*1/(1+2)=2/3; class3 absent -> skipped
    assert m["macro_f1"] == pytest.approx(100 * (0.8 + 0.5 + 2 / 3) / 3)
    assert m["n"] == 6
    with pytest.raises(ValueError, match="empty"):
        compute_metrics([], [], 3)


def test_harmonic_mean_matches_published_table():
    assert harmonic_mean(69.34, 74.22) == pytest.approx(71.70, abs=0.01)
    assert harmonic_mean(82.28, 75.14) == pytest.approx(78.55, abs=0.01)
    assert harmonic_mean(0, 0) == 0


def test_default_presets_per_backbone_protocol_and_shots():
    from mudpt.engine.config import default_preset

    assert default_preset("mudpt", "fewshot", None) == "mudpt/world"
    assert default_preset("mudpt", "fewshot", "test-vit-tiny") == "mudpt/world"
    assert default_preset("mudpt", "fewshot", "ViT-B-16") == "mudpt/vit_b16_ep10"
    assert default_preset("mudpt", "base2new", "ViT-B-16") == "mudpt/vit_b16_ep5"
    assert default_preset("maple", "xd", "ViT-B-16") == "maple/vit_b16_c2_ep5_batch4_2ctx_cross_datasets"
    assert [default_preset("coop", "fewshot", "ViT-B-16", k) for k in (1, 2, 4, 8, 16)] == [
        "coop/vit_b16_ep50", "coop/vit_b16_ep50", "coop/vit_b16_ep100", "coop/vit_b16_ep100", "coop/vit_b16"]


def test_plan_sweep_layout_and_zsclip_once(tmp_path):
    plan = plan_sweep("fewshot", ["zsclip", "coop"], ["d1", "d2"], [1, 4], [1, 2], tmp_path)
    assert len(plan) == 2 * (1 + 2 * 2)
    dirs = {str(p["run_dir"].relative_to(tmp_path)) for p in plan}
    assert "fewshot/d1/coop/shots_4/seed_2" in dirs and "fewshot/d2/zsclip/shots_0/seed_1" in dirs
    b2n = plan_sweep("base2new", ["coop"], ["d"], None, [1], tmp_path)
    assert b2n[0]["subsample"] == "base" and b2n[0]["targets"] == ["new"] and b2n[0]["shots"] == 16
    xd = plan_sweep("xd", ["coop"], ["imagenet"], None, [1], tmp_path)
    assert "caltech101" in xd[0]["targets"] and "imagenet" not in xd[0]["targets"]
    dg = plan_sweep("dg", ["coop"], ["imagenet"], None, [1], tmp_path, targets=["imagenet_a"])
    assert dg[0]["targets"] == ["imagenet_a"]
    with pytest.raises(ConfigError, match="Valid protocols: fewshot, base2new, xd, dg"):
        plan_sweep("zeroshot", ["coop"], ["d"], None, [1], tmp_path)


def _fake_run(root, rel, method, dataset, shots, seed, acc, subsample="all", evaluations=()):
    run = root / rel
    (run / "evaluations").mkdir(parents=True)
    cfg = TrainConfig(method=method, dataset=dataset, shots=shots, seed=seed, subsample=subsample,
                      backbone="test-vit-tiny").to_dict()
    (run / "results.json").write_text(json.dumps({"accuracy": acc, "macro_f1": acc - 1, "config": cfg}))
    for i, (ds, sub, a) in enumerate(evaluations):
        (run / "evaluations" / f"e{i}.json").write_text(json.dumps({"dataset": ds, "subsample": sub, "accuracy": a}))


def test_report_aggregates_mean_std_average_and_hm(tmp_path):
    for seed, acc in ((1, 50.0), (2, 60.0)):
        _fake_run(tmp_path, f"fewshot/dA/coop/shots_2/seed_{seed}", "coop", "dA", 2, seed, acc)
        _fake_run(tmp_path, f"fewshot/dB/coop/shots_2/seed_{seed}", "coop", "dB", 2, seed, acc + 20)
        _fake_run(tmp_path, f"base2new/dA/mudpt/shots_16/seed_{seed}", "mudpt", "dA", 16, seed, 80.0 + seed,
                  subsample="base", evaluations=[("dA", "new", 60.0 + seed)])
        _fake_run(tmp_path, f"xd/src/coop/shots_16/seed_{seed}", "coop", "src", 16, seed, 70.0,
                  evaluations=[("t1", "all", 40.0 + seed), ("t2", "all", 30.0)])
    _fake_run(tmp_path, "fewshot/dA/zsclip/shots_0/seed_1", "zsclip", "dA", 0, 1, 45.0)
    paths = report(tmp_path)
    md = paths["markdown"].read_text()
    assert "| dA | coop | – | 55.00 ± 7.07 |" in md  # columns 0-shot (zsclip) and 2-shot
    assert "| dA | zsclip | 45.00 | – |" in md
    assert "| **average** | coop | – | 65.00 |" in md
    assert "| **average** | zsclip | – | – |" in md  # zero-shot ran on dA only: no average over dA and dB
    assert "An average is over all 2 datasets" in md
    hm = harmonic_mean(81.5, 61.5)
    assert f"| dA | mudpt | 16 | 81.50 ± 0.71 | 61.50 ± 0.71 | {hm:.2f} |" in md
    assert "| src | coop | 16 | 70.00 ± 0.00 | 41.50 ± 0.71 | 30.00 ± 0.00 | 35.75 |" in md
    rows = list(csv.DictReader(paths["csv"].open()))
    coop_a = [r for r in rows if r["protocol"] == "fewshot" and r["dataset"] == "dA" and r["method"] == "coop"]
    assert len(coop_a) == 1 and float(coop_a[0]["mean"]) == pytest.approx(55.0)
    assert float(coop_a[0]["std"]) == pytest.approx(7.0711, abs=1e-3) and coop_a[0]["n_seeds"] == "2"
    hm_rows = [r for r in rows if r["protocol"] == "base2new" and r["column"] == "hm" and r["dataset"] == "dA"]
    assert float(hm_rows[0]["mean"]) == pytest.approx(hm, abs=1e-3)
    names = sorted(p.name for p in paths["plots"])
    assert names == ["base2new_average.png", "base2new_dA.png", "fewshot_average.png", "fewshot_dA.png",
                     "fewshot_dB.png", "xd.png"]
    for p in paths["plots"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000


def test_report_keeps_all_image_runs_apart_from_zero_shot(tmp_path):
    """--shots 0 trains on every image: its own "all-image" column, never zero-shot CLIP's 0-shot."""
    _fake_run(tmp_path, "fewshot/dA/zsclip/shots_0/seed_1", "zsclip", "dA", 0, 1, 45.0)
    _fake_run(tmp_path, "fewshot/dA/coop/shots_0/seed_1", "coop", "dA", 0, 1, 88.0)
    _fake_run(tmp_path, "fewshot/dA/coop/shots_4/seed_1", "coop", "dA", 4, 1, 70.0)
    paths = report(tmp_path)
    md = paths["markdown"].read_text()
    assert "| dataset | method | 0-shot | 4-shot | all-image |" in md
    assert "| dA | zsclip | 45.00 | – | – |" in md and "| dA | coop | – | 70.00 | 88.00 |" in md
    rows = list(csv.DictReader(paths["csv"].open()))
    assert {r["shots"] for r in rows if r["method"] == "coop"} == {"4", "all"}
    from mudpt.core.vocabulary import shots_label

    assert [shots_label(16), shots_label(0), shots_label(0, learns=False)] == ["16-shot", "all-image", "0-shot"]


def test_base_to_new_averages_never_pool_shot_counts_and_say_how_many_datasets(tmp_path):
    for dataset in ("dA", "dB"):
        _fake_run(tmp_path, f"base2new/{dataset}/coop/shots_16/seed_1", "coop", dataset, 16, 1, 80.0,
                  subsample="base", evaluations=[(dataset, "new", 60.0)])
    _fake_run(tmp_path, "base2new/dA/coop/shots_4/seed_1", "coop", "dA", 4, 1, 70.0,
              subsample="base", evaluations=[("dA", "new", 50.0)])
    paths = report(tmp_path)
    md = paths["markdown"].read_text()
    assert "| method | shots | base | new | HM | datasets |" in md
    assert f"| coop | 4 | 70.00 | 50.00 | {harmonic_mean(70.0, 50.0):.2f} | 1 of 2 |" in md
    assert f"| coop | 16 | 80.00 | 60.00 | {harmonic_mean(80.0, 60.0):.2f} | 2 |" in md
    averages = [r for r in csv.DictReader(paths["csv"].open()) if r["dataset"] == "average" and r["column"] == "base"]
    assert sorted((r["shots"], r["n_datasets"]) for r in averages) == [("16", "2"), ("4", "1")]


def test_report_of_empty_folder_says_so(tmp_path):
    paths = report(tmp_path)
    assert "No finished runs" in paths["markdown"].read_text() and paths["plots"] == []
    with pytest.raises(FileNotFoundError):
        report(tmp_path / "missing")


def test_apply_overrides_does_not_mutate_input():
    data = {"method_options": {"n_ctx": 2}}
    out = apply_overrides(data, {"method_options.depth": 3})
    assert data == {"method_options": {"n_ctx": 2}} and out["method_options"] == {"n_ctx": 2, "depth": 3}


def _fake_config_run(root, rel, method, dataset, seed, base, new, options=None):
    run = root / rel
    (run / "evaluations").mkdir(parents=True)
    cfg = TrainConfig(method=method, dataset=dataset, shots=16, seed=seed, subsample="base", backbone="ViT-B-16",
                      method_options=options or {}).to_dict()
    (run / "results.json").write_text(json.dumps({"accuracy": base, "macro_f1": base, "config": cfg}))
    (run / "evaluations" / "new.json").write_text(json.dumps({"dataset": dataset, "subsample": "new",
                                                               "accuracy": new}))


def test_report_sets_the_published_numbers_beside_ours_with_their_sources(tmp_path):
    from mudpt.engine.published import load_published

    published = load_published()
    vit_b16 = {"config.backbone": "ViT-B-16"}
    assert published.base2new(None, "coop", vit_b16, 16)["hm"] == 71.66
    assert published.base2new(None, "ivlp", vit_b16, 16)["hm"] == 77.90
    language_only = {**vit_b16, "config.method_options": {"n_ctx_vision": 0}}
    assert published.base2new(None, "ivlp", language_only, 16)["label"] == "deep language prompting"
    for seed in (1, 2):
        _fake_config_run(tmp_path, f"base2new/caltech101/coop/shots_16/seed_{seed}", "coop", "caltech101", seed,
                         90.0, 60.0)
        _fake_config_run(tmp_path, f"base2new/caltech101/ivlp/shots_16/seed_{seed}", "ivlp", "caltech101", seed,
                         95.0, 90.0, {"n_ctx_vision": 0})
    md = report(tmp_path, plots=False)["markdown"].read_text()
    ours = harmonic_mean(90.0, 60.0)
    # CoOp's average is set beside the per-dataset table over the same dataset (Caltech101)...
    assert (f"| coop | 16 | 90.00 | 60.00 | {ours:.2f} | 1 | 98.00 (-8.00) | 89.81 (-29.81) | "
            f"{harmonic_mean(98.0, 89.81):.2f} ({ours - harmonic_mean(98.0, 89.81):+.2f}) | "
            f"coop: maple_paper (the same 1 dataset) |") in md
    # ...IVLP, which has no per-dataset numbers, beside its setting's own 11-dataset average
    assert "| 81.72 (+13.28) | 73.81 (+16.19) | 77.56 (+14.87) | deep language prompting: maple_readme (the 11 datasets) |" in md
    assert "ours over 1 of the 11" in md and "github.com/muzairkhattak/multimodal-prompt-learning" in md
    # and the per-dataset row of MaPLe's Table 1 (CoOp on Caltech101: 98.00 / 89.81 / 93.73)
    assert (f"| caltech101 | coop | 16 | 90.00 ± 0.00 | 60.00 ± 0.00 | {ours:.2f} | 98.00 (-8.00) | 89.81 (-29.81) | "
            f"93.73 ({ours - 93.73:+.2f}) | maple_paper |") in md
    assert "| caltech101 | ivlp | 16 | 95.00 ± 0.00 | 90.00 ± 0.00 | 92.43 | – | – | – | |" in md
    tex = (tmp_path / "report.tex").read_text()
    # the same tables as the Markdown (one Table model, two renderers), with the methods' display labels
    assert "published HM" in tex and f"93.73 ({ours - 93.73:+.2f})" in tex and "\\begin{tabular}" in tex
    assert "caltech101 & CoOp & 16 & 90.00$\\pm$0.00 & 60.00$\\pm$0.00" in tex and "IVLP" in tex
    assert tex.count("\\begin{tabular}") == md.count("\n|---")

    # Per-dataset and few-shot numbers from a file of the same form
    custom = tmp_path / "mine.yaml"
    custom.write_text("format: mudpt-published/1\nsources: {paper: my earlier paper}\n"
                      "base2new:\n  per_dataset:\n    caltech101:\n"
                      "      - {method: coop, base: 97.0, new: 90.0, hm: 93.4, source: paper}\n"
                      "fewshot:\n  caltech101:\n    - {method: coop, shots: {16: 95.0}, source: paper}\n")
    _fake_run(tmp_path / "fs", "fewshot/caltech101/coop/shots_16/seed_1", "coop", "caltech101", 16, 1, 93.0)
    md = report(tmp_path, plots=False, published=custom)["markdown"].read_text()
    assert (f"| caltech101 | coop | 16 | 90.00 ± 0.00 | 60.00 ± 0.00 | {ours:.2f} | 97.00 (-7.00) | 90.00 (-30.00) | "
            f"93.40 ({ours - 93.4:+.2f}) | paper |") in md
    assert "| caltech101 | *published* (paper) (ours − published) | 95.00 (-2.00) |" in md
    assert "`paper`: my earlier paper" in md
    plain = report(tmp_path, plots=False, published=False)["markdown"].read_text()
    assert "published HM" not in plain and "*published*" not in plain and "Sources of the published" not in plain
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: mudpt-published/1\nsources: {}\nbase2new: {average: [{method: coop, hm: 1}]}\n")
    with pytest.raises(UserError, match="names source None, which is not among its sources"):
        report(tmp_path, plots=False, published=bad)


def test_a_bad_override_is_blamed_on_the_override_and_a_bad_preset_on_the_preset(tmp_path):
    from mudpt.engine.config import load_config

    with pytest.raises(ConfigError, match=r"epochs='abc' must be an integer >= 1 .*\(given as epochs='abc', not by "
                                          r"the preset coop/world\)") as caught:
        load_config(overrides={"method": "coop", "epochs": "abc"})
    assert "world.yaml" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"given as seed=1.5"):
        load_config(overrides={"method": "coop", "seed": 1.5})
    preset = tmp_path / "bad.yaml"
    preset.write_text("method: coop\nepochs: abc\n")
    with pytest.raises(ConfigError, match=r"epochs='abc'.*\(config: .*bad\.yaml\)"):
        load_config(str(preset), overrides={"seed": 2})
