"""CoPrompt against an independent rerun of the authors' statements (ShuvenduRoy/CoPrompt:
``trainers/coprompt.py`` Adapter, CustomCLIP.forward, gpt_clip_classifier; ``trainers/
constants.py``), with MaPLe's prompted towers run on their plain path (MaPLe's own exactness is
shown by its tests), frozen CLIP by open_clip's own ``encode_image`` / ``encode_text``."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

import mudpt
from mudpt.core import towers
from mudpt.methods import get_method_class, make_config

CLASSES = ["golden retriever", "tabby cat", "fire truck"]
LABELS = torch.tensor([0, 2, 1, 2])
DESCRIPTIONS = {"golden retriever": ["a friendly dog with golden fur.", "a large dog that fetches.",
                                     "a retriever on a lawn."],
                "tabby cat": ["a striped cat.", "a cat with an M on its forehead.", "a small tabby."],
                "fire truck": ["a red truck with a ladder.", "an engine of the fire brigade.", "a siren on a truck."]}


@pytest.fixture
def descriptions(tmp_path):
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps(DESCRIPTIONS))
    return str(path)


def _their_adapter(x, adapter):
    """Adapter.fc: Linear(no bias), ReLU, Linear(no bias), ReLU."""
    return F.relu(F.relu(x @ adapter[0].weight.t()) @ adapter[2].weight.t())


def _their_features(method, vit, images):
    """CustomCLIP.forward up to the logits, MaPLe's towers on their plain path."""
    text_prompts = list(method.text_prompts)
    vision_prompts = [projection(p) for projection, p in zip(method.vision_projections, text_prompts)]
    text = towers.encode_text(vit.model, method.class_tokens, text_prompts, truncate=False)
    image = towers.encode_image(vit.model, images, vision_prompts, cls_only_last_block=False)
    image = 0.1 * _their_adapter(image, method.adapter_image) + 0.9 * image
    text = 0.2 * _their_adapter(text, method.adapter_text) + 0.8 * text
    return text / text.norm(dim=-1, keepdim=True), image / image.norm(dim=-1, keepdim=True)


def _their_clip_weights(vit):
    """gpt_clip_classifier: per class, frozen CLIP's normalised features of its sentences, stacked
    on dim 1 (sentences, C, D)."""
    with torch.no_grad():
        weights = [F.normalize(vit.model.encode_text(vit.tokenizer(DESCRIPTIONS[c])), dim=-1) for c in CLASSES]
    return torch.stack(weights, dim=1)


@pytest.mark.parametrize("distill", ["cosine", "mse"])
def test_loss_and_gradients_equal_the_authors(vit, descriptions, distill):
    torch.manual_seed(0)
    method = mudpt.create("coprompt", vit, CLASSES, descriptions=descriptions, depth=2, weight=2.0, distill=distill)
    method.train()
    views = torch.randn(4, 2, 3, vit.image_size, vit.image_size, generator=torch.Generator().manual_seed(1))
    random.seed(5)
    out = method(views, LABELS)
    out["loss"].backward()
    ours = {name: p.grad.clone() for name, p in method.named_parameters()}
    method.zero_grad()

    random.seed(5)
    clip_weights = _their_clip_weights(vit)
    text, image = _their_features(method, vit, views[:, 0])
    logits = vit.model.logit_scale.exp() * image @ text.t()
    pre_text = clip_weights[random.randint(0, clip_weights.shape[0] - 1)]
    pre_text = pre_text / pre_text.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        pre_image = vit.model.encode_image(views[:, 1])
    pre_image = pre_image / pre_image.norm(dim=-1, keepdim=True)
    if distill == "cosine":
        cos = torch.nn.CosineSimilarity(dim=1, eps=1e-07)
        distill_loss = (1.0 - torch.mean(cos(text, pre_text))) + (1.0 - torch.mean(cos(image, pre_image)))
    else:
        distill_loss = F.mse_loss(text, pre_text) + F.mse_loss(image, pre_image)
    loss = F.cross_entropy(logits, LABELS) + 2.0 * distill_loss
    loss.backward()

    assert torch.allclose(out["logits"], logits, atol=1e-4, rtol=1e-4)
    assert float(out["loss"].detach()) == pytest.approx(float(loss.detach()), abs=1e-5)
    assert float((out["terms"]["text"] + out["terms"]["image"])) == pytest.approx(float(distill_loss.detach()), abs=1e-5)
    for name, parameter in method.named_parameters():
        assert torch.allclose(ours[name], parameter.grad, atol=1e-5, rtol=1e-4), name
    assert {"adapter_image.0.weight", "adapter_text.2.weight", "text_prompts.0", "vision_projections.1.weight"} <= set(ours)


def test_inference_uses_the_adapters_and_needs_no_descriptions(vit, descriptions, tmp_path):
    from mudpt.methods.learned import load_learned, save_learned

    method = mudpt.create("coprompt", vit, CLASSES, descriptions=descriptions, depth=2).eval()
    with torch.no_grad():
        for parameter in method.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    images = torch.randn(2, 3, vit.image_size, vit.image_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        text, image = _their_features(method, vit, images)
        assert torch.allclose(method(images), vit.model.logit_scale.exp() * image @ text.t(), atol=1e-4, rtol=1e-4)
    save_learned(method, tmp_path / "learned")
    (tmp_path / "descriptions.json").unlink()  # evaluating and new classes need no descriptions
    loaded = load_learned(tmp_path / "learned", vit, classnames=["sailboat", "tulip"])
    with torch.no_grad():
        assert loaded(images).shape == (2, 2) and torch.isfinite(loaded(images)).all()


def test_descriptions_are_found_matched_and_checked(vit, tmp_path):
    from mudpt.methods.coprompt import read_descriptions

    folder = tmp_path / "data" / "oxford_pets"
    folder.mkdir(parents=True)
    config = make_config("coprompt", {})
    with pytest.raises(mudpt.UserError, match=r"found none beside the dataset.*oxford_pets/descriptions.json"):
        config.for_dataset("oxford_pets", str(folder))  # nothing there: said before training starts
    gpt = tmp_path / "data" / "gpt_file"
    gpt.mkdir()
    (gpt / "oxford_pets_prompt.json").write_text(json.dumps(DESCRIPTIONS))  # the authors' layout, beside
    assert config.for_dataset("oxford_pets", str(folder)).descriptions == str((gpt / "oxford_pets_prompt.json").resolve())
    (folder / "caltech_prompt.json").write_text("{}")  # their stem for Caltech101, in the folder
    assert config.for_dataset("caltech101", str(folder)).descriptions.endswith("caltech_prompt.json")
    (folder / "descriptions.json").write_text("{}")  # descriptions.json first
    assert config.for_dataset("oxford_pets", str(folder)).descriptions.endswith("oxford_pets/descriptions.json")

    # class names match as written, with spaces for underscores, or in lower case
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps({"Golden Retriever": ["a dog."], "tabby cat": ["a cat.", "a tabby."]}))
    assert read_descriptions(str(mixed), ["golden_retriever", "tabby cat"]) == [["a dog."], ["a cat.", "a tabby."]]
    with pytest.raises(mudpt.UserError, match=r"mixed.json: 1 of the 3 classes have no descriptions.*fire truck"):
        read_descriptions(str(mixed), CLASSES)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(mudpt.UserError, match=r"bad.json: .*JSON object"):
        read_descriptions(str(bad), CLASSES)
    bad.write_text("{oops")
    with pytest.raises(mudpt.UserError, match=r"bad.json: not valid JSON"):
        read_descriptions(str(bad), CLASSES)
    with pytest.raises(mudpt.UserError, match=r"nowhere.json") as error:
        read_descriptions(str(tmp_path / "nowhere.json"), CLASSES)
    assert error.value.field == "method_options.descriptions"
    method = mudpt.create("coprompt", vit, CLASSES, depth=2).train()
    views = torch.randn(2, 2, 3, vit.image_size, vit.image_size)
    with pytest.raises(mudpt.UserError, match=r"descriptions.*gpt_file format"):
        method(views, torch.tensor([0, 1]))


def test_unequal_sentence_counts_repeat_cyclically(vit, tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"golden retriever": ["a dog.", "a retriever."], "tabby cat": ["a cat."],
                                "fire truck": ["a truck.", "a red truck.", "a siren."]}))
    method = mudpt.create("coprompt", vit, CLASSES, descriptions=str(path), depth=2)
    features = method.description_features()
    assert features.shape == (3, 3, vit.embed_dim)
    with torch.no_grad():
        cat = F.normalize(vit.model.encode_text(vit.tokenizer(["a cat."])), dim=-1)[0]
        dog = F.normalize(vit.model.encode_text(vit.tokenizer(["a dog."])), dim=-1)[0]
    assert torch.allclose(features[2, 1], cat, atol=1e-5) and torch.allclose(features[2, 0], dog, atol=1e-5)


def test_dataset_settings_and_presets_are_the_authors(vit):
    from mudpt.engine.config import load_config

    pets = make_config("coprompt", {}).for_dataset("oxford_pets")
    assert pets.dataset == "oxford_pets"
    resolved = pets.resolve(_Layers(12, 12))
    assert (resolved.depth, resolved.n_ctx, resolved.weight) == (12, 2, 0.1)
    assert (make_config("coprompt", {}).for_dataset("food101").resolve(_Layers(12, 12)).weight) == 0.5
    own = make_config("coprompt", {"n_ctx": 3, "weight": 0.0}).for_dataset("imagenet").resolve(_Layers(12, 12))
    assert (own.depth, own.n_ctx, own.weight) == (12, 3, 0.0)  # the user's values win
    default = make_config("coprompt", {}).resolve(_Layers(12, 12))
    assert (default.depth, default.n_ctx, default.weight) == (9, 2, 1.0)  # coprompt.yaml's
    assert mudpt.create("coprompt", vit, CLASSES).settings.depth == 3  # capped at the tiny towers' blocks
    cfg = load_config("coprompt/vit_b16")
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs, cfg.warmup_epochs, cfg.precision) == (
        "sgd", 0.0035, 4, 8, 1, "fp16")
    assert load_config("coprompt/vit_b16_food101").epochs == 5
    cls = get_method_class("coprompt")
    assert (cls.train_augment, cls.train_views) == ("randaugment", 2)


class _Layers:
    def __init__(self, text, vision):
        self.text_layers, self.vision_layers, self.name = text, vision, "vit-b-16"


def test_the_training_transform_draws_two_randaugment_views():
    from PIL import Image
    from torchvision import transforms as T

    from mudpt.data import build_transform

    class Backbone:
        image_size, mean, std, extra = 32, (0.5,) * 3, (0.5,) * 3, {}

    image = Image.fromarray((torch.rand(40, 50, 3) * 255).byte().numpy())
    transform = build_transform(Backbone(), train=True, augment="randaugment", views=2)
    torch.manual_seed(0)
    views = transform(image)
    assert views.shape == (2, 3, 32, 32) and not torch.equal(views[0], views[1])
    steps = transform.transform.transforms
    assert any(isinstance(t, T.RandAugment) and t.num_ops == 2 and t.magnitude == 10 for t in steps)
    assert any(isinstance(t, T.Resize) and t.size == (32, 32) for t in steps)  # Dassl's resize, no crop

    world = mudpt.load_clip("world-tiny")  # labels that are colours, sizes and positions: its own transform
    steps = build_transform(world, train=True, augment="randaugment", views=2).transform.transforms
    assert not any(isinstance(t, (T.RandAugment, T.RandomResizedCrop, T.RandomHorizontalFlip)) for t in steps)
    with pytest.raises(ValueError, match="augment"):
        build_transform(Backbone(), train=True, augment="mixup")


def test_the_world_writes_descriptions_in_the_authors_layout(tmp_path):
    from mudpt.world import datasets as D

    root = D.generate_all(tmp_path / "world", seed=0, scale="small", names=["world_shape"], progress=False)
    path = D.descriptions_path("world_shape", root)
    data = json.loads(path.read_text())
    assert sorted(data) == sorted(D.WORLD_DATASETS["world_shape"].classnames)
    assert all(len(v) == D.DESCRIPTIONS_PER_CLASS and all(s.endswith(".") for s in v) for v in data.values())
    assert data == D.class_descriptions("world_shape", seed=0)  # deterministic
    path.unlink()  # a world made before descriptions existed gets them on its next use
    mudpt.data.load_dataset("world_shape", root=str(root), shots=1)
    assert json.loads(path.read_text()) == data
    config = make_config("coprompt", {}).for_dataset("world_shape", str(root))
    assert config.descriptions == str(path.resolve())
