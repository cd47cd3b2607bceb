"""The engine's design promises: one typed-config machinery, one run identity, method facts read
from the methods, one dataset reader protocol, one DataLoader per run, the method's pieces."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

from test_engine_support import COLOURS, make_image_folder, tiny_config

import mudpt
from mudpt.core.errors import ConfigError, RunFolderError
from mudpt.engine.config import TrainConfig, load_config
from mudpt.engine.identity import RunIdentity
from mudpt.methods import get_method_class
from mudpt.methods.hooks import TrainingHooks

METHODS = mudpt.available_methods()


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "colours")


# ---------------------------------------------------------------------------------------------
# TrainConfig on the option() machinery
# ---------------------------------------------------------------------------------------------
def test_a_train_config_is_checked_when_built_and_text_is_converted_in_one_step():
    with pytest.raises(ConfigError, match="epochs=0 must be an integer >= 1") as info:
        TrainConfig(epochs=0)
    assert info.value.field == "epochs"
    with pytest.raises(ConfigError, match="optimizer='lamb' must be one of 'sgd', 'adam', 'adamw'"):
        TrainConfig(optimizer="lamb")
    cfg = TrainConfig.from_dict({"lr": "1e-3", "shots": "4.0", "root": "none", "tensorboard": "yes",
                                 "text_chunk": "null"})
    assert (cfg.lr, cfg.shots, cfg.root, cfg.tensorboard, cfg.text_chunk) == (0.001, 4, None, True, None)
    with pytest.raises(ConfigError, match=r"shots='4.5' must be an integer >= 0 .* \(config: my.yaml\)"):
        TrainConfig.from_dict({"shots": "4.5"}, source="my.yaml")
    assert cfg.replace(epochs=3).epochs == 3
    with pytest.raises(ConfigError, match="epochs=-1"):
        cfg.replace(epochs=-1)


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_command_line_flags_are_generated_from_the_fields(command):
    from mudpt.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    by_flag = {option: action for action in sub._actions for option in action.option_strings}
    flagged = [f.name for f in dataclasses.fields(TrainConfig) if command in f.metadata["flag"]]
    assert sub.get_default("setting_flags") == flagged
    for name in flagged:
        assert by_flag[f"--{name.replace('_', '-')}"].dest == name
    precision = next(a for a in sub._actions if a.dest == "precision")
    assert precision.choices == ["fp32", "bf16", "fp16"]


def test_each_field_declares_whether_it_is_part_of_a_runs_identity():
    identity = set(TrainConfig.fields_where(identity=True))
    assert {"method", "dataset", "shots", "seed", "backbone", "lr", "epochs", "method_options", "precision"} <= identity
    assert not identity & {"output_dir", "root", "num_workers", "device", "wandb", "text_chunk", "overwrite"}
    training = set(TrainConfig.fields_where(training=True))
    assert training <= identity and {"lr", "epochs", "optimizer", "schedule_unit"} <= training


# ---------------------------------------------------------------------------------------------
# one RunIdentity
# ---------------------------------------------------------------------------------------------
def test_run_identity_diff_setting_and_the_optimisation_fields_of_methods_not_optimised():
    coop = RunIdentity.of_config(TrainConfig(method="coop", dataset="d", lr=0.1))
    other = RunIdentity.of_config(TrainConfig(method="coop", dataset="d", lr=0.2, seed=3, num_workers=4))
    assert coop.diff(other) == {"config.lr": (0.1, 0.2), "config.seed": (1, 3)}
    assert coop.setting() != other.setting() and "config.seed" not in coop.setting()
    same_but_seed = RunIdentity.of_config(TrainConfig(method="coop", dataset="d2", lr=0.1, seed=7, shots=2))
    assert coop.setting() == same_but_seed.setting()  # a report row pools seeds, shots and datasets apart
    # zero-shot CLIP is not optimised: its optimisation settings are no part of what it is
    zs = [RunIdentity.of_config(TrainConfig(method="zsclip", dataset="d", lr=lr, epochs=e)) for lr, e in
          ((0.1, 1), (0.5, 9))]
    assert zs[0] == zs[1] and "config.lr" not in zs[0].flat()
    assert RunIdentity.from_dict(json.loads(json.dumps(coop.to_dict()))) == coop


def test_the_checkpoint_is_checked_against_the_full_identity_as_the_folder_is(colours, tmp_path):
    """A checkpoint whose config part agrees but whose data differ (another folder's checkpoint
    copied in) is refused by name: the checkpoint records the run's full RunIdentity, as the
    folder's run.json does, and is compared the same way."""
    from mudpt.engine.trainer import train

    other = make_image_folder(tmp_path / "other", colours={**COLOURS, "red": (200, 60, 60)})
    theirs = train(tiny_config(other, tmp_path / "theirs", method="coop", epochs=1), progress=False)
    cfg = tiny_config(colours, tmp_path / "ours", method="coop", epochs=2)
    ours = train(cfg, progress=False)
    mine = RunIdentity.from_dict(ours.metrics["identity"])
    foreign = dataclasses.replace(RunIdentity.from_dict(theirs.metrics["identity"]), config=mine.config)
    assert set(foreign.diff(mine)) == {"data.location", "sample"} | (
        {"data.content"} if foreign.data["content"] != mine.data["content"] else set())
    (ours.run_dir / "results.json").unlink()  # as if interrupted after epoch 1, with that checkpoint
    torch.save({"format": 2, "identity": foreign.to_dict(), "epoch": 1}, ours.run_dir / "checkpoint.pt")
    with pytest.raises(RunFolderError, match=r"checkpoint .* another run \(data.location: folder has"):
        train(cfg, progress=False)


# ---------------------------------------------------------------------------------------------
# method facts, read by the engine
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_every_method_declares_its_facts(name):
    cls = get_method_class(name)
    assert cls.label != name  # every built-in method declares its display label (a plug-in may omit it)
    assert cls.report_order < 1000  # every built-in method has its place in tables
    assert set(cls.protocols()) <= {"fewshot", "base2new", "xd", "dg"} and "fewshot" in cls.protocols()
    assert cls.learns_from_data or not cls.optimized
    for protocol in cls.protocols():
        assert load_config(cls.published_preset(protocol, 16)).method == name
    assert isinstance(mudpt.create(name, mudpt.load_clip("test-vit-tiny"), ["a", "b"]), TrainingHooks)


def test_facts_are_not_inherited_by_a_method_registered_under_another_name():
    kgcoop, coop = get_method_class("kgcoop"), get_method_class("coop")
    assert issubclass(kgcoop, coop) and kgcoop.label == "KgCoOp" and kgcoop.report_order != coop.report_order
    assert kgcoop.published_preset("fewshot", 1) == "kgcoop/vit_b16_ep100_ctxv1"
    assert coop.published_preset("fewshot", 1) == "coop/vit_b16_ep50"
    assert coop.published_preset("dg") == coop.published_preset("xd")  # dg defaults to the xd preset


# ---------------------------------------------------------------------------------------------
# the method's pieces
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_closed_set_methods_are_those_with_the_mixin(name):
    from mudpt.methods.closed_set import ClosedSet

    cls = get_method_class(name)
    assert cls.closed_set == issubclass(cls, ClosedSet)
    assert cls.protocols() == (("fewshot", "dg") if cls.closed_set else ("fewshot", "base2new", "xd", "dg"))


def test_the_backbone_is_shared_by_the_methods_built_on_it_as_documented():
    clip = mudpt.load_clip("test-vit-tiny")
    coop, vpt = mudpt.create("coop", clip, ["a", "b"]), mudpt.create("vpt", clip, ["a", "b"])
    coop.half()
    assert vpt.clip.model.token_embedding.weight.dtype == torch.float16  # one backbone under both
    own = mudpt.create("vpt", mudpt.load_clip("test-vit-tiny"), ["a", "b"])
    assert own.clip.model.token_embedding.weight.dtype == torch.float32  # its own load_clip: its own


def test_class_text_caches_follow_the_classes_and_the_learned_state():
    method = mudpt.create("coop", mudpt.load_clip("test-vit-tiny"), ["a", "b"], n_ctx=2).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first = method(images)
        method(images)
        assert method.text_encoder_calls == 1
        method.ctx.add_(torch.randn(method.ctx.shape, generator=torch.Generator().manual_seed(0)))  # in place, in eval
        assert not torch.allclose(method(images), first) and method.text_encoder_calls == 2
    method.set_classnames(["c", "d", "e"])
    assert method.classnames == ["c", "d", "e"] and method.class_tokens.shape[0] == 3
    with pytest.raises(ConfigError, match="must be distinct"):
        method.set_classnames(["a", "A"])


# ---------------------------------------------------------------------------------------------
# one reader protocol
# ---------------------------------------------------------------------------------------------
def test_a_plugin_reader_gets_the_same_context_as_the_benchmarks(tmp_path):
    from mudpt import data
    from mudpt.data.registry import ReadContext

    image_dir = make_image_folder(tmp_path / "imgs")
    seen = {}

    def reader(ctx: ReadContext):
        seen["dir"], seen["draw"] = ctx.dir, ctx.rng.random()
        ctx.note("read by the plug-in")
        train, val, test, names = data.read_image_folder(ctx.dir)
        return train, val, test, names

    data.register_dataset("unit_test_context", reader, default_root=image_dir)
    try:
        ds = data.load_dataset("unit_test_context", seed=5)
        assert seen["dir"] == image_dir and seen["draw"] == random.Random(5).random()
        assert "read by the plug-in" in ds.notes and ds.classnames == sorted(COLOURS)
    finally:
        data.registry._REGISTRY.pop("unit_test_context", None)
        data.registry._ALIASES.pop("unittestcontext", None)


# ---------------------------------------------------------------------------------------------
# one DataLoader per run
# ---------------------------------------------------------------------------------------------
def test_one_dataloader_per_run_with_persistent_workers_gives_the_same_run(colours, tmp_path, monkeypatch):
    from mudpt.engine import trainer

    built = []
    real = torch.utils.data.DataLoader

    def counting(*args, **kwargs):
        built.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", counting)
    inline = trainer.train(tiny_config(colours, tmp_path / "a", method="coop", epochs=3), progress=False)
    assert len([k for k in built if "batch_sampler" in k]) == 1  # one training loader for the 3 epochs
    built.clear()
    workers = trainer.train(tiny_config(colours, tmp_path / "b", method="coop", epochs=3, num_workers=2),
                            progress=False)
    loaders = [k for k in built if "batch_sampler" in k]
    assert len(loaders) == 1 and loaders[0]["persistent_workers"] is True
    a, b = inline.method.learned_state_dict(), workers.method.learned_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # worker processes change nothing
