"""A method is one module and one preset file: a user's plug-in (tests/toy_plugin) registers a
method through the public registries, and it trains, sweeps, reports and predicts through the
engine, which names no method."""

from __future__ import annotations

import json

import pytest
import torch

from test_engine_support import COLOURS, make_image_folder

from mudpt.engine import load_config, predict, report, sweep, train


@pytest.fixture(scope="module")
def toy():
    import toy_plugin

    toy_plugin.register()
    return toy_plugin


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "colours")


def test_a_plugin_method_trains_sweeps_reports_and_predicts(toy, colours, tmp_path):
    from mudpt.methods import get_method_class

    cls = get_method_class("toy_scale")
    assert cls.label == "Toy scale" and cls.protocols() == ("fewshot", "base2new", "xd", "dg")

    # train: its own preset, chosen by the profile of the backbone, as for a built-in method
    cfg = load_config(overrides={"method": "toy_scale", "dataset": str(colours), "backbone": "test-vit-tiny",
                                 "shots": 2, "epochs": 1, "warmup_epochs": 0, "device": "cpu",
                                 "output_dir": str(tmp_path / "run")})
    assert cfg.config_name == "toy_scale/world" and cfg.lr == 0.01
    result = train(cfg, progress=False)
    learned = result.method.learned_state_dict()
    assert set(learned) == {"scale"} and float(learned["scale"]) != 1.0  # it trained
    assert result.metrics["trainable_parameters"] == 1

    # predict: the run folder rebuilds the plug-in's method
    image = next((colours / "test" / "red").glob("*.png"))
    [prediction] = predict(result.run_dir, [image], topk=2, device="cpu")
    assert [p["classname"] for p in prediction["predictions"]][0] in COLOURS
    with torch.no_grad():
        expected = torch.softmax(result.method.logits(_load(image, result.method)), dim=-1).max().item()
    assert prediction["predictions"][0]["probability"] == pytest.approx(expected, abs=1e-5)

    # sweep and report: base-to-new beside zero-shot CLIP, rows in the methods' declared order
    out = tmp_path / "sweep"
    done = sweep("base2new", ["zsclip", "toy_scale"], datasets=[str(colours)], shots=[2], seeds=[1, 2], output=out,
                 backbone="test-vit-tiny", overrides={"epochs": 1, "warmup_epochs": 0, "device": "cpu"},
                 progress=False, log=lambda _: None)
    assert done["trained"] == 3 and not done["failed"]  # zsclip once (learns nothing from data), toy x 2 seeds
    assert (out / "base2new" / "colours" / "toy_scale" / "shots_2" / "seed_2" / "results.json").is_file()
    rows = [line for line in done["report"]["markdown"].read_text().splitlines() if line.startswith("| colours |")]
    assert [row.split(" | ")[1] for row in rows] == ["toy_scale", "zsclip"]  # report_order 5 before 10
    seeds = [json.loads((out / "base2new" / "colours" / "toy_scale" / "shots_2" / f"seed_{s}" / "results.json")
                        .read_text())["accuracy"] for s in (1, 2)]
    assert rows[0].split(" | ")[3].startswith(f"{sum(seeds) / 2:.2f} ± ")
    assert "Toy scale" in (out / "report.tex").read_text()  # the label in the paper's table
    assert report(out, plots=False)["n_runs"] == 3


def _load(image, method):
    from mudpt.data import build_transform, read_image

    return build_transform(method.clip, train=False)(read_image(str(image))).unsqueeze(0)
