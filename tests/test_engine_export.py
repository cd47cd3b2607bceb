"""Deploying a tuned model (mudpt/engine/export.py, classifier.py): every registered method's
exported graph (torch.export and ONNX run by onnxruntime) gives the logits its own eval path
gives, in fp32 and fp16; text-side methods export a class-embedding head and CLIP-LoRA merged
open_clip weights that open_clip itself loads; runs export from the command line; bad requests
are clear errors; the classifier takes images as users hold them."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import mudpt
from mudpt.engine.classifier import load_classifier
from mudpt.engine.export import ONNX_OPSET, export_method, formats_table, metadata_path, trace_method, write_program
from mudpt.methods import get_method_class
from mudpt.methods.hooks import FitContext
from test_engine_support import REPO, make_image_folder, run_cli, tiny_config

CLASSES = ["golden retriever", "tabby cat", "fire truck", "tulip"]
# The fast lane exports a prompt method, the one whose text depends on the image and a fitted
# cache; the full suite exports every registered method.
FAST = {"coop", "cocoop", "tip_adapter"}


def _images(seed=0, n=5, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _ready(name, clip, classes=CLASSES):
    """The method with its default options, fitted where it fits, its learned tensors moved off
    their initial values (zeros and identities would hide a tensor the graph leaves out)."""
    torch.manual_seed(0)
    method = mudpt.create(name, clip, classes)
    size = clip.image_size
    method.fit(FitContext.from_tensors(method, _images(1, 8, size), [i % len(classes) for i in range(8)],
                                       note=lambda text: None))
    with torch.no_grad():
        for _, parameter in method.trainable_parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return method.eval()


def _tolerance(reference, precision):
    scale = max(1.0, float(reference.abs().max()))
    return (1e-4 if precision == "fp32" else 5e-3) * scale


def _onnx_logits(path, images):
    return load_classifier(path).predict(images).logits


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in mudpt.available_methods()])
def test_every_method_exports_graphs_that_give_its_logits(vit, tmp_path, name):
    method = _ready(name, vit)
    images = _images(2)
    with torch.no_grad():
        reference = method(images)  # what mudpt eval computes
    program = trace_method(method)
    write_program(program, tmp_path / "model.onnx", "onnx", optimize=False)
    tolerance = _tolerance(reference, "fp32")
    exported = program.module()  # the .pt2 file holds this program (saving and loading: the tests below)
    with torch.no_grad():
        assert (exported(images) - reference).abs().max() <= tolerance
        assert (exported(images[:1]) - reference[:1]).abs().max() <= tolerance  # the batch axis is dynamic
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    assert onnx_logits.shape == reference.shape and (onnx_logits - reference).abs().max() <= tolerance
    # the method itself is unchanged by the export (its speed-ups and caches are back)
    assert method.truncate_text and not method.tracing and method._pinned_text is None


FP16 = [(name, fmt) if (name, fmt) == ("maple", "torch") else pytest.param(name, fmt, marks=pytest.mark.slow)
        for name in ("maple", "cocoop", "tip_adapter") for fmt in ("onnx", "torch")]


@pytest.mark.parametrize("name,fmt", FP16)
def test_fp16_exports_give_the_logits_within_half_precision(vit, tmp_path, name, fmt):
    method = _ready(name, vit)
    images = _images(3)
    with torch.no_grad():
        reference = method(images)
    out = tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt2")
    export_method(method, out, format=fmt, precision="fp16")
    info = json.loads(metadata_path(out).read_text())
    assert info["precision"] == "fp16" and info["input"]["dtype"] == "float16"
    logits = load_classifier(out).predict(images).logits
    assert (logits - reference).abs().max() <= _tolerance(reference, "fp16")
    assert all(p.dtype == torch.float32 for p in method.parameters())  # the method itself stays fp32
    assert vit.model.logit_scale.dtype == torch.float32


TEXT_SIDE = [("zsclip", {}), ("coop", {}), ("kgcoop", {}), ("prograd", {}), ("tcp", {}),
             ("ivlp", {"n_ctx_vision": 0, "depth": 2}), ("clip_lora", {"encoder": "text"})]


@pytest.mark.parametrize("name,options", TEXT_SIDE, ids=[n for n, _ in TEXT_SIDE])
def test_text_side_methods_export_a_head_for_frozen_clip(vit, tmp_path, name, options):
    method = mudpt.create(name, vit, CLASSES, **options)
    with torch.no_grad():
        for _, parameter in method.trainable_parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    method.eval()
    assert "head" in method.deploy_formats(method.config)
    images = _images(4)
    export_method(method, tmp_path / "head.safetensors", format="head")
    from safetensors.torch import load_file

    head = load_file(str(tmp_path / "head.safetensors"))
    with torch.no_grad():
        frozen = F.normalize(vit.model.encode_image(images), dim=-1)  # open_clip's own frozen image tower
        logits = float(head["logit_scale"]) * frozen @ head["class_embeddings"].t()
        assert torch.allclose(logits, method(images), atol=1e-4)
    assert torch.allclose(load_classifier(tmp_path / "head.safetensors").predict(images).logits, logits, atol=1e-5)


def test_clip_lora_exports_merged_weights_that_open_clip_loads(vit, tmp_path):
    import open_clip

    from mudpt.core.backbones import TEST_VIT_TINY_CONFIG

    method = mudpt.create("clip_lora", vit, CLASSES, params=["q", "k", "v", "o"])
    with torch.no_grad():
        for block in list(method.text_lora.values()) + list(method.vision_lora.values()):
            for update in block.updates.values():
                update.B.normal_(std=0.5)  # B starts at zero: a merge of nothing would pass
    method.eval()
    images = _images(5)
    with torch.no_grad():
        reference = method(images)
    result = export_method(method, tmp_path / "merged.safetensors", format="open_clip")
    info = json.loads(result.metadata.read_text())
    assert info["head_file"] == "merged.head.safetensors" and info["logit_scale"] == 100.0
    # open_clip itself, from its own config registry and the file
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "mudpt-test-vit-tiny.json").write_text(json.dumps(TEST_VIT_TINY_CONFIG))
    open_clip.add_model_config(configs)
    model = open_clip.create_model("mudpt-test-vit-tiny", pretrained=str(result.path)).eval()
    from safetensors.torch import load_file

    head = load_file(str(tmp_path / "merged.head.safetensors"))
    tokenizer = vit.tokenizer
    with torch.no_grad():
        image = F.normalize(model.encode_image(images), dim=-1)
        logits = float(head["logit_scale"]) * image @ head["class_embeddings"].t()
        text = F.normalize(model.encode_text(tokenizer([f"a photo of a {c}." for c in CLASSES])), dim=-1)
        unmerged = F.normalize(vit.model.encode_image(images), dim=-1)
    assert torch.allclose(logits, reference, atol=1e-3)
    assert torch.allclose(text, head["class_embeddings"], atol=1e-5)  # the merged text tower's class features
    assert not torch.allclose(image, unmerged, atol=1e-3)  # the merge changed the image tower
    assert torch.allclose(load_classifier(result.path).predict(images).logits, logits, atol=1e-4)


def test_bad_requests_are_clear_errors_and_nothing_is_half_written(vit, tmp_path, monkeypatch):
    maple = _ready("maple", vit)
    with pytest.raises(mudpt.UserError, match=r"maple.*cannot be exported as 'head'.*onnx, torch") as error:
        export_method(maple, tmp_path / "m.safetensors", format="head")
    assert error.value.field == "format"
    with pytest.raises(mudpt.UserError, match=r"'open_clip'.*additive update"):
        export_method(_ready("coop", vit), tmp_path / "m.safetensors", format="open_clip")
    with pytest.raises(mudpt.UserError, match=r"format='tflite'"):
        export_method(maple, tmp_path / "m.x", format="tflite")
    with pytest.raises(mudpt.UserError, match=r"fp16 applies to onnx and torch"):
        export_method(_ready("coop", vit), tmp_path / "m.safetensors", format="head", precision="fp16")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(mudpt.UserError, match=r"a_file"):  # the output's folder cannot be made
        export_method(maple, blocker / "model.onnx")
    # an existing file is kept without overwrite
    existing = tmp_path / "model.pt2"
    existing.write_text("keep me")
    with pytest.raises(mudpt.UserError, match=r"model.pt2 exists; replace it with overwrite=True"):
        export_method(maple, existing, format="torch")
    assert existing.read_text() == "keep me"
    # a failure while writing leaves neither a partial file nor a temporary one
    def fail(program, path):
        open(path, "wb").write(b"partial")
        raise RuntimeError("disk full")
    monkeypatch.setattr(torch.export, "save", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export_method(maple, tmp_path / "new.pt2", format="torch")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "model.pt2"]


@pytest.mark.slow
def test_a_run_exports_from_the_command_line_and_predicts_as_mudpt_eval(tmp_path):
    from mudpt.data import load_dataset
    from mudpt.engine import train

    data = make_image_folder(tmp_path / "colours")
    run = train(tiny_config(data, tmp_path / "run", method="coop", epochs=1), progress=False).run_dir
    results = json.loads((run / "results.json").read_text())
    done = run_cli(["export", "--run", str(run), "--out", str(tmp_path / "deploy" / "model.onnx")])
    assert done.returncode == 0, done.stderr
    info = json.loads((tmp_path / "deploy" / "model.json").read_text())
    assert info["format"] == "onnx" and info["opset"] == ONNX_OPSET and info["method"] == "coop"
    assert info["classnames"] == results["classnames"] and info["run"]["folder"] == str(run.resolve())
    assert info["preprocessing"]["image_size"] == 32 and len(info["preprocessing"]["mean"]) == 3
    assert info["backbone"]["weights_fingerprint"].startswith("seeded-init:test-vit-tiny")
    assert info["mudpt_version"] == mudpt.__version__ and info["config"]["n_ctx"] == 4
    # the exported model's accuracy on the test images is the run's own (mudpt eval's)
    test = load_dataset(str(data)).test
    classifier = load_classifier(tmp_path / "deploy" / "model.onnx")
    predictions = classifier.predict([item.path for item in test])
    accuracy = 100.0 * sum(p == item.label for p, item in zip(predictions.labels, test)) / len(test)
    assert accuracy == pytest.approx(results["accuracy"])
    # mudpt predict reads the exported file as it reads the run
    image = test[0].path
    from_run = run_cli(["predict", "--run", str(run), image, "--json"])
    from_onnx = run_cli(["predict", "--model", str(tmp_path / "deploy" / "model.onnx"), image, "--json"])
    a, b = json.loads(from_run.stdout)[0]["predictions"], json.loads(from_onnx.stdout)[0]["predictions"]
    assert [p["classname"] for p in a] == [p["classname"] for p in b]
    assert [p["probability"] for p in a] == pytest.approx([p["probability"] for p in b], abs=1e-4)
    # the same again without --overwrite: refused (the flag named), the file kept
    again = run_cli(["export", "--run", str(run), "--out", str(tmp_path / "deploy" / "model.onnx")])
    assert again.returncode == 2 and "--overwrite" in again.stderr
    # a class list for an open-set method; a closed-set run refuses classes it was not fitted on
    from mudpt.core.classnames import read_classnames_file
    from mudpt.engine.export import export_run

    classes = tmp_path / "classes.txt"
    classes.write_text("# my classes\npurple\nteal\n")
    export_run(run, tmp_path / "open.pt2", format="torch", classnames=read_classnames_file(classes))
    assert json.loads((tmp_path / "open.json").read_text())["classnames"] == ["purple", "teal"]
    assert load_classifier(tmp_path / "open.pt2").predict(image).probabilities.shape == (1, 2)
    probe = train(tiny_config(data, tmp_path / "probe", method="linear_probe"), progress=False).run_dir
    with pytest.raises(mudpt.UserError, match="fitted on"):
        export_run(probe, tmp_path / "probe.onnx", classnames=["purple", "teal"])
    assert not (tmp_path / "probe.onnx").exists()


def test_an_unfinished_run_is_not_exported(tmp_path):
    from mudpt.engine.export import export_run

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(mudpt.UserError, match=r"has not finished"):
        export_run(folder, tmp_path / "model.onnx")
    with pytest.raises(mudpt.UserError, match=r"does not exist"):
        export_run(tmp_path / "nowhere", tmp_path / "model.onnx")


def test_the_classifier_takes_images_paths_and_tensors(vit, tmp_path):
    from PIL import Image

    from mudpt.data import build_transform

    method = _ready("coop", vit)
    out = tmp_path / "model.pt2"
    export_method(method, out, format="torch")
    classifier = load_classifier(out)
    picture = Image.fromarray((torch.rand(40, 60, 3) * 255).byte().numpy())
    path = tmp_path / "picture.png"
    picture.save(path)
    tensor = build_transform(vit, train=False)(picture)
    by_image, by_path, by_tensor = (classifier.predict(x) for x in (picture, str(path), tensor))
    with torch.no_grad():
        reference = method(tensor.unsqueeze(0))
    for predictions in (by_image, by_path, by_tensor):
        assert torch.allclose(predictions.logits, reference, atol=1e-4)
        assert predictions.classnames == [CLASSES[int(reference.argmax())]]
        assert predictions.probabilities.sum().item() == pytest.approx(1.0)
    batch = classifier.predict([picture, path, tensor], batch_size=2)
    assert batch.labels == by_image.labels * 3 and len(batch.topk(2)[0]) == 2
    with pytest.raises(mudpt.UserError, match=r"preprocessed, \(3, 32, 32\)"):
        classifier.predict(torch.zeros(3, 64, 64))
    with pytest.raises(mudpt.UserError, match=r"URL"):
        classifier.predict("https://example.com/cat.jpg")
    with pytest.raises(mudpt.UserError, match=r"nowhere.png"):
        classifier.predict(str(tmp_path / "nowhere.png"))
    with pytest.raises(mudpt.UserError, match=r"model.json is missing"):
        metadata_path(out).unlink()
        load_classifier(out)
    assert mudpt.load_classifier is load_classifier


def test_the_docs_formats_table_is_the_registry():
    text = (REPO / "docs" / "DEPLOY.md").read_text()
    section = text[text.index("## Which method takes which format"):]
    section = section[:section.index("\n## ", 3)]
    rows = {line.split("|")[1].strip().strip("`"): line.split("|")[2].strip()
            for line in section.splitlines() if line.startswith("| `")}
    expected = {name: ", ".join(formats) for name, formats in formats_table()}
    assert rows == expected
    for name, formats in formats_table():
        assert formats == get_method_class(name).deploy_formats(get_method_class(name).Config())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mudpt", "cocoop", "clip_lora"])
def test_exports_on_the_worlds_backbone_give_its_logits(tmp_path, name):
    clip = mudpt.load_clip("world-tiny")  # the built-in world's own CLIP (its shipped weights)
    method = _ready(name, clip, ["red circle", "blue square", "green star"])
    images = _images(6, 3, clip.image_size)
    with torch.no_grad():
        reference = method(images)
    program = trace_method(method)
    write_program(program, tmp_path / "model.onnx", "onnx", optimize=False)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    assert (logits - reference).abs().max() <= _tolerance(reference, "fp32")
    with torch.no_grad():
        assert (program.module()(images) - reference).abs().max() <= _tolerance(reference, "fp32")
