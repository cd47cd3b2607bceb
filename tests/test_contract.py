"""The contract around the core: layering, plug-ins, the user-error type, configurations that
the published protocols need."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_engine_support import REPO, make_image_folder

import mudpt
from mudpt.core.errors import ConfigError, CorruptFileError, UserError

PACKAGE = REPO / "mudpt"
# Layers, lowest first; a module may import its own layer and the layers below it. The facade
# (``import mudpt``: the core API re-exported) is on top: a module below it that imported it
# would form a cycle (the facade imports the methods, which would import the facade).
LAYERS = {"core": 0, "methods": 1, "data": 1, "engine": 2, "world": 3, "cli": 3, "facade": 4}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "mudpt":
        return None
    is_module = (PACKAGE / f"{parts[1]}.py").is_file() or (PACKAGE / parts[1]).is_dir() if len(parts) > 1 else False
    if not is_module:
        return "facade"  # ``mudpt`` or a name imported from it (``from mudpt import create``)
    return parts[1] if parts[1] in LAYERS else ("cli" if parts[1] in ("cli", "__main__") else "core")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names if node.module == "mudpt"]
    return found


def test_dependencies_point_one_way():
    """core <- methods, data <- engine <- world, cli <- the facade; nothing below imports anything
    above (lazy imports inside functions included); data and methods do not import each other."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        own = _layer(module)
        for imported in _imports(path):
            other = _layer(imported)
            if other is None or other == own:
                continue
            if LAYERS[other] > LAYERS[own] or {own, other} == {"data", "methods"}:
                problems.append(f"{module} ({own}) imports {imported} ({other})")
    assert problems == []


def _raise_messages(path: Path) -> list[tuple[int, str]]:
    messages = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            for arg in node.exc.args:
                for part in ast.walk(arg):
                    if isinstance(part, ast.Constant) and isinstance(part.value, str):
                        messages.append((node.lineno, part.value))
    return messages


def test_library_messages_do_not_name_command_line_flags():
    """The library speaks in its own terms (fields, values); the CLI adds the flag."""
    import re

    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("cli.py", "commands.py"):
            continue
        for line, text in _raise_messages(path):
            if re.search(r"(^|\s|\()--[a-z]", text):
                offenders.append(f"{path.relative_to(REPO)}:{line}: {text[:80]}")
    assert offenders == []


def test_cli_adds_the_flag_of_the_field_a_user_error_names(capsys):
    from mudpt.cli import main

    assert main(["train", "--method", "coop", "--set", "precision=fp8", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "precision='fp8'" in err and err.rstrip().endswith("(command line: --precision)")


# ---------------------------------------------------------------------------------------------
# Plug-ins
# ---------------------------------------------------------------------------------------------
PLUGIN = '''
import mudpt, mudpt.data
from mudpt.engine.config import Profile, register_profile

def register():
    mudpt.register_backbone("plugin-clip", lambda pretrained=None, device="cpu": mudpt.load_clip("test-vit-tiny"))
    mudpt.data.register_dataset("plugin_data", lambda root: ([], [], [("x.png", 0, "a")], ["a"]),
                                default_root="/nowhere", domain_shifts=["plugin_shift"])
    register_profile(Profile("plugin", lambda m, p, s: f"{m}/world", backbones=("plugin-clip",)))
'''


def test_a_users_plugin_registers_through_the_same_registries(tmp_path):
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    code = ("import mudpt, mudpt.data; from mudpt.engine.config import get_profile; "
            "from mudpt.engine.sweep import default_source_and_targets as d; "
            "print(mudpt.available_backbones()); print('plugin_data' in mudpt.data.available_datasets()); "
            "print(get_profile('plugin-clip').name, get_profile(None).name); "
            "print(d('dg', ['plugin_data'])); print(mudpt.load_clip('plugin-clip').text_width)")
    env = {**os.environ, "MUDPT_PLUGINS": "my_plugin", "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "plugin-clip" in lines[0] and "world-tiny" in lines[0]  # entry-point plug-ins load too
    assert lines[1] == "True" and lines[2] == "plugin world"
    assert lines[3] == "(['plugin_data'], ['plugin_shift'])" and lines[4] == "64"


def test_a_broken_plugin_warns_and_the_others_still_load(tmp_path):
    (tmp_path / "broken_plugin.py").write_text("def register():\n    raise RuntimeError('no licence key')\n")
    env = {**os.environ, "MUDPT_PLUGINS": "broken_plugin", "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", "import mudpt; print(mudpt.available_backbones())"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "world-tiny" in done.stdout
    assert "plug-in 'broken_plugin'" in done.stderr and "no licence key" in done.stderr


def test_protocol_defaults_come_from_dataset_registration():
    from mudpt.engine.sweep import default_source_and_targets

    sources, shifts = default_source_and_targets("dg", None)
    assert sources == ["world_source"]
    assert shifts == [f"world_source_{s}" for s in ("tinted", "foggy", "camouflage", "cluttered", "sketch")]
    assert "world_source_plain" not in shifts  # the no-gap control is not a shift
    assert default_source_and_targets("xd", ["imagenet"])[1][:2] == ["caltech101", "oxford_pets"]
    assert default_source_and_targets("dg", ["imagenet"])[1] == ["imagenetv2", "imagenet_sketch", "imagenet_a",
                                                                   "imagenet_r"]
    with pytest.raises(ConfigError, match="'dtd' registers no domain shifts"):
        default_source_and_targets("dg", ["dtd"])


# ---------------------------------------------------------------------------------------------
# User errors through the command line: one paragraph, exit 2; bugs keep their traceback
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "colours")


TINY = ["--backbone", "test-vit-tiny", "--shots", "2", "--epochs", "2", "--batch-size", "4", "--set",
        "warmup_epochs=0", "--set", "method_options.n_ctx=4", "--device", "cpu", "--quiet"]


def _one_paragraph(capsys, needle: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    return lines[0]


def test_offline_tag_unreadable_checkpoint_corrupt_image_and_bad_pickle_exit_2(colours, tmp_path, capsys,
                                                                               monkeypatch):
    from mudpt.cli import main
    from mudpt.core import backbones

    monkeypatch.setattr(backbones, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(["train", "--method", "coop", "--config", "coop/vit_b16_ep50", "--dataset", str(colours),
                 "--output", str(tmp_path / "tag"), "--quiet"]) == 2
    _one_paragraph(capsys, "cannot fetch open_clip weights 'openai' for 'ViT-B-16'")

    run = tmp_path / "ckpt"
    args = ["train", "--method", "coop", "--dataset", str(colours), "--output", str(run), *TINY]
    assert main(args) == 0
    (run / "results.json").unlink()
    (run / "checkpoint.pt").write_bytes(b"torn")
    assert main(args) == 2
    _one_paragraph(capsys, "checkpoint.pt cannot be read")

    broken = make_image_folder(tmp_path / "broken")
    (broken / "train" / "red" / "0.png").write_bytes(b"not a png")
    (broken / "train" / "red" / "1.png").write_bytes(b"not a png")
    for workers in ("0", "2"):
        assert main(["train", "--method", "coop", "--dataset", str(broken), "--output", str(tmp_path / f"c{workers}"),
                     "--num-workers", workers, "--shots", "0", *TINY[:2], *TINY[6:]]) == 2
        _one_paragraph(capsys, "cannot read image")

    from fake_benchmarks import make_fake_benchmark

    fake = make_fake_benchmark(tmp_path / "root", "dtd")
    cache = fake.dataset_dir / "split_fewshot" / "shot_2-seed_1.pkl"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"\x80\x04not really")
    assert main(["data", "check", "dtd", "--root", str(tmp_path / "root"), "--shots", "2"]) == 2
    _one_paragraph(capsys, "cannot read this cache pickle")


def test_an_internal_bug_keeps_its_traceback(colours, tmp_path, monkeypatch):
    """Only UserError is turned into a paragraph: a ValueError from a bug is not swallowed."""
    import mudpt.engine.trainer as trainer
    from mudpt.cli import main

    def buggy(*args, **kwargs):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(trainer, "compute_metrics", buggy)
    with pytest.raises(ValueError, match="internal invariant"):
        main(["train", "--method", "zsclip", "--dataset", str(colours), "--output", str(tmp_path / "z"), *TINY[:8],
              "--device", "cpu"])


# ---------------------------------------------------------------------------------------------
# Configurations the published protocols need
# ---------------------------------------------------------------------------------------------
def test_zero_shot_on_a_benchmark_reloads_evaluates_and_reruns(tmp_path):
    """The dataset's hand-crafted template is saved as the user's choice (dataset=...), so the
    finished run reloads; before, the saved options held both dataset and templates."""
    from fake_benchmarks import make_fake_benchmark
    from mudpt.engine import evaluate, load_config, train

    make_fake_benchmark(tmp_path, "oxford_pets")
    cfg = load_config(overrides={"method": "zsclip", "dataset": "oxford_pets", "root": str(tmp_path),
                                 "backbone": "test-vit-tiny", "output_dir": str(tmp_path / "zs"), "device": "cpu"})
    first = train(cfg, progress=False)
    assert first.method.settings.templates == ["a photo of a {}, a type of pet."]
    saved = json.loads((tmp_path / "zs" / "learned.json").read_text())["config"]
    assert saved == {"templates": None, "dataset": "oxford_pets"}
    again = evaluate(tmp_path / "zs", progress=False)
    assert again["accuracy"] == pytest.approx(first.metrics["accuracy"])
    assert train(cfg, progress=False).metrics["accuracy"] == first.metrics["accuracy"]  # the finished run


def test_deep_language_prompting_is_ivlp_without_vision_prompts(resnet):
    clip = mudpt.load_clip("test-vit-tiny")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    method = mudpt.create("ivlp", clip, ["cat", "dog"], n_ctx=4, n_ctx_vision=0).train()
    assert sorted(name.split(".")[0] for name, _ in method.trainable_parameters()) == ["text_prompts"] * 3
    assert method.options["depth_vision"] == 0 and len(method.vision_prompts) == 0
    with torch.no_grad():
        plain = clip.model.encode_image(images)
        assert torch.allclose(method.encode_images(images, method.compute_prompts()), plain, atol=1e-5)
    torch.nn.functional.cross_entropy(method(images), torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for p in method.text_prompts)
    # Without vision prompts a ResNet image tower is fine, as for CoOp.
    assert mudpt.create("ivlp", resnet, ["cat", "dog"], n_ctx_vision=0)(torch.randn(1, 3, 64, 64)).shape == (1, 2)
    with pytest.raises(ConfigError, match="needs a ViT image tower"):
        mudpt.create("ivlp", resnet, ["cat", "dog"])
    with pytest.raises(ConfigError, match="vision prompts need both > 0"):
        mudpt.create("ivlp", clip, ["cat", "dog"], n_ctx_vision=0, depth_vision=3)
    from mudpt.engine import load_config

    preset = load_config("ivlp/vit_b16_c2_ep5_batch4_4ctx_language_only")
    assert preset.method_options == {"n_ctx": 4, "depth": 12, "ctx_init": "a photo of a", "n_ctx_vision": 0,
                                     "depth_vision": 0}
    assert (preset.lr, preset.batch_size, preset.epochs) == (0.0025, 4, 5)


def test_imagenet_variants_refuse_base_new_as_the_reference_never_subsamples_them(tmp_path):
    import mudpt.data as data
    from fake_benchmarks import make_fake_benchmark

    make_fake_benchmark(tmp_path, "imagenet_a")
    assert data.load_dataset("imagenet_a", root=tmp_path).test
    with pytest.raises(ConfigError, match="'imagenet_a' has no base/new class split.*subsample='all'"):
        data.load_dataset("imagenet_a", root=tmp_path, subsample="new")
    notes = data.load_dataset("imagenet_a", root=tmp_path, shots=4).notes
    assert any("shots=4 ignored" in note for note in notes)


def test_user_errors_survive_pickling_with_their_field():
    import pickle

    error = pickle.loads(pickle.dumps(CorruptFileError("bad file", field="root")))
    assert isinstance(error, UserError) and isinstance(error, ValueError) and error.field == "root"


def test_methods_with_dataset_templates_record_the_dataset_only_when_the_user_chose_none():
    import mudpt
    from mudpt.methods import get_method_class, make_config

    with_templates = [m for m in mudpt.available_methods() if get_method_class(m).Config.dataset_templates]
    assert {"zsclip", "kgcoop", "prograd", "clip_adapter", "tip_adapter"} <= set(with_templates)
    for method in with_templates:
        config_cls = get_method_class(method).Config
        known = next(iter(config_cls.dataset_templates))
        assert make_config(method).for_dataset(known).dataset == known, method
        assert make_config(method).for_dataset("my_own_folder").dataset is None, method
        own = "a photo of a {}." if config_cls.template_option == "template" else ["a photo of a {}."]
        user = make_config(method, {config_cls.template_option: own})
        assert user.for_dataset(known).dataset is None, method  # the user's template stays theirs
        assert make_config(method, {"dataset": known}).for_dataset("my_own_folder").dataset == known, method


def test_the_facade_ranks_above_every_layer_so_an_import_of_it_from_below_is_caught(tmp_path):
    """A module of the core, the methods or the engine that imported ``mudpt`` (say for its
    version) would be a cycle; the layering rule names it."""
    assert _layer("mudpt") == _layer("mudpt.create") == "facade"
    assert _layer("mudpt._version") == "core"
    assert all(LAYERS["facade"] > LAYERS[layer] for layer in LAYERS if layer != "facade")
    planted = tmp_path / "planted.py"
    planted.write_text("import mudpt\nfrom mudpt import __version__\n")
    imported = [_layer(name) for name in _imports(planted)]
    assert set(imported) == {"facade"} and all(LAYERS[layer] > LAYERS["methods"] for layer in imported)


def test_the_suite_has_its_own_cache_and_never_the_users(suite_cache):
    """Every cache the package writes (world data, frozen features) resolves inside the test
    session's own folder (tests/conftest.py), not ~/.cache/mudpt."""
    from mudpt.engine.features import cache_root
    from mudpt.world.datasets import cache_dir

    home_cache = Path.home() / ".cache" / "mudpt"
    for folder in (cache_root(), cache_dir()):
        assert suite_cache in folder.parents and home_cache not in folder.parents
