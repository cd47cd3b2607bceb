"""End-to-end training and evaluation on the tiny test backbone and a generated image folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from test_engine_support import COLOURS, OTHER_COLOURS, learned_tensors, make_image_folder, tiny_config

import mudpt
from mudpt.engine import RunFolderError, TrainingDivergedError, evaluate, predict, train
from mudpt.methods import get_method_class

METHODS = mudpt.available_methods()


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "colours")


@pytest.fixture(scope="module")
def other_colours(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "other", colours=OTHER_COLOURS)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_evaluates(method, colours, tmp_path):
    cls = get_method_class(method)
    cfg = tiny_config(colours, tmp_path / "run", method=method, epochs=1)
    clip = mudpt.load_clip(cfg.backbone)
    torch.manual_seed(cfg.seed)
    initial = mudpt.create(method, clip, sorted(COLOURS), **cfg.method_options).learned_state_dict()

    result = train(cfg, progress=False)
    run = result.run_dir
    results = json.loads((run / "results.json").read_text())
    assert results["n"] == 4 * len(COLOURS)
    assert 0.0 <= results["accuracy"] <= 100.0 and len(results["per_class_accuracy"]) == len(COLOURS)
    assert results["classnames"] == sorted(COLOURS) and results["config"]["method"] == method
    assert (run / "config.json").is_file() and (run / "learned.json").is_file()
    assert not (run / "checkpoint.pt").exists()  # removed once results exist
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    learned = learned_tensors(run)
    if not cls.learns_from_data:  # zero-shot: nothing learned, nothing trained
        assert results["trainable_parameters"] == 0 and learned == {} and not [s for s in steps if s["kind"] == "step"]
    elif not cls.optimized:  # fitted from the training images (a classifier, a cache), no epochs
        assert results["trainable_parameters"] == 0 and learned and not [s for s in steps if s["kind"] == "step"]
        assert set(learned) - set(initial), "fit() learned nothing"
    else:
        assert learned and set(initial) <= set(learned)  # a fit before the epochs may add state (Tip-Adapter-F)
        if initial:  # state that exists before fitting: the epochs changed it
            assert any(not torch.equal(learned[k], initial[k]) for k in initial), "training changed nothing"
        assert [s["global_step"] for s in steps if s["kind"] == "step"] == [1, 2]  # 8 images / batch 4
        assert all(set(s) >= {"loss", "accuracy", "lr", "epoch"} for s in steps if s["kind"] == "step")
    # Evaluating the run folder rebuilds the same method: same accuracy as at the end of training.
    again = evaluate(run, progress=False)
    assert again["accuracy"] == pytest.approx(results["accuracy"])
    assert again["macro_f1"] == pytest.approx(results["macro_f1"])


def test_cpu_determinism_same_seed_same_tensors(colours, tmp_path):
    a = train(tiny_config(colours, tmp_path / "a", method="mudpt"), progress=False)
    b = train(tiny_config(colours, tmp_path / "b", method="mudpt"), progress=False)
    c = train(tiny_config(colours, tmp_path / "c", method="mudpt", seed=2), progress=False)
    # Data-loader worker processes do not change the augmentation (seeded per image and epoch).
    w = train(tiny_config(colours, tmp_path / "w", method="mudpt", num_workers=2), progress=False)
    ta, tb, tc = learned_tensors(a.run_dir), learned_tensors(b.run_dir), learned_tensors(c.run_dir)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    tw = learned_tensors(w.run_dir)
    assert all(torch.equal(ta[k], tw[k]) for k in ta)
    assert a.metrics["accuracy"] == b.metrics["accuracy"]
    assert any(not torch.equal(ta[k], tc[k]) for k in ta)
    # The step log is identical too (losses are bit-for-bit the same).
    losses = lambda r: [json.loads(x)["loss"] for x in (r.run_dir / "metrics.jsonl").read_text().splitlines()
                        if json.loads(x)["kind"] == "step"]
    assert losses(a) == losses(b)


def test_finished_run_is_not_retrained_and_other_config_is_refused(colours, tmp_path):
    cfg = tiny_config(colours, tmp_path / "run", method="coop", epochs=1)
    first = train(cfg, progress=False)
    log_before = (first.run_dir / "metrics.jsonl").read_text()
    again = train(cfg, progress=False)
    assert again.metrics["accuracy"] == first.metrics["accuracy"]
    assert (first.run_dir / "metrics.jsonl").read_text() == log_before

    with pytest.raises(RunFolderError) as info:
        train(tiny_config(colours, tmp_path / "run", method="mudpt", epochs=1), progress=False)
    message = str(info.value)
    assert "method: folder has 'coop', this run wants 'mudpt'" in message and "overwrite" in message
    assert info.value.field == "overwrite"  # the command line adds its flag
    with pytest.raises(RunFolderError, match="backbone: folder has 'test-vit-tiny', this run wants 'test-rn-tiny'"):
        train(tiny_config(colours, tmp_path / "run", method="coop", epochs=1, backbone="test-rn-tiny"),
              progress=False)
    # Nothing in the folder was touched by the refused runs.
    assert (first.run_dir / "metrics.jsonl").read_text() == log_before

    replaced = train(tiny_config(colours, tmp_path / "run", method="mudpt", epochs=1, overwrite=True), progress=False)
    assert json.loads((replaced.run_dir / "config.json").read_text())["method"] == "mudpt"


def test_foreign_files_in_output_folder_are_not_overwritten(colours, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(RunFolderError, match="not a mudpt run .*notes.txt"):
        train(tiny_config(colours, out, method="coop", epochs=1), progress=False)
    assert not (out / "config.json").exists()
    train(tiny_config(colours, out, method="coop", epochs=1, overwrite=True), progress=False)
    assert (out / "notes.txt").read_text() == "keep me" and (out / "results.json").is_file()


def test_nan_loss_is_a_clear_error(colours, tmp_path, monkeypatch):
    import torch.nn.functional as F

    real = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda logits, labels: real(logits, labels) * float("nan"))
    with pytest.raises(TrainingDivergedError) as info:
        train(tiny_config(colours, tmp_path / "run", method="coop", precision="bf16"), progress=False)
    message = str(info.value)
    assert "epoch 1, step 1" in message and "lower learning rate" in message and "fp32" in message


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_runs(precision, colours, tmp_path):
    result = train(tiny_config(colours, tmp_path / "run", method="coop", precision=precision), progress=False)
    assert result.metrics["config"]["precision"] == precision
    assert all(torch.isfinite(t).all() for t in learned_tensors(result.run_dir).values())


def test_eval_on_new_classes_and_on_another_dataset(colours, other_colours, tmp_path):
    base = train(tiny_config(colours, tmp_path / "run", method="mudpt", subsample="base", epochs=1), progress=False)
    assert base.metrics["classnames"] == sorted(COLOURS)[:2]
    new = evaluate(base.run_dir, subsample="new", progress=False)
    assert new["classnames"] == sorted(COLOURS)[2:] and new["n"] == 8
    xd = evaluate(base.run_dir, dataset=str(other_colours), progress=False)
    assert xd["classnames"] == sorted(OTHER_COLOURS) and xd["n"] == 4 * len(OTHER_COLOURS)
    saved = sorted(p.name for p in (base.run_dir / "evaluations").glob("*.json"))
    assert len(saved) == 2 and any("__new__test" in s for s in saved)
    # The learned tensors are kept when the classes change: the re-targeted method still matches the run.
    from mudpt.engine import load_run_method

    method, _ = load_run_method(base.run_dir)
    method.set_classnames(sorted(OTHER_COLOURS))
    reloaded = learned_tensors(base.run_dir)
    assert all(torch.equal(method.learned_state_dict()[k].cpu(), reloaded[k]) for k in reloaded)
    # In-memory methods can be evaluated too (what the demo does).
    in_memory = evaluate(base.method, dataset=str(colours), subsample="new", progress=False)
    assert in_memory["accuracy"] == pytest.approx(new["accuracy"])


def test_predict_topk(colours, tmp_path):
    result = train(tiny_config(colours, tmp_path / "run", method="coop", epochs=1), progress=False)
    images = [colours / "test" / "red" / "0.png", colours / "test" / "blue" / "1.png"]
    out = predict(result.run_dir, images, topk=3)
    assert [o["image"] for o in out] == [str(p) for p in images]
    for item in out:
        probs = [p["probability"] for p in item["predictions"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(p["classname"] in COLOURS for p in item["predictions"])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        predict(result.run_dir, [colours / "nope.png"])


@pytest.mark.parametrize("protocol", ["xd", "dg"])
def test_sweep_cross_dataset_and_domain_generalisation(protocol, colours, other_colours, tmp_path):
    from mudpt.engine import sweep

    out = tmp_path / "runs"
    result = sweep(protocol, ["coop"], datasets=[str(colours)], targets=[str(other_colours)], shots=[2], seeds=[1],
                   output=out, backbone="test-vit-tiny",
                   overrides={"epochs": 1, "warmup_epochs": 0, "device": "cpu", "method_options.n_ctx": 4},
                   progress=False, log=lambda _: None)
    assert result["trained"] == 1
    run = out / protocol / "colours" / "coop" / "shots_2" / "seed_1"
    evaluation = json.loads(next((run / "evaluations").glob("other-*__all__test.json")).read_text())
    assert evaluation["classnames"] == sorted(OTHER_COLOURS)
    md = (out / "report.md").read_text()
    title = "Cross-dataset transfer" if protocol == "xd" else "Domain generalisation"
    assert f"## {title}" in md
    row = next(line for line in md.splitlines() if line.startswith("| colours | coop | 2 |"))
    assert f"{evaluation['accuracy']:.2f}" in row
    assert (out / f"{protocol}.png").is_file()


def test_sweep_keep_going_collects_failures(colours, tmp_path, monkeypatch):
    import mudpt.engine.trainer as trainer
    from mudpt.engine import sweep

    def failing_train(cfg, progress=True, **kwargs):
        raise TrainingDivergedError(f"loss became nan in {cfg.output_dir}")

    monkeypatch.setattr(trainer, "train", failing_train)
    kwargs = dict(datasets=[str(colours)], shots=[1], seeds=[1, 2], output=tmp_path / "runs", backbone="test-vit-tiny",
                  progress=False, log=lambda _: None)
    with pytest.raises(TrainingDivergedError):
        sweep("fewshot", ["coop"], **kwargs)
    result = sweep("fewshot", ["coop"], keep_going=True, **kwargs)
    assert result["trained"] == 0 and len(result["failed"]) == 2
    assert "seed_1: TrainingDivergedError: loss became nan" in result["failed"][0]
    assert result["report"]["markdown"].is_file()


def test_a_relative_dataset_is_the_one_trained_on_from_any_directory(tmp_path, monkeypatch):
    """The run keeps its dataset resolved: eval from elsewhere reads the trained-on data, not a
    same-named folder under the current directory; data/tiny, ./data/tiny and the absolute path are
    one dataset to the new-class guard."""
    make_image_folder(tmp_path / "a" / "data" / "tiny")
    make_image_folder(tmp_path / "b" / "data" / "tiny", colours=OTHER_COLOURS)  # another dataset, same name
    monkeypatch.chdir(tmp_path / "a")
    run = tmp_path / "run"
    train(tiny_config("data/tiny", run, epochs=1), progress=False)
    own = evaluate(run, save=False)
    monkeypatch.chdir(tmp_path / "b")
    again = evaluate(run, save=False)
    assert again["classnames"] == own["classnames"] == sorted(COLOURS) and again["accuracy"] == own["accuracy"]
    monkeypatch.chdir(tmp_path / "a")
    for spelling in ("data/tiny", "./data/tiny", str(tmp_path / "a" / "data" / "tiny"), "data/tiny/"):
        with pytest.raises(mudpt.UserError, match="its 'new' classes are classes it trained on"):
            evaluate(run, dataset=spelling, subsample="new", save=False)


def test_evaluations_of_two_datasets_with_the_same_name_are_both_kept(tmp_path):
    first = make_image_folder(tmp_path / "one" / "photos")
    second = make_image_folder(tmp_path / "two" / "photos", colours={**COLOURS, **OTHER_COLOURS})
    run = tmp_path / "run"
    train(tiny_config(first, run, epochs=1), progress=False)
    a = evaluate(run, dataset=str(second))
    b = evaluate(run, dataset=str(first) + "/", subsample="all")
    records = sorted((run / "evaluations").glob("photos*.json"))
    assert len(records) == 2, [p.name for p in records]
    saved = {json.loads(p.read_text())["n"] for p in records}
    assert saved == {a["n"], b["n"]} and a["n"] != b["n"]


def test_eval_of_changed_data_says_so_and_refuses_test_images_the_run_trained_on(tmp_path, capsys):
    """A flat image folder is split by mudpt: images added after training move others between the
    splits, so the new test split can hold images the run trained on."""
    import shutil

    from mudpt.cli import main

    flat = tmp_path / "photos"
    for split in ("train", "val", "test"):  # the same images, flat: class folders only
        for folder in (make_image_folder(tmp_path / "tree") / split).iterdir():
            for image in folder.iterdir():
                (flat / folder.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(image, flat / folder.name / f"{split}_{image.name}")
    run = tmp_path / "run"
    train(tiny_config(flat, run, epochs=1), progress=False)
    assert evaluate(run, save=False)["notes"] == []
    trained = set(json.loads((run / "sample.json").read_text())["train"])
    assert len(trained) == 2 * len(COLOURS) and all(not p.startswith("/") for p in trained)
    overlap = False
    for extra in range(1, 30):  # add images until the re-split puts a training image in the test split
        shutil.copy(flat / "red" / "test_0.png", flat / "red" / f"added_{extra}.png")
        test = mudpt.data.load_dataset(str(flat)).test
        if any(str(Path(item.path).relative_to(flat)) in trained for item in test):
            overlap = True
            break
    assert overlap, "the data must move a training image into the test split"
    with pytest.raises(mudpt.UserError, match=r"were training images of this run \(e\.g\. "):
        evaluate(run, save=False)
    assert main(["eval", "--run", str(run), "--quiet"]) == 2
    assert "were training images of this run" in capsys.readouterr().err
    # fixed splits (train/val/test folders): a new test image changes the listing, not the split of
    # the others: a test accuracy still, with a note
    tree = tmp_path / "tree"
    train(tiny_config(tree, tmp_path / "run2", epochs=1), progress=False)
    shutil.copy(tree / "test" / "red" / "0.png", tree / "test" / "red" / "added.png")
    metrics = evaluate(tmp_path / "run2", save=False)
    assert metrics["n"] == 4 * len(COLOURS) + 1 and "the dataset changed since the run" in metrics["notes"][0]
    assert main(["eval", "--run", str(tmp_path / "run2"), "--quiet"]) == 0
    assert "note: the dataset changed since the run" in capsys.readouterr().err
