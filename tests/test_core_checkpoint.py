"""Learned state: save, load into a fresh model, class changes, incompatible backbones."""

import json
import os

import pytest
import torch

import mudpt
from mudpt.checkpoint import FORMAT, read_learned

CLASSES = ["dog", "cat", "fire_truck"]


@pytest.fixture(scope="module")
def vit():
    return mudpt.load_clip("test-vit-tiny")


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _trained(method, images):
    """One SGD step so that the learned tensors differ from any fresh initialisation."""
    if not method.trainable_parameters():
        return method.eval()
    optimizer = torch.optim.SGD([p for _, p in method.trainable_parameters()], lr=0.5)
    with torch.no_grad():
        for _, parameter in method.trainable_parameters():
            if not parameter.any():
                parameter.normal_(std=0.05)
    torch.nn.functional.cross_entropy(method.train()(images), torch.tensor([0, 1])).backward()
    optimizer.step()
    return method.eval()


@pytest.mark.parametrize("name,options", [
    ("mudpt", {}), ("mudpt", {"injection": "linear", "n_ctx": 3}), ("coop", {"csc": True, "n_ctx": 4}),
    ("cocoop", {}), ("maple", {"depth": 2}), ("vpt", {"n_ctx": 4}), ("ivlp", {}), ("zsclip", {"templates": ["{}"]}),
])
def test_save_load_gives_the_same_logits(tmp_path, vit, images, name, options):
    method = _trained(mudpt.create(name, vit, CLASSES, **options), images)
    tensor_path, json_path = mudpt.save_learned(method, tmp_path / "run" / "learned")
    assert tensor_path.endswith("learned.safetensors") and os.path.isfile(json_path)
    assert sorted(os.listdir(tmp_path / "run")) == ["learned.json", "learned.safetensors"]  # no temp leftovers
    meta = json.loads(open(json_path).read())
    assert meta == {"format": FORMAT, "method": name, "options": method.options, "classnames": CLASSES,
                    "backbone": {"name": "test-vit-tiny", "pretrained": None}}
    _, tensors = read_learned(tmp_path / "run" / "learned.json")
    assert sorted(tensors) == sorted(method.learned_state_dict())  # learned tensors only, no backbone
    loaded = mudpt.load_learned(tmp_path / "run" / "learned")  # backbone rebuilt from the JSON
    assert loaded.method_name == name and loaded.options == method.options and loaded.classnames == CLASSES
    with torch.no_grad():
        assert torch.allclose(loaded(images), method(images), atol=1e-5)
    on_same_clip = mudpt.load_learned(str(tensor_path), clip=vit)
    with torch.no_grad():
        assert torch.allclose(on_same_clip(images), method(images), atol=1e-5)


def test_loaded_method_switches_classes_and_keeps_tensors(tmp_path, vit, images):
    method = _trained(mudpt.create("mudpt", vit, CLASSES), images)
    mudpt.save_learned(method, tmp_path / "learned")
    loaded = mudpt.load_learned(tmp_path / "learned", clip=vit, classnames=["apple", "pear"])
    assert loaded.classnames == ["apple", "pear"]
    with torch.no_grad():
        assert loaded(images).shape == (2, 2)
    saved = method.learned_state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in loaded.learned_state_dict().items())


def test_loading_onto_an_incompatible_backbone_names_both_shapes(tmp_path, vit, images):
    method = mudpt.create("coop", vit, CLASSES, n_ctx=4)
    mudpt.save_learned(method, tmp_path / "learned")
    other = mudpt.load_clip("test-rn-tiny")
    other.model.token_embedding = torch.nn.Embedding(49408, 32)  # a text tower of another width
    other.text_width = 32
    with pytest.raises(ValueError, match=r"'ctx' has shape \(4, 64\).*\(4, 32\).*test-vit-tiny"):
        mudpt.load_learned(tmp_path / "learned", clip=other)


def test_backbone_weights_gone_suggests_passing_clip(tmp_path, vit):
    weights = tmp_path / "tiny.pt"
    torch.save(vit.model.state_dict(), weights)
    clip = mudpt.load_clip("test-vit-tiny", pretrained=str(weights))
    mudpt.save_learned(mudpt.create("coop", clip, CLASSES, n_ctx=2), tmp_path / "learned")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"tiny.pt.*pass clip=mudpt.load_clip\('test-vit-tiny'"):
        mudpt.load_learned(tmp_path / "learned")
    assert mudpt.load_learned(tmp_path / "learned", clip=vit).ctx.shape == (2, 64)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        mudpt.load_learned(tmp_path / "nothing")
    (tmp_path / "foreign.json").write_text(json.dumps({"format": "something-else"}))
    (tmp_path / "foreign.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a mudpt learned state"):
        mudpt.load_learned(tmp_path / "foreign")
