"""LP++ against an independent float64 rerun of the authors' ``LinearProbe_P2.forward``
(FereshteShakeri/FewShot-CLIP-Strong-Baseline, ``methods/linear_probe_p2.py``, ``methods/utils.py``)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.linalg import eigh
from torch import nn

import mudpt
from mudpt.methods import get_method_class
from mudpt.methods.hooks import FitContext, _TensorItem

CLASSES = ["golden retriever", "tabby cat", "fire truck", "tulip", "sailboat"]
SHOTS = 4


def _context(train, train_labels, val, val_labels, seed=1):
    """A FitContext handing out given features: one augmented view of the training images."""
    items = {"train": [_TensorItem(f"train:{i}", int(y), "train") for i, y in enumerate(train_labels)],
             "val": [_TensorItem(f"val:{i}", int(y), "val") for i, y in enumerate(val_labels)]}

    def image_features(chosen, augment=False, views=1, crop_scale=None):
        if not chosen:
            return torch.zeros(views, 0, train.shape[1])
        index = torch.as_tensor([int(item.path.split(":")[1]) for item in chosen])
        if chosen[0].split == "train":
            assert augment and views == 1 and crop_scale == (0.5, 1.0)  # their train_tranform, one pass
            return train[index].unsqueeze(0)
        assert not augment
        return val[index].unsqueeze(0)

    return FitContext(items["train"], items["val"], image_features, lambda text: None, seed)


def _data(dim, noise=3.0, seed=1):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(CLASSES), dim, generator=generator)
    train_labels = torch.arange(len(CLASSES)).repeat_interleave(SHOTS)
    train = centres[train_labels] + noise * torch.randn(len(train_labels), dim, generator=generator)
    val_labels = torch.arange(len(CLASSES)).repeat(4)
    val = centres[val_labels] + noise * torch.randn(len(val_labels), dim, generator=generator)
    test = centres[torch.arange(len(CLASSES)).repeat(3)] + noise * torch.randn(15, dim, generator=generator)
    return train, train_labels, val, val_labels, test


def _authors(features, labels, val_features, val_labels, text_weights, bias, epochs, current_gradient=False,
             select=True):
    """Their forward(), statement by statement, in float64 (their CUDA run is fp16 throughout):
    ``text_weights`` (D, C); returns the state of the best validation epoch and that epoch (without
    ``select``: the last one's)."""
    shot = SHOTS
    classes = int(features.shape[0] / shot)
    one_hot = torch.zeros(1, features.shape[0], classes, dtype=torch.float64)
    one_hot.scatter_(-1, labels.view(1, -1, 1), 1)  # get_one_hot
    centroids = one_hot.transpose(1, 2).bmm(features.unsqueeze(0))  # compute_centroids: sums
    classifier = nn.Linear(features.shape[1], classes, bias=True).double()
    classifier.weight.data = centroids[0]
    classifier.bias.data = bias.double().clone()
    # calculate_lr_w
    w, _ = eigh((features.T @ features).numpy())
    lr_temp = (4 * features.shape[0]) / max(w)
    # calculate_init_alpha: compute_centroids_alpha on the text logits, x shots, x 250 / shots, mean
    z_s = (features @ text_weights).unsqueeze(0)
    alpha_tilde = (one_hot * z_s / one_hot.sum(-2, keepdim=True)).sum(1)[0] * shot
    init_alpha = torch.mean(250 / shot * alpha_tilde)
    alpha_vec = (init_alpha * torch.ones(1, classes, dtype=torch.float64)).requires_grad_(True)
    # calculate_lr_alpha
    lr_alpha = features.shape[0] / (max(torch.sum(torch.pow(features @ text_weights, 2), dim=0)) * 4)
    optimizer = torch.optim.SGD(classifier.parameters(), lr_temp, momentum=0.9)
    best_acc, best = 0.0, None
    for epoch in range(epochs):
        logits = classifier(features) + torch.ones(features.shape[0], 1, dtype=torch.float64) @ alpha_vec \
            * (features @ text_weights)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()  # the classifier's gradients only: alpha_vec.grad keeps accumulating
        if current_gradient and alpha_vec.grad is not None:
            alpha_vec.grad.zero_()
        loss.backward()
        optimizer.step()
        if (epoch + 1) % 10 == 0:
            alpha_vec.data -= lr_alpha * alpha_vec.grad.data
        logits_val = classifier(val_features) + torch.ones(val_features.shape[0], 1, dtype=torch.float64) \
            @ alpha_vec * (val_features @ text_weights)
        acc_val = np.mean(logits_val.argmax(dim=1).numpy() == val_labels.numpy()) * 100.0
        if acc_val >= best_acc:
            best_acc = acc_val
            best = (copy.deepcopy(classifier), alpha_vec.detach().clone(), epoch)
    return best if select else (classifier, alpha_vec.detach().clone(), epochs - 1)


def _bias(seed, classes, dim):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(classes, generator=generator) * 2 - 1) / math.sqrt(dim)


@pytest.mark.parametrize("gradient", ["accumulated", "current"])
def test_fit_equals_the_authors_training_and_selection(vit, gradient):
    train, train_labels, val, val_labels, test = _data(vit.embed_dim)
    method = mudpt.create("lpp", vit, CLASSES, steps=60, alpha_gradient=gradient)
    notes = []
    context = _context(train, train_labels, val, val_labels, seed=7)
    context.note = notes.append
    method.fit(context)

    text = method.frozen_text_features(["a photo of a {}."]).double()
    norm = lambda x: F.normalize(x.double(), dim=-1)  # noqa: E731 - their features are normalised at extraction
    classifier, alpha, epoch = _authors(norm(train), train_labels, norm(val), val_labels, text.t(),
                                        _bias(7, len(CLASSES), vit.embed_dim), 60, gradient == "current")
    assert 0 < epoch < 59, "the data must make the selection matter"
    assert f"step {epoch + 1} of 60 kept" in notes[0]
    assert torch.allclose(method.lpp_weight.double(), classifier.weight, rtol=1e-4, atol=1e-4)
    assert torch.allclose(method.lpp_bias.double(), classifier.bias, rtol=1e-4, atol=1e-4)
    assert torch.allclose(method.lpp_alpha.double(), alpha[0], rtol=1e-4)
    with torch.no_grad():
        theirs = classifier(norm(test)) + alpha * (norm(test) @ text.t())
        ours = method.logits_of_features(F.normalize(test, dim=-1))
    assert torch.allclose(ours.double(), theirs, rtol=1e-4, atol=1e-3)
    # a subset of the fitted classes scores their rows (ImageNet-A/-R's use of ImageNet's classes)
    method.set_classnames([CLASSES[3], CLASSES[1]])
    with torch.no_grad():
        assert torch.allclose(method.logits_of_features(F.normalize(test, dim=-1)), ours[:, [3, 1]], atol=1e-5)


def test_the_two_multiplier_gradients_differ_and_their_step_sizes_are_the_authors(vit):
    from mudpt.methods.lpp import step_sizes

    train, train_labels, val, val_labels, _ = _data(vit.embed_dim)
    fitted = {}
    for gradient in ("accumulated", "current"):
        method = mudpt.create("lpp", vit, CLASSES, steps=30, alpha_gradient=gradient, select_on_validation=False)
        method.fit(_context(train, train_labels, val, val_labels))
        fitted[gradient] = method.lpp_alpha.clone()
    # from step 20 on the accumulated sum and the step's own gradient differ, and so do the multipliers
    assert not torch.allclose(fitted["accumulated"], fitted["current"])
    features = F.normalize(train, dim=-1)
    scores = features @ torch.randn(vit.embed_dim, len(CLASSES), generator=torch.Generator().manual_seed(3))
    lr_w, lr_alpha = step_sizes(features, scores)
    assert lr_w == pytest.approx(4 * len(features) / float(np.linalg.eigvalsh((features.T @ features).double().numpy()).max()))
    assert lr_alpha == pytest.approx(len(features) / (4 * float((scores ** 2).sum(0).max())), rel=1e-6)


def test_without_selection_the_last_step_is_kept(vit):
    train, train_labels, val, val_labels, test = _data(vit.embed_dim)
    method = mudpt.create("lpp", vit, CLASSES, steps=25, select_on_validation=False)
    method.fit(_context(train, train_labels, val[:0], val_labels[:0], seed=3))  # no validation split needed
    norm = lambda x: F.normalize(x.double(), dim=-1)  # noqa: E731
    text = method.frozen_text_features(["a photo of a {}."]).double()
    classifier, alpha, _ = _authors(norm(train), train_labels, norm(val), val_labels, text.t(),
                                    _bias(3, len(CLASSES), vit.embed_dim), 25, select=False)
    assert torch.allclose(method.lpp_weight.double(), classifier.weight, rtol=1e-4, atol=1e-4)
    assert torch.allclose(method.lpp_alpha.double(), alpha[0], rtol=1e-4)


def test_templates_follow_the_dataset_and_bad_data_is_refused(vit):
    from mudpt.methods.tip_adapter import clip_selected_templates

    assert mudpt.create("lpp", vit, CLASSES, dataset="imagenet").settings.templates == clip_selected_templates()
    assert mudpt.create("lpp", vit, CLASSES, dataset="dtd").settings.templates == ["{} texture."]
    assert get_method_class("lpp").protocols() == ("fewshot", "dg")
    train, train_labels, val, val_labels, _ = _data(vit.embed_dim)
    keep = train_labels != 2
    with pytest.raises(mudpt.UserError, match="1 class\\(es\\) have none, e.g. 'fire truck'"):
        mudpt.create("lpp", vit, CLASSES).fit(_context(train[keep], train_labels[keep], val, val_labels))
    with pytest.raises(mudpt.UserError, match="validation split is empty"):
        mudpt.create("lpp", vit, CLASSES).fit(_context(train, train_labels, val[:0], val_labels[:0]))
    with pytest.raises(mudpt.UserError, match="lpp has not been fitted"):
        mudpt.create("lpp", vit, CLASSES)(torch.zeros(1, 3, vit.image_size, vit.image_size))
