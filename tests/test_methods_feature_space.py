"""The feature-space baselines (linear probe, CLIP-Adapter, Tip-Adapter(-F)), MuDPT's released
attention variant and prompt interpretation: their computations, searches, caches and wiring."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mudpt
from mudpt.core.errors import ConfigError
from mudpt.methods.base import FitContext
from mudpt.methods.linear_probe import INITIAL_GRID, search_c
from mudpt.methods.tip_adapter import search_values

CLASSES = ["golden retriever", "tabby cat", "fire truck", "tulip"]
BACKBONE_DIM = 64  # test-vit-tiny's embedding width


def _quiet(text):
    pass


@pytest.fixture(scope="module")
def images():
    return torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))


LABELS = [0, 1, 2, 3, 0, 1, 2, 3]


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    from test_engine_support import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("data") / "colours")


# ---------------------------------------------------------------------------------------------
# Linear probe
# ---------------------------------------------------------------------------------------------
def _blobs(n_per_class: int, classes: int, dim: int, separation: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = np.eye(classes, dim) * separation
    x = np.concatenate([centres[c] + rng.normal(size=(n_per_class, dim)) for c in range(classes)])
    y = np.repeat(np.arange(classes), n_per_class)
    return x.astype(np.float32), y


def _feature_context(train_x, train_y, val_x, val_y):
    """A FitContext whose "images" are given features."""
    from mudpt.methods.hooks import _TensorItem

    splits = {"train": torch.as_tensor(train_x), "val": torch.as_tensor(val_x)}
    items = {name: [_TensorItem(f"{name}:{i}", int(label), name) for i, label in enumerate(labels)]
             for name, labels in (("train", train_y), ("val", val_y))}

    def image_features(chosen, augment=False, views=1, crop_scale=None):
        index = torch.as_tensor([int(item.path.split(":")[1]) for item in chosen])
        return splits[chosen[0].split][index].unsqueeze(0).expand(views, -1, -1).clone()

    return FitContext(items["train"], items["val"], image_features, _quiet)


def test_linear_probe_separates_separable_features_and_predicts_as_scikit_learn(vit):
    from sklearn.linear_model import LogisticRegression

    dim = vit.embed_dim
    train_x, train_y = _blobs(16, 4, dim, separation=6.0, seed=0)
    val_x, val_y = _blobs(4, 4, dim, separation=6.0, seed=1)
    test_x, test_y = _blobs(50, 4, dim, separation=6.0, seed=2)
    method = mudpt.create("linear_probe", vit, CLASSES, steps=2, normalize=False)
    method.fit(_feature_context(train_x, train_y, val_x, val_y))
    logits = torch.as_tensor(test_x) @ method.weight.t() + method.bias
    # Unit-variance blobs 6 apart: the Bayes error is ~0.1% per pair; the probe is near it.
    assert float((logits.argmax(1).numpy() == test_y).mean()) >= 0.99
    reference = LogisticRegression(solver="lbfgs", max_iter=1000, C=float(method.c)).fit(train_x, train_y)
    assert np.array_equal(logits.argmax(1).numpy(), reference.predict(test_x))
    assert torch.allclose(logits.softmax(1), torch.as_tensor(reference.predict_proba(test_x), dtype=torch.float32),
                          atol=1e-5)


class _Stub:
    """A classifier whose validation accuracy is a known function of C."""

    def __init__(self, c):
        self.c = c


def test_the_c_search_is_coops_and_finds_the_known_optimum():
    optimum = 10 ** 2.37  # between the grid's 1e2 and 1e4, nearer 1e2

    def fit(x, y, c, max_iter):
        return _Stub(c)

    def accuracy_of(c):  # unimodal in log10(C), peak at the optimum
        return 1.0 - 0.01 * (math.log10(c) - math.log10(optimum)) ** 2

    import mudpt.methods.linear_probe as lp

    original = lp._accuracy
    lp._accuracy = lambda classifier, x, y: accuracy_of(classifier.c)
    try:
        c, final, trace = search_c(None, None, None, None, steps=8, fit=fit)
    finally:
        lp._accuracy = original
    # The grid first (its peak 1e2), then 8 rounds of two fits each between 0.1x and 10x the peak.
    assert [t[0] for t in trace[:len(INITIAL_GRID)]] == list(INITIAL_GRID)
    assert len(trace) == len(INITIAL_GRID) + 2 * 8
    assert trace[len(INITIAL_GRID)][0] == pytest.approx(10.0) and trace[len(INITIAL_GRID) + 1][0] == pytest.approx(1e3)
    # Each round halves the interval in log10: after 8 the choice is within 2 / 2^7 decades.
    assert abs(math.log10(c) - 2.37) < 2 / 2 ** 7 and final.c == c


def _coop_search(train_x, train_y, val_x, val_y, num_step=8):
    """CoOp's lpclip/linear_probe.py search, rewritten from its statements on the float64 arrays
    its feat_extractor.py writes: ``(c_final, clf_final, [acc_list])``."""
    from sklearn.linear_model import LogisticRegression

    search_list = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    acc_list = []
    for c_weight in search_list:
        clf = LogisticRegression(solver="lbfgs", max_iter=1000, C=c_weight).fit(train_x, train_y)  # penalty l2
        acc_list.append(sum(clf.predict(val_x) == val_y) / len(val_y))
    c_peak = search_list[np.argmax(acc_list)]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    for _ in range(num_step):
        clf_left = LogisticRegression(solver="lbfgs", max_iter=1000, C=c_left).fit(train_x, train_y)
        acc_left = sum(clf_left.predict(val_x) == val_y) / len(val_y)
        clf_right = LogisticRegression(solver="lbfgs", max_iter=1000, C=c_right).fit(train_x, train_y)
        acc_right = sum(clf_right.predict(val_x) == val_y) / len(val_y)
        if acc_left < acc_right:
            c_final, clf_final = c_right, clf_right
            c_left, c_right = 0.5 * (np.log10(c_right) + np.log10(c_left)), np.log10(c_right)
        else:
            c_final, clf_final = c_left, clf_left
            c_left, c_right = np.log10(c_left), 0.5 * (np.log10(c_right) + np.log10(c_left))
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return c_final, clf_final, acc_list


def test_linear_probe_fits_in_float64_as_coops_script_on_features_where_c_matters(vit):
    # Overlapping blobs, 4 shots: the validation accuracy changes with C, so the search's path and
    # its final C depend on every fit (separable features would give 100 % at every C). On these
    # features a float32 fit takes another path: C 1e-5 instead of float64's 1e-7.
    train_x, train_y = _blobs(4, 4, vit.embed_dim, separation=1.0, seed=1)
    val_x, val_y = _blobs(4, 4, vit.embed_dim, separation=1.0, seed=11)
    c, clf, grid = _coop_search(train_x.astype(np.float64), train_y, val_x.astype(np.float64), val_y)
    assert len(set(grid)) >= 3, "C must matter on this data"
    assert _coop_search(train_x, train_y, val_x, val_y)[0] != pytest.approx(c), "float32 must matter on this data"
    method = mudpt.create("linear_probe", vit, CLASSES, normalize=False)
    method.fit(_feature_context(train_x, train_y, val_x, val_y))
    assert float(method.c) == pytest.approx(c, rel=1e-12)
    # float64 coefficients stored as float32: equal to float32 rounding (a float32 fit is not)
    assert np.allclose(method.weight.numpy(), clf.coef_, rtol=1e-6, atol=1e-7)
    assert np.allclose(method.bias.numpy(), clf.intercept_, rtol=1e-6, atol=1e-7)


def test_linear_probe_scores_subsets_of_its_classes_and_refuses_others(vit, images):
    method = mudpt.create("linear_probe", vit, CLASSES, steps=1, max_iter=200)
    method.fit(FitContext.from_tensors(method, images, LABELS, note=_quiet))
    with torch.no_grad():
        full = method(images)
        method.set_classnames(["fire truck", "golden retriever"])
        assert torch.allclose(method(images), full[:, [2, 0]])
        with pytest.raises(ConfigError, match=r"fitted on 4 classes.*1 of the 2 classes.*not among them \(zebra\)"):
            method.set_classnames(["tulip", "zebra"])


def test_feature_cache_is_reused_and_keyed_by_backbone(colours, tmp_path, vit, resnet):
    from mudpt.data import load_dataset
    from mudpt.engine.features import FeatureExtractor

    data = load_dataset(str(colours), shots=2, seed=1)
    first = FeatureExtractor(vit, "cpu", root=tmp_path)
    features = first(data.train)
    assert first.extractions == 1 and features.shape == (1, len(data.train), vit.embed_dim)
    again = FeatureExtractor(vit, "cpu", root=tmp_path)  # a later run: read from disk
    assert torch.equal(again(data.train), features) and again.extractions == 0
    again(data.val)  # another split is other items: extracted once
    assert again.extractions == 1
    views = again(data.train, augment=True, views=2, crop_scale=(0.5, 1.0))  # augmented views: their own entry
    assert again.extractions == 2 and views.shape[0] == 2 and not torch.equal(views[0], views[1])
    other = FeatureExtractor(resnet, "cpu", root=tmp_path)  # another backbone never reuses them
    assert other(data.train).shape[2] == resnet.embed_dim and other.extractions == 1
    weights = tmp_path / "other-weights.pt"
    state = {k: v.clone() for k, v in vit.model.state_dict().items()}
    state["visual.proj"] *= 2.0
    torch.save(state, weights)
    reweighted = FeatureExtractor(mudpt.load_clip("test-vit-tiny", pretrained=str(weights)), "cpu", root=tmp_path)
    assert not torch.equal(reweighted(data.train), features) and reweighted.extractions == 1  # other weights


def test_linear_probe_runs_reuse_cached_features_across_runs(colours, tmp_path, monkeypatch):
    from test_engine_support import tiny_config

    from mudpt.engine.features import FeatureExtractor
    from mudpt.engine.trainer import train

    monkeypatch.setenv("MUDPT_CACHE", str(tmp_path / "cache"))
    calls = []
    original = FeatureExtractor._extract
    monkeypatch.setattr(FeatureExtractor, "_extract", lambda self, *a: calls.append(1) or original(self, *a))
    train(tiny_config(colours, tmp_path / "a", method="linear_probe"), progress=False, quiet=True)
    assert len(calls) == 2  # the few-shot training items and the validation items
    train(tiny_config(colours, tmp_path / "b", method="linear_probe", method_options={"steps": 1}),
          progress=False, quiet=True)
    assert len(calls) == 2  # the same items and backbone: read from the cache
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["notes"][0].startswith("linear probe: C = ") and results["trainable_parameters"] == 0
    assert results["learned_values"] == len(results["classnames"]) * (BACKBONE_DIM + 1) + 1  # weight, bias, C


def test_linear_probe_works_on_a_resnet_tower(resnet):
    size = resnet.image_size if isinstance(resnet.image_size, int) else resnet.image_size[0]
    images = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(0))
    method = mudpt.create("linear_probe", resnet, CLASSES, steps=1, max_iter=100)
    method.fit(FitContext.from_tensors(method, images, LABELS, note=_quiet))
    assert method.weight.shape == (4, resnet.embed_dim)
    with torch.no_grad():
        assert method(images).shape == (8, 4)


# ---------------------------------------------------------------------------------------------
# CLIP-Adapter
# ---------------------------------------------------------------------------------------------
def test_clip_adapter_logits_are_the_authors_formula(vit, images):
    method = mudpt.create("clip_adapter", vit, CLASSES, template="a photo of a {}.")
    with torch.no_grad():
        for parameter in method.adapter.parameters():
            parameter.normal_(std=0.2)
        x = vit.model.encode_image(images).float()
        adapted = 0.2 * F.relu(F.relu(x @ method.adapter.fc1.weight.t()) @ method.adapter.fc2.weight.t()) + 0.8 * x
        text = F.normalize(vit.model.encode_text(vit.tokenizer([f"a photo of a {c}." for c in CLASSES])).float(), dim=-1)
        expected = vit.model.logit_scale.exp() * F.normalize(adapted, dim=-1) @ text.t()
        assert torch.allclose(method(images), expected, atol=1e-5)
    assert method.num_trainable_parameters() == 2 * vit.embed_dim * (vit.embed_dim // 4)


# ---------------------------------------------------------------------------------------------
# Tip-Adapter and Tip-Adapter-F
# ---------------------------------------------------------------------------------------------
def test_tip_adapter_with_alpha_zero_is_zero_shot_clip(vit, images):
    tip = mudpt.create("tip_adapter", vit, CLASSES, dataset="oxford_pets", search=False, init_alpha=0.0,
                       logit_scale=None)  # zero-shot CLIP's own scale
    tip.fit(FitContext.from_tensors(tip, images, LABELS, note=_quiet))
    zero_shot = mudpt.create("zsclip", vit, CLASSES, dataset="oxford_pets")
    with torch.no_grad():
        # the same features and formula; only the order of normalisations differs (float rounding)
        assert torch.allclose(tip(images), zero_shot(images), rtol=0, atol=1e-6)


def test_tip_adapter_on_imagenet_ensembles_clips_seven_templates(vit, images):
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    tip = mudpt.create("tip_adapter", vit, CLASSES, dataset="imagenet", search=False, init_alpha=0.0,
                       logit_scale=None)
    tip.fit(FitContext.from_tensors(tip, images, LABELS, note=_quiet))
    templates = [template("{}") for template in SIMPLE_IMAGENET_TEMPLATES]
    assert len(templates) == 7 and tip.settings.templates == templates
    zero_shot = mudpt.create("zsclip", vit, CLASSES, templates=templates)
    with torch.no_grad():
        assert torch.allclose(tip(images), zero_shot(images), atol=1e-5)
    # the authors' settings per dataset: ImageNet's grid ends and initial alpha
    assert tip.settings.search_scale == [7.0, 3.0]
    assert mudpt.create("tip_adapter", vit, CLASSES, dataset="oxford_flowers").settings.init_alpha == 10.0


def test_tip_adapter_cache_of_the_test_images_with_large_beta_classifies_them_perfectly(vit, images):
    tip = mudpt.create("tip_adapter", vit, CLASSES, templates="a photo of a {}.", search=False,
                       init_alpha=1000.0, init_beta=1000.0)
    tip.fit(FitContext.from_tensors(tip, images, LABELS, note=_quiet))
    with torch.no_grad():
        zero_shot = mudpt.create("zsclip", vit, CLASSES, templates="a photo of a {}.")(images)
        assert (zero_shot.argmax(1) != torch.as_tensor(LABELS)).any()  # CLIP alone does not
        assert torch.equal(tip(images).argmax(1), torch.as_tensor(LABELS))


def test_tip_adapter_logits_are_the_authors_formula_and_the_cache_is_fp16(vit, images):
    tip = mudpt.create("tip_adapter", vit, CLASSES, templates="a photo of a {}.", search=False, augment_epochs=3,
                       init_alpha=1.5, init_beta=5.5)
    tip.fit(FitContext.from_tensors(tip, images, LABELS, note=_quiet))
    assert tip.cache_keys.dtype == torch.float16 and tip.cache_keys.shape == (8, vit.embed_dim)
    with torch.no_grad():
        f = F.normalize(vit.model.encode_image(images).float(), dim=-1)
        keys = F.normalize(f, dim=-1)  # 3 identical views averaged, then normalised
        assert torch.allclose(tip.cache_keys.float(), keys, atol=1e-3)
        text = F.normalize(vit.model.encode_text(vit.tokenizer([f"a photo of a {c}." for c in CLASSES])).float(), dim=-1)
        values = F.one_hot(torch.as_tensor(LABELS), 4).float()
        cache = torch.exp(-5.5 * (1 - f @ tip.cache_keys.float().t())) @ values
        expected = 100. * f @ text.t() + 1.5 * cache  # their clip_logits = 100. * features @ clip_weights
        assert torch.allclose(tip(images), expected, atol=1e-4)
        # fp16 keys against fp32 ones: the affinities differ by ~1e-3 at most (documented)
        assert float((f @ tip.cache_keys.float().t() - f @ keys.t()).abs().max()) < 2e-3


def test_tip_adapter_uses_the_authors_constant_100_not_an_openai_archives_fp16_scale(tmp_path, vit, images):
    # An OpenAI-format archive (fp16 state dict) of a CLIP whose scale is ln 100, as ViT-B-16.pt:
    # fp16 rounds ln 100 to 4.60546875, whose exp is 100.0299.
    model = vit.model
    saved = model.logit_scale.detach().clone()
    try:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(100.0))
        state = {k: v.clone().half() for k, v in model.state_dict().items()}
    finally:
        with torch.no_grad():
            model.logit_scale.copy_(saved)
    state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    torch.save(state, tmp_path / "ViT-tiny.pt")
    clip = mudpt.load_clip("test-vit-tiny", pretrained=str(tmp_path / "ViT-tiny.pt"))
    archive_scale = float(clip.model.logit_scale.exp())
    assert archive_scale == pytest.approx(100.0299, abs=1e-4)
    tip = mudpt.create("tip_adapter", clip, CLASSES, templates="a photo of a {}.", search=False, init_alpha=0.0)
    tip.fit(FitContext.from_tensors(tip, images, LABELS, note=_quiet))
    with torch.no_grad():
        f = F.normalize(clip.model.encode_image(images).float(), dim=-1)
        text = F.normalize(clip.model.encode_text(clip.tokenizer([f"a photo of a {c}." for c in CLASSES])).float(),
                           dim=-1)
        logits = tip(images)
    # The scale the logits were computed with (least squares over all of them, so that no single
    # near-zero logit's rounding decides): 100, and not the archive's 100.0299, 3e-4 relative apart.
    cosines = f @ text.t()
    scale = float((logits * cosines).sum() / (cosines * cosines).sum())
    assert abs(scale - 100.0) < 2e-3 and abs(scale - archive_scale) > 2e-2
    assert torch.allclose(logits, 100. * cosines, rtol=1e-4, atol=1e-4)
    own = mudpt.create("tip_adapter", clip, CLASSES, logit_scale=None)
    assert float(own.logit_scale) == pytest.approx(archive_scale)


def test_tip_adapter_search_is_the_authors_grid_and_picks_the_first_best(vit, images):
    assert search_values(7.0, 4) == pytest.approx([0.1, 1.825, 3.55, 5.275])
    tip = mudpt.create("tip_adapter", vit, CLASSES, templates="a photo of a {}.", search_scale=[3.0, 2.0],
                       search_step=[5, 4])
    notes = []
    context = FitContext.from_tensors(tip, images, LABELS, note=notes.append)
    tip.fit(context)
    with torch.no_grad():
        f = F.normalize(tip.frozen_image_features(images).float(), dim=-1)
        best = (-1.0, None, None)
        for beta in search_values(3.0, 5):
            for alpha in search_values(2.0, 4):
                acc = float((tip.logits_of_features(f, alpha, beta).argmax(1) == torch.as_tensor(LABELS)).float().mean())
                if acc > best[0]:
                    best = (acc, beta, alpha)
    assert float(tip.beta) == pytest.approx(best[1]) and float(tip.alpha) == pytest.approx(best[2])
    assert "chosen on the validation split" in notes[-1]


def test_tip_adapter_f_starts_as_tip_adapter_and_trains_only_its_keys(vit, images):
    options = dict(templates="a photo of a {}.", search=False, init_alpha=1.2, init_beta=3.0, augment_epochs=2)
    tip = mudpt.create("tip_adapter", vit, CLASSES, **options)
    tip_f = mudpt.create("tip_adapter_f", vit, CLASSES, **options)
    tip.fit(FitContext.from_tensors(tip, images, LABELS, note=_quiet))
    tip_f.fit(FitContext.from_tensors(tip_f, images, LABELS, note=_quiet))
    with torch.no_grad():
        assert torch.equal(tip_f(images), tip(images))
    assert [name for name, _ in tip_f.trainable_parameters()] == ["adapter_keys"]
    assert "cache_keys" not in tip_f.learned_state_dict()  # the trained keys replace the cache
    out = tip_f.training_step(images, torch.as_tensor(LABELS))
    out["loss"].backward()
    assert tip_f.adapter_keys.grad is not None and tip_f.adapter_keys.grad.abs().sum() > 0
    assert torch.allclose(out["loss"], F.cross_entropy(tip(images), torch.as_tensor(LABELS)), atol=1e-5)


def test_cache_models_score_subsets_and_refuse_new_classes(vit, images):
    for name in ("tip_adapter", "tip_adapter_f"):
        method = mudpt.create(name, vit, CLASSES, templates="a photo of a {}.", search=False)
        method.fit(FitContext.from_tensors(method, images, LABELS, note=_quiet))
        with torch.no_grad():
            full = method(images)
            method.set_classnames(["tulip", "tabby cat"])
            assert torch.allclose(method(images), full[:, [3, 1]], atol=1e-5)
        with pytest.raises(ConfigError, match="not among them"):
            method.set_classnames(["zebra"])


def test_sweeps_refuse_closed_set_methods_under_new_class_protocols(tmp_path):
    from mudpt.engine.sweep import plan_sweep

    for protocol in ("base2new", "xd"):
        with pytest.raises(ConfigError, match=r"linear_probe, tip_adapter score\(s\) only the classes"):
            plan_sweep(protocol, ["coop", "linear_probe", "tip_adapter"], None, None, [1], tmp_path)
    plan = plan_sweep("fewshot", ["zsclip", "linear_probe", "tip_adapter"], None, [1, 4], [1, 2], tmp_path)
    runs = {(p["method"], p["shots"], p["seed"]) for p in plan}
    assert ("zsclip", 0, 1) in runs and ("linear_probe", 4, 2) in runs and ("tip_adapter", 1, 1) in runs
    assert len(runs) == 1 + 4 + 4  # zero-shot CLIP learns nothing: one run


# ---------------------------------------------------------------------------------------------
# MuDPT's released attention variant (Mechrev0/MuDPT trainers/uumudpt.py)
# ---------------------------------------------------------------------------------------------
def test_attention_variant_has_the_released_parameter_count_at_vit_b16():
    clip = mudpt.load_clip("ViT-B-16")
    method = mudpt.create("mudpt", clip, CLASSES, injection="attention")
    # Text: ctx 2x512 + deep 7x2x512, LayerNorms 2x1,024, a 512-wide block 3,152,384, Linear(512->768);
    # vision: the same in 768 with a 7,087,872 block and Linear(768->512).
    assert method.num_trainable_parameters() == 11_053_568
    assert method.options["depth"] == 8 and method.prompt_prefix == "a photo"
    assert sum(p.numel() for p in method.injection.parameters()) == 11_053_568 - 8 * 2 * (512 + 768)


def _light_reference(x, block, pre, post):
    """The released ``LightTransformer`` path, written from its code: LN, seq-first MHA block, LN."""
    x = pre(x).permute(1, 0, 2)  # (n, depths, d): the tokens of one depth attend to each other
    attn = torch.nn.MultiheadAttention(x.shape[-1], block.attn.num_heads)
    attn.load_state_dict(block.attn.state_dict())
    y = x + attn(block.ln_1(x), block.ln_1(x), block.ln_1(x), need_weights=False)[0]
    y = y + block.mlp(block.ln_2(y))
    return post(y.permute(1, 0, 2))


def test_attention_variant_computes_the_released_code(vit):
    torch.manual_seed(0)
    method = mudpt.create("mudpt", vit, CLASSES, injection="attention", depth=3)
    inj = method.injection
    with torch.no_grad():
        for parameter in inj.parameters():  # away from the LayerNorms' identity init
            parameter.add_(0.1 * torch.randn_like(parameter))
        text, vision = list(method.text_prompts), list(method.vision_prompts)
        t2v = inj.text_to_vision(_light_reference(torch.stack(text), inj.text_block, inj.text_norm_pre,
                                                  inj.text_norm_post))
        v2t = inj.vision_to_text(_light_reference(torch.stack(vision[1:]), inj.vision_block, inj.vision_norm_pre,
                                                  inj.vision_norm_post))
        prompts = method.compute_prompts()
    for i in range(3):
        assert torch.allclose(prompts.vision[i], vision[i] + t2v[i], atol=1e-5)
    assert torch.equal(prompts.text[0], text[0])
    for i in (1, 2):
        assert torch.allclose(prompts.text[i], text[i] + v2t[i - 1], atol=1e-5)


def test_attention_variant_wiring(vit):
    """Which tower's prompts reach which projection: the Jacobian's block structure."""
    method = mudpt.create("mudpt", vit, CLASSES, injection="attention", depth=3)
    inj = method.injection
    text = [torch.randn(2, vit.text_width, requires_grad=True) for _ in range(3)]
    vision = [torch.randn(2, vit.vision_width, requires_grad=True) for _ in range(3)]
    text_in, vision_in = inj(text, vision)

    def reaches(output, inputs):
        grads = torch.autograd.grad(output.pow(2).sum(), inputs, retain_graph=True, allow_unused=True)
        return [g is not None and bool(g.abs().sum() > 0) for g in grads]

    modules = {"text_to_vision": inj.text_to_vision.weight, "vision_to_text": inj.vision_to_text.weight}
    for i in range(3):
        # vision input i: its own prompt and the text prompt of the same depth, through text_to_vision
        assert reaches(vision_in[i], vision) == [j == i for j in range(3)]
        assert reaches(vision_in[i], text) == [j == i for j in range(3)]
        assert reaches(vision_in[i], list(modules.values())) == [True, False]
    # text input 0 is the shallow text prompt itself; the shallow visual prompt reaches no text input
    assert torch.equal(text_in[0], text[0])
    for i in (1, 2):
        assert reaches(text_in[i], text) == [j == i for j in range(3)]
        assert reaches(text_in[i], vision) == [j == i for j in range(3)]
        assert reaches(text_in[i], list(modules.values())) == [False, True]


def test_the_three_injection_variants_differ_as_documented(vit):
    counts = {v: mudpt.create("mudpt", vit, CLASSES, injection=v, depth=3).num_trainable_parameters()
              for v in ("transformer", "linear", "attention")}
    assert len(set(counts.values())) == 3
    transformer = mudpt.create("mudpt", vit, CLASSES, depth=3)
    ivlp = mudpt.create("ivlp", vit, CLASSES, depth=3, n_ctx=2, n_ctx_vision=2)
    # the paper's design starts as IVLP: its injection adds zero at initialisation
    prompts = transformer.compute_prompts()
    assert all(torch.equal(p, q) for p, q in zip(prompts.text, transformer.text_prompts))
    assert ivlp.num_trainable_parameters() < counts["linear"]


# ---------------------------------------------------------------------------------------------
# Prompt interpretation
# ---------------------------------------------------------------------------------------------
def test_interpretation_finds_the_tokens_a_context_was_built_from(vit):
    coop = mudpt.create("coop", vit, CLASSES, ctx_init="a photo of a")
    entries = mudpt.interpret_prompts(coop, topk=3)
    assert [(e.depth, e.position) for e in entries] == [(0, 0), (0, 1), (0, 2), (0, 3)]
    # initialised from those words: each vector's nearest token is its word, at distance 0
    assert [e.nearest[0][0] for e in entries] == ["a</w>", "photo</w>", "of</w>", "a</w>"]
    assert all(e.nearest[0][2] == pytest.approx(0.0, abs=1e-5) for e in entries)
    table = vit.model.token_embedding.weight.detach()
    expected = torch.cdist(coop.ctx.detach()[1:2], table)[0].topk(3, largest=False)
    assert [i for _, i, _ in entries[1].nearest] == expected.indices.tolist()
    assert [d for _, _, d in entries[1].nearest] == pytest.approx(expected.values.tolist(), abs=1e-5)
    assert all(e.nearest[0][2] <= e.nearest[1][2] <= e.nearest[2][2] for e in entries)


def test_interpretation_covers_every_depth_class_specific_contexts_and_says_when_there_is_none(vit):
    from mudpt.methods.interpret import format_interpretation

    deep = mudpt.create("mudpt", vit, CLASSES, depth=3)
    entries = mudpt.interpret_prompts(deep, topk=2)
    assert sorted({e.depth for e in entries}) == [0, 1, 2] and len(entries) == 3 * 2
    report = format_interpretation(deep, entries)
    assert "depth 0 (the token embeddings)" in report and "depth 2 (input of text block 2" in report
    csc = mudpt.create("coop", vit, CLASSES, n_ctx=2, csc=True)
    entries = mudpt.interpret_prompts(csc, topk=1)
    assert [e.classname for e in entries] == [c for c in CLASSES for _ in range(2)]


@pytest.mark.parametrize("name", mudpt.available_methods())
def test_every_method_interprets_its_learned_text_context_or_says_it_has_none(vit, name):
    from mudpt.methods.interpret import format_interpretation

    method = mudpt.create(name, vit, CLASSES)
    entries = mudpt.interpret_prompts(method, topk=1)
    if not method.text_context():
        assert entries == []
        assert "has no learned text context" in format_interpretation(method, entries)
    else:
        assert entries and entries[0].depth == 0


def test_interpret_command_reads_a_run(colours, tmp_path, capsys):
    from test_engine_support import tiny_config

    from mudpt.cli import main
    from mudpt.engine.trainer import train

    train(tiny_config(colours, tmp_path / "run", method="coop", epochs=1), progress=False, quiet=True)
    assert main(["interpret", "--run", str(tmp_path / "run"), "--topk", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 4 and all(len(entry["nearest"]) == 2 for entry in data)
    assert main(["interpret", "--run", str(tmp_path / "run"), "--topk", "0"]) == 2
    assert "--topk must be at least 1" in capsys.readouterr().err
