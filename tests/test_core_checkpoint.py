"""Learned state: save, load into a fresh model, class changes, incompatible backbones."""

import json
import os

import pytest
import torch

import mudpt
from mudpt.methods.base import FitContext
from mudpt.methods.learned import FORMAT, read_learned

CLASSES = ["dog", "cat", "fire_truck"]


@pytest.fixture(scope="module")
def vit():
    return mudpt.load_clip("test-vit-tiny")


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _trained(method, images):
    """Fitted on the images (methods that fit), then one SGD step so that the learned tensors
    differ from any fresh initialisation."""
    # a no-op unless it fits; every class gets an image (GDA needs each class's mean)
    fit_images = torch.cat([images] * -(-len(method.classnames) // len(images)))[:len(method.classnames)]
    method.fit(FitContext.from_tensors(method, fit_images, list(range(len(method.classnames))), note=lambda text: None))
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


# Every option form a saved run can have, per method: dataset templates, explicit templates, an
# init phrase or none, CSC, class positions, depth defaults and explicit depths, both vision
# settings of IVLP, the injection variants. The coverage test below keeps it complete.
OPTION_FORMS = {
    "zsclip": [{}, {"dataset": "oxford_pets"}, {"templates": "a {} texture."}, {"templates": ["{}", "a photo of a {}."]}],
    "coop": [{}, {"ctx_init": "a photo of a"}, {"n_ctx": 4, "csc": True}, {"ctx_init": "a photo of a", "csc": True},
             {"n_ctx": 4, "class_token_position": "middle"}, {"ctx_init": "a photo of a", "class_token_position": "front"}],
    "cocoop": [{}, {"ctx_init": None, "n_ctx": 3}],
    "vpt": [{}, {"n_ctx": 4, "depth": 2}],
    "ivlp": [{}, {"depth": 2, "depth_vision": 1, "n_ctx_vision": 3}, {"n_ctx": 4, "n_ctx_vision": 0},
             {"ctx_init": None}],
    "maple": [{}, {"depth": 2}, {"n_ctx": 3, "ctx_init": None}],
    "mudpt": [{}, {"injection": "linear", "n_ctx": 3}, {"injection_width": 32, "injection_layers": 2, "injection_heads": 2},
              {"depth": 2, "ctx_init": None}],
    "kgcoop": [{}, {"dataset": "dtd", "weight": 2.0}, {"template": "a {} photo.", "ctx_init": None, "n_ctx": 3,
                                                       "class_token_position": "middle", "csc": True}],
    "prograd": [{}, {"dataset": "oxford_pets"}, {"template": "a {}.", "n_ctx": 4, "init_from_template": False,
                                                 "grad_lambda": 0.5, "temperature": 2.0}],
    "promptsrc": [{}, {"depth": 2, "depth_vision": 1, "n_ctx_vision": 2, "ctx_init": None, "text_loss_weight": 1.0,
                       "image_loss_weight": 2.0, "gpa_mean": 2.0, "gpa_std": 3.0}],
    "linear_probe": [{}, {"normalize": False, "steps": 1, "max_iter": 50}],
    "clip_adapter": [{}, {"dataset": "dtd", "reduction": 2, "ratio": 0.5}, {"template": "a {} photo."}],
    "gda": [{}, {"dataset": "imagenet", "augment_epochs": 2, "alphas": [0.5, 2.0]},
            {"templates": ["a {}.", "{}"], "search": False, "init_alpha": 3.0, "logit_scale": None},
            {"covariance": "pooled", "neighbours": 3, "text_repeats": 2}],
    "lpp": [{}, {"dataset": "imagenet", "steps": 5, "alpha_every": 2},
            {"templates": ["a {}.", "{}"], "alpha_gradient": "current", "init_scale": 10.0, "momentum": 0.5,
             "select_on_validation": False}],
    "clap": [{}, {"dataset": "imagenet", "augment_epochs": 2, "epochs": 3, "batch_size": 4, "lr": 0.05},
             {"templates": "a {}.", "constraint": False, "momentum": 0.0, "weight_decay": 1e-4, "warmup_epochs": 0,
              "warmup_lr": 1e-3}, {"multipliers": "corrected", "outer_steps": True}, {"multipliers": "balanced"},
             {"multipliers": "constant"}],
    "tcp": [{"layer": 2}, {"layer": 1, "dataset": "oxford_pets", "n_ctx": 2, "weight": 2.0},
            {"layer": 2, "template": "X X {} thing.", "frozen_template": "a {}."}],
    "mma": [{}, {"start": 1, "end": 2, "dim": 4, "scale": 0.5, "template": "a {} photo."}],
    "coprompt": [{}, {"dataset": "oxford_pets", "weight": 3.0, "distill": "mse", "image_ratio": 0.5,
                      "text_ratio": 0.0, "reduction": 2, "descriptions": "/nowhere/descriptions.json"}],
    "dept": [{}, {"base": "maple", "base_options": {"depth": 2}, "weight": 0.5, "film": False, "fusion": False,
                  "head_lr_multiplier": 1.0}],
    **{f"dept_{base}": [{}, {"base": base, "base_options": options, "weight": 0.5, "film": False, "fusion": False,
                             "head_lr_multiplier": 2.0}]
       for base, options in (("coop", {"n_ctx": 2, "csc": True}), ("cocoop", {"n_ctx": 2}), ("kgcoop", {"weight": 1.0}),
                             ("maple", {"depth": 2}), ("promptsrc", {"depth": 2}), ("mudpt", {"depth": 2}))},
    "clip_lora": [{}, {"r": 3, "alpha": 2.0, "dropout_rate": 0.0, "params": ["q", "o"], "position": "top3"},
                  {"encoder": "text", "template": "a {} photo.", "logit_scale": None},
                  {"encoder": "vision", "position": "half-bottom"}],
    "tip_adapter": [{}, {"dataset": "oxford_flowers", "augment_epochs": 2, "logit_scale": None}, {"templates": ["a {}.", "{}"],
                     "search": False, "init_alpha": 2.0, "init_beta": 3.0, "search_scale": [2.0, 2.0],
                     "search_step": [3, 2]}],
    "tip_adapter_f": [{}, {"dataset": "imagenet_r", "search": False, "logit_scale": 50.0}, {"templates": "a {}.", "augment_epochs": 2,
                       "init_alpha": 0.5, "init_beta": 2.0, "search_scale": [3.0, 2.0], "search_step": [4, 3]}],
}
FORMS = [(name, options) for name, forms in OPTION_FORMS.items() for options in forms]


def test_option_forms_cover_every_method_and_option():
    assert sorted(OPTION_FORMS) == mudpt.available_methods()
    for name, forms in OPTION_FORMS.items():
        given = {key for options in forms for key in options}
        options = set(mudpt.methods.get_method_class(name).Config.option_names())
        assert options <= given | {"ctx_init", "n_ctx", "depth"}, (name, options - given)


@pytest.mark.parametrize("name,options", FORMS)
def test_save_load_gives_the_same_logits(tmp_path, vit, images, name, options):
    method = _trained(mudpt.create(name, vit, CLASSES, **options), images)
    tensor_path, json_path = mudpt.save_learned(method, tmp_path / "run" / "learned")
    assert tensor_path.endswith("learned.safetensors") and os.path.isfile(json_path)
    assert sorted(os.listdir(tmp_path / "run")) == ["learned.json", "learned.safetensors"]  # no temp leftovers
    meta = json.loads(open(json_path).read())
    # What is saved is the user's config (plus the version), not the values derived from it.
    assert meta == {"format": FORMAT, "mudpt_version": mudpt.__version__, "method": name,
                    "config": {**mudpt.make_config(name).to_dict(), **options}, "classnames": CLASSES,
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


def test_format_1_files_with_resolved_options_still_load(tmp_path, vit, images):
    """Format 1 saved the resolved options: for zero-shot CLIP on a benchmark that was both the
    dataset and its templates, which the typed config refuses together."""
    method = mudpt.create("zsclip", vit, CLASSES, dataset="oxford_pets").eval()
    mudpt.save_learned(method, tmp_path / "learned")
    meta = json.loads((tmp_path / "learned.json").read_text())
    old = {"format": "mudpt-learned/1", "method": "zsclip", "classnames": CLASSES, "backbone": meta["backbone"],
           "options": {"templates": ["a photo of a {}, a type of pet."], "dataset": "oxford_pets"}}
    (tmp_path / "learned.json").write_text(json.dumps(old))
    loaded = mudpt.load_learned(tmp_path / "learned")
    assert loaded.settings.templates == ["a photo of a {}, a type of pet."]
    with torch.no_grad():
        assert torch.allclose(loaded(images), method(images), atol=1e-6)


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


def test_a_file_from_a_newer_version_with_an_unknown_option_loads_with_a_warning(tmp_path, vit, images):
    """As peft does with a newer adapter config: options this version does not know are
    dropped with a warning naming them and the writing version, not a hard error."""
    method = _trained(mudpt.create("coop", vit, CLASSES, n_ctx=4), images)
    mudpt.save_learned(method, tmp_path / "learned")
    meta = json.loads((tmp_path / "learned.json").read_text())
    meta["config"]["future_option"] = 3
    meta["mudpt_version"] = "9.0.0"
    (tmp_path / "learned.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=r"mudpt 9\.0\.0\) has option\(s\) \['future_option'\]"):
        loaded = mudpt.load_learned(tmp_path / "learned", clip=vit)
    with torch.no_grad():
        assert torch.allclose(loaded(images), method(images), atol=1e-5)
