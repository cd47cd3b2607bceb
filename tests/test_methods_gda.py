"""GDA against an independent recomputation of the authors' main_few_shots.py ``run``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import mudpt
from mudpt.methods.hooks import FitContext, _TensorItem

CLASSES = ["golden retriever", "tabby cat", "fire truck", "tulip"]


def _context(train_views, train_labels, val_features, val_labels, notes):
    """A FitContext whose augmented views are given features (views, N, D)."""
    items = {"train": [_TensorItem(f"train:{i}", int(y), "train") for i, y in enumerate(train_labels)],
             "val": [_TensorItem(f"val:{i}", int(y), "val") for i, y in enumerate(val_labels)]}

    def image_features(chosen, augment=False, views=1, crop_scale=None):
        index = torch.as_tensor([int(item.path.split(":")[1]) for item in chosen])
        if chosen[0].split == "train":
            assert augment and views == train_views.shape[0] and crop_scale == (0.5, 1.0)
            return train_views[:, index]
        return val_features[index].unsqueeze(0)

    return FitContext(items["train"], items["val"], image_features, notes.append)


def _authors(vecs, labels, classes, val_features, val_labels, clip_weights):
    """main_few_shots.py, run(): the same statements on the same tensors (clip_weights (D, C))."""
    mus = torch.cat([vecs[labels == i].mean(dim=0, keepdim=True) for i in range(classes)])
    center_vecs = torch.cat([vecs[labels == i] - mus[i].unsqueeze(0) for i in range(classes)])
    cov_inv = center_vecs.shape[1] * torch.linalg.pinv((center_vecs.shape[0] - 1) * center_vecs.T.cov()
                                                       + center_vecs.T.cov().trace() * torch.eye(center_vecs.shape[1]))
    ps = torch.ones(classes) * 1. / classes
    W = torch.einsum('nd, dc -> cn', mus, cov_inv)
    b = ps.log() - torch.einsum('nd, dc, nc -> n', mus, cov_inv, mus) / 2
    best_val_acc, best_alpha = 0, 0.1
    for alpha in [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]:
        val_logits = 100. * val_features.float() @ clip_weights.float() + alpha * (val_features.float() @ W + b)
        acc = float((val_logits.argmax(1) == val_labels).float().mean())
        if acc > best_val_acc:
            best_val_acc, best_alpha = acc, alpha
    return W, b, best_alpha


def test_discriminant_alpha_and_logits_equal_the_authors(vit):
    generator = torch.Generator().manual_seed(0)
    dim, views, shots = vit.embed_dim, 3, 4
    centres = torch.randn(len(CLASSES), dim, generator=generator)
    train_labels = torch.arange(len(CLASSES)).repeat_interleave(shots)
    raw = centres[train_labels] + 0.8 * torch.randn(views, len(train_labels), dim, generator=generator)
    val_labels = torch.arange(len(CLASSES)).repeat(3)
    val = F.normalize(centres[val_labels] + 0.8 * torch.randn(len(val_labels), dim, generator=generator), dim=-1)
    method = mudpt.create("gda", vit, CLASSES, augment_epochs=views)
    notes = []
    method.fit(_context(raw, train_labels, val, val_labels, notes))

    vecs = F.normalize(raw, dim=-1).reshape(-1, dim)  # their loop: epochs outer, images inner
    labels = train_labels.repeat(views)
    clip_weights = method.frozen_text_features(["a photo of a {}."]).t()
    W, b, alpha = _authors(vecs, labels, len(CLASSES), val, val_labels, clip_weights)
    assert torch.allclose(method.gda_weight.t(), W, atol=1e-4, rtol=1e-4)
    assert torch.allclose(method.gda_bias, b, atol=1e-3, rtol=1e-5)
    assert float(method.alpha) == pytest.approx(alpha) and f"alpha {alpha:g}" in notes[0]
    test = F.normalize(torch.randn(5, dim, generator=generator), dim=-1)
    theirs = 100. * test @ clip_weights + alpha * (test @ W + b)
    assert torch.allclose(method.logits_of_features(test), theirs, atol=1e-3, rtol=1e-5)
    # a subset of the fitted classes scores their rows (ImageNet-A/-R's use of ImageNet's 1,000)
    method.set_classnames([CLASSES[2], CLASSES[0]])
    subset = 100. * test @ method.frozen_text_features(["a photo of a {}."]).t() + alpha * (test @ W + b)[:, [2, 0]]
    assert torch.allclose(method.logits_of_features(test), subset, atol=1e-3, rtol=1e-5)


def test_templates_follow_the_dataset_as_tip_adapters_and_the_scale_is_the_constant_100(vit):
    from mudpt.methods.tip_adapter import clip_selected_templates

    assert mudpt.create("gda", vit, CLASSES, dataset="imagenet").settings.templates == clip_selected_templates()
    assert mudpt.create("gda", vit, CLASSES, dataset="dtd").settings.templates == ["{} texture."]
    assert float(mudpt.create("gda", vit, CLASSES).logit_scale) == 100.0
    own = mudpt.create("gda", vit, CLASSES, logit_scale=None)
    assert float(own.logit_scale) == pytest.approx(float(vit.model.logit_scale.exp()))


def test_every_class_needs_training_images(vit):
    method = mudpt.create("gda", vit, CLASSES)
    views = torch.randn(10, 2, vit.embed_dim)
    with pytest.raises(mudpt.UserError, match="2 class\\(es\\) have none, e.g. 'fire truck'"):
        method.fit(_context(views, torch.tensor([0, 1]), views[0], torch.tensor([0, 1]), []))
    assert math.isclose(0.1, mudpt.make_config("gda").init_alpha)


def _authors_base2new(vecs, labels, classes, clip_weights_new, k=64):
    """main_base2new.py, run(): the base discriminant's covariance and the synthesised new one."""
    dim = vecs.shape[1]
    mus = torch.cat([vecs[labels == i].mean(dim=0, keepdim=True) for i in range(classes)])
    train_cov = torch.cat([vecs[labels == i].T.cov().unsqueeze(0) for i in range(classes)])
    cov_inv = torch.linalg.pinv(train_cov.mean(dim=0))
    ps = torch.ones(classes) * 1. / classes
    W = torch.einsum('nd, dc -> cn', mus, cov_inv)
    b = ps.log() - torch.einsum('nd, dc, nc -> n', mus, cov_inv, mus) / 2

    mu = torch.cat([torch.cat([vecs[torch.topk(w @ vecs.T, k=k, largest=True)[1]], w.unsqueeze(0).repeat(16, 1)])
                    .mean(dim=0, keepdim=True) for w in clip_weights_new.T])

    def covariance(vecs, mu=0):
        N, D = vecs.shape
        return (vecs - mu).T @ (vecs - mu) / (N - 1)

    # their 512 is ViT-B/16's dimension; here the test backbone's
    cov_inv_new = torch.cat([
        dim * torch.linalg.pinv(
            (k - 1) * covariance(vecs[torch.topk(w @ vecs.T, k=k, largest=True)[1]], mu=w.unsqueeze(0))
            + covariance(vecs[torch.topk(w @ vecs.T, k=k, largest=True)[1]], mu=w.unsqueeze(0)).trace()
            * torch.eye(dim)).unsqueeze(0)
        for w in clip_weights_new.T]).mean(dim=0)
    ps = torch.ones(clip_weights_new.shape[1]) * 1. / clip_weights_new.shape[1]
    W_new = torch.einsum('nd, dc -> cn', mu, cov_inv_new)
    b_new = ps.log() - torch.einsum('nd, dc, nc -> n', mu, cov_inv_new, mu) / 2
    return W, b, W_new, b_new


def test_the_base_to_new_variant_equals_the_authors(vit, tmp_path):
    generator = torch.Generator().manual_seed(3)
    dim, views, shots = vit.embed_dim, 4, 8  # 4 x 8 x 4 = 128 samples: 64 neighbours exist
    centres = torch.randn(len(CLASSES), dim, generator=generator)
    train_labels = torch.arange(len(CLASSES)).repeat_interleave(shots)
    raw = centres[train_labels] + 0.8 * torch.randn(views, len(train_labels), dim, generator=generator)
    val_labels = torch.arange(len(CLASSES)).repeat(2)
    val = F.normalize(centres[val_labels] + 0.8 * torch.randn(len(val_labels), dim, generator=generator), dim=-1)
    method = mudpt.create("gda", vit, CLASSES, augment_epochs=views, covariance="pooled")
    method.fit(_context(raw, train_labels, val, val_labels, []))
    new = ["hedgehog", "violin", "sailboat"]
    method.set_classnames(new)
    clip_weights_new = method.frozen_text_features(["a photo of a {}."]).t()
    vecs = F.normalize(raw, dim=-1).reshape(-1, dim)
    W, b, W_new, b_new = _authors_base2new(vecs, train_labels.repeat(views), len(CLASSES), clip_weights_new)
    assert torch.allclose(method.gda_weight.t(), W, atol=1e-3, rtol=1e-4)
    assert torch.allclose(method.gda_bias, b, atol=1e-2, rtol=1e-4)
    weight, bias = method.discriminant_for_classes()
    assert torch.allclose(weight.t(), W_new, atol=1e-3, rtol=1e-4)
    assert torch.allclose(bias, b_new, atol=1e-3, rtol=1e-4)
    test = F.normalize(torch.randn(5, dim, generator=generator), dim=-1)
    alpha = float(method.alpha)
    theirs = 100. * test @ clip_weights_new + alpha * (test @ W_new + b_new)
    assert torch.allclose(method.logits_of_features(test), theirs, atol=1e-2, rtol=1e-4)
    # saved and loaded (the training features are learned state), then evaluated on new classes
    mudpt.save_learned(method, tmp_path / "gda")
    loaded = mudpt.load_learned(tmp_path / "gda", clip=vit, classnames=new)
    assert loaded.fitted_classnames == CLASSES
    assert torch.allclose(loaded.logits_of_features(test), method.logits_of_features(test), atol=1e-4)
    assert mudpt.methods.get_method_class("gda").protocols() == ("fewshot", "base2new", "xd", "dg")
