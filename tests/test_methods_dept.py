"""DePT against an independent rerun of the authors' statements (Koorye/DePT: ``trainers/
elp_coop.py``, ``elp_cocoop.py``, ``elp_kgcoop.py``, ``elp_maple.py``: FiLM, ``_forward_base``,
``_forward_logits_linear_probe``, ``_loss``, ``_forward_new``; ``trainers/optim.py`` staged lr) on
top of the wrapped method's unnormalised features (whose own exactness the method's tests show)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mudpt
from mudpt.methods import get_method_class
from mudpt.methods.dept import COMPOSITIONS, DEPT_BASES

CLASSES = ["golden retriever", "tabby cat", "fire truck"]
LABELS = torch.tensor([0, 2, 1, 2])
OPTIONS = {"coop": {"n_ctx": 4}, "cocoop": {"n_ctx": 2}, "kgcoop": {"n_ctx": 4, "weight": 2.0},
           "maple": {"n_ctx": 2, "depth": 2}}


def _images(vit, n=4, seed=1):
    return torch.randn(n, 3, vit.image_size, vit.image_size, generator=torch.Generator().manual_seed(seed))


def _perturbed(method):
    with torch.no_grad():  # FiLM starts at the identity: make every term visible
        for name, parameter in method.named_parameters():
            if name.startswith(("film_lp", "linear_probe_proj")):
                parameter.add_(0.1 * torch.randn_like(parameter))
    return method


def _their_film(x, film):
    return film.scale.unsqueeze(0).type(x.dtype) * x + film.bias.unsqueeze(0).type(x.dtype)


def _their_base_features(method, images):
    """The wrapped method's unnormalised text and image features (CoCoOp: per image)."""
    base = method.base
    if base.method_name == "cocoop":
        image = base.encode_images(images, base.compute_prompts())
        bias = base.meta_net(F.normalize(image, dim=-1))
        text = torch.stack([base.text_tower(base.class_tokens, [base.ctx + b]) for b in bias])
        return text, image
    prompts = base.compute_prompts()
    return base.encode_class_text(prompts), base.encode_images(images, prompts)


def _their_similarity(method, text, image):
    scale = method.clip.model.logit_scale.exp()
    image = image / image.norm(dim=-1, keepdim=True)
    if text.dim() == 3:  # _forward_logits_similarity of elp_cocoop: one text set per image
        return torch.stack([scale * i @ (t / t.norm(dim=-1, keepdim=True)).t() for t, i in zip(text, image)])
    return scale * image @ (text / text.norm(dim=-1, keepdim=True)).t()


@pytest.mark.parametrize("base", sorted(OPTIONS))
def test_loss_and_gradients_equal_the_authors(vit, base):
    torch.manual_seed(0)
    method = _perturbed(mudpt.create(f"dept_{base}", vit, CLASSES, base_options=OPTIONS[base])).train()
    images = _images(vit)
    out = method.training_step(images, LABELS)
    out["loss"].backward()
    ours = {name: p.grad.clone() for name, p in method.named_parameters()}
    method.zero_grad()

    text, image = _their_base_features(method, images)
    logits = _their_similarity(method, text, image)
    text_lp, image_lp = _their_film(text, method.film_lp_text), _their_film(image, method.film_lp_img)
    if text.dim() == 3:
        text_lp = torch.stack([t[label] for t, label in zip(text_lp, LABELS)])
    else:
        text_lp = text_lp[LABELS]
    logits_lp = method.linear_probe_proj(torch.cat([text_lp, image_lp]))
    loss = 0.3 * F.cross_entropy(logits, LABELS) + 0.7 * F.cross_entropy(logits_lp, torch.cat([LABELS, LABELS]))
    if base == "kgcoop":  # elp_kgcoop's _loss: + W * (1 - mean cos(text_feats, ori_embedding))
        old = method.base.frozen_text_features([method.base.settings.template])
        loss = loss + 2.0 * (1.0 - torch.nn.CosineSimilarity(dim=1, eps=1e-07)(text, old).mean())
    loss.backward()

    # what the method predicts (their _forward_base at inference): the fused logits
    assert torch.allclose(out["logits"], 0.3 * logits + 0.7 * logits_lp[len(LABELS):], atol=1e-4, rtol=1e-4)
    assert float(out["loss"].detach()) == pytest.approx(float(loss.detach()), abs=1e-5)
    for name, parameter in method.named_parameters():
        assert torch.allclose(ours[name], parameter.grad, atol=1e-5, rtol=1e-4), name
    assert {"film_lp_img.scale", "film_lp_text.bias", "linear_probe_proj.weight"} <= set(ours)
    assert any(name.startswith("base.") for name in ours)


@pytest.mark.parametrize("base", sorted(OPTIONS))
def test_inference_fuses_on_the_head_classes_and_uses_the_method_alone_elsewhere(vit, base):
    method = _perturbed(mudpt.create(f"dept_{base}", vit, CLASSES, base_options=OPTIONS[base])).eval()
    images = _images(vit, 3, seed=2)
    with torch.no_grad():
        text, image = _their_base_features(method, images)
        logits = _their_similarity(method, text, image)
        lp = method.linear_probe_proj(_their_film(image, method.film_lp_img))  # labels None: images only
        assert torch.allclose(method(images), 0.3 * logits + 0.7 * lp, atol=1e-4, rtol=1e-4)  # _forward_base

        method.set_classnames(["fire truck", "golden retriever"])  # a subset (ImageNet-A/-R): rows mapped
        text, image = _their_base_features(method, images)
        fused = 0.3 * _their_similarity(method, text, image) + 0.7 * lp[:, [2, 0]]
        assert torch.allclose(method(images), fused, atol=1e-4, rtol=1e-4)

        method.set_classnames(["sailboat", "tulip"])  # new classes: _forward_new, the method's logits
        text, image = _their_base_features(method, images)
        assert torch.allclose(method(images), _their_similarity(method, text, image), atol=1e-4, rtol=1e-4)
        assert torch.allclose(method(images), method.base(images), atol=1e-6)

        method.set_classnames(CLASSES)
        head_only = mudpt.create(f"dept_{base}", vit, CLASSES, base_options=OPTIONS[base], fusion=False).eval()
        head_only.load_learned_state_dict(method.learned_state_dict())
        assert torch.allclose(head_only(images), lp, atol=1e-5)  # TEST_TIME_FUSION False: logits_lp


def test_staged_learning_rate_and_the_presets_are_the_authors():
    from mudpt.engine.config import TrainConfig, load_config
    from mudpt.engine.trainer import _parameter_groups

    vit = mudpt.load_clip("test-vit-tiny")
    method = mudpt.create("dept_maple", vit, CLASSES, base_options={"depth": 2})
    groups = _parameter_groups(TrainConfig(lr=0.0035), method, method.trainable_parameters())
    names = {id(p): n for n, p in method.named_parameters()}
    assert [g["lr"] for g in groups] == [0.0035, pytest.approx(0.0035 * 6.5)]
    assert all(names[id(p)].startswith("base.") for p in groups[0]["params"])
    assert {names[id(p)].split(".")[0] for p in groups[1]["params"]} == {"film_lp_img", "film_lp_text",
                                                                          "linear_probe_proj"}
    expected = {"dept_coop/vit_b16_ep10_bs4_lr35": (0.0035, 4, {"n_ctx": 16}),
                "dept_cocoop/vit_b16_c4_ep10_batch1_ctxv1": (0.002, 1, {"n_ctx": 4, "ctx_init": "a photo of a"}),
                "dept_kgcoop/vit_b16_ep10_ctxv1_bs4_lr35": (0.0035, 4, {"n_ctx": 4, "ctx_init": "a photo of a",
                                                                        "weight": 2.0}),
                "dept_maple/vit_b16_c2_ep10_batch4_2ctx": (0.0035, 4, {"n_ctx": 2, "depth": 9,
                                                                       "ctx_init": "a photo of a"})}
    for name, (lr, batch, base_options) in expected.items():
        cfg = load_config(name)
        assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs, cfg.warmup_epochs, cfg.warmup_lr) == (
            "sgd", lr, batch, 10, 1, 1e-5), name
        assert cfg.method_options == {"base_options": base_options, "weight": 0.7, "head_lr_multiplier": 6.5}
        assert get_method_class(cfg.method).published_preset("base2new") == name


@pytest.mark.parametrize("base", DEPT_BASES)
def test_every_wrappable_method_trains_and_round_trips(vit, base, tmp_path):
    from mudpt.methods.learned import load_learned, save_learned

    method = mudpt.create("dept", vit, CLASSES, base=base)
    assert method.requires_vit(method.config) == get_method_class(base).requires_vit(method.config.base_config())
    method.train()
    out = method.training_step(_images(vit), LABELS)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and {"ce", "head_ce"} <= set(out["terms"])
    for name, parameter in method.trainable_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    method.eval()
    save_learned(method, tmp_path / "learned")
    loaded = load_learned(tmp_path / "learned", vit)
    images = _images(vit, 2, seed=3)
    with torch.no_grad():
        assert torch.equal(loaded(images), method(images))


def test_options_are_checked_against_the_wrapped_method(vit):
    with pytest.raises(mudpt.UserError, match=r"base_options.*n_ctx") as error:
        mudpt.create("dept", vit, CLASSES, base="maple", base_options={"n_ctx": 0})
    assert error.value.field == "method_options.base_options.n_ctx"
    with pytest.raises(mudpt.UserError, match=r"bogus"):
        mudpt.create("dept", vit, CLASSES, base="coop", base_options={"bogus": 1})
    with pytest.raises(mudpt.UserError, match=r"base=.prograd."):
        mudpt.create("dept", vit, CLASSES, base="prograd")
    with pytest.raises(mudpt.UserError, match=r"base=.coop."):
        mudpt.create("dept_maple", vit, CLASSES, base="coop")  # a composition's base is its name's
    # the wrapped method's dataset templates follow the dataset (KgCoOp's hand-crafted one)
    config = mudpt.make_config("dept_kgcoop", {}).for_dataset("oxford_pets")
    assert config.base_options == {"dataset": "oxford_pets"}
    assert sorted(COMPOSITIONS) == ["cocoop", "coop", "kgcoop", "maple", "mudpt", "promptsrc"]
    # the command line's --set reaches into the wrapped method's options
    from mudpt.engine.config import load_config
    cfg = load_config("dept_maple/vit_b16_c2_ep10_batch4_2ctx", overrides={"method_options.base_options.depth": "3"})
    assert cfg.method_options["base_options"] == {"n_ctx": 2, "depth": 3, "ctx_init": "a photo of a"}
    assert get_method_class("dept_maple").label == "MaPLe + DePT"
