"""CLAP against an independent rerun of the authors' trainer (jusiro/CLAP ``trainers/adapters.py``:
``_get_base_text_features``, ``AdapterMethod``, ``TrainerXCostume.run_epoch``, ``forward_backward``,
Dassl's SGD and its constant-warm-up cosine schedule)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mudpt
from mudpt.methods import get_method_class
from mudpt.methods.hooks import FitContext, _TensorItem

CLASSES = ["golden retriever", "tabby cat", "fire truck"]


def _context(views, labels, seed=1):
    """A FitContext whose augmented training views (V, N, D) are given."""
    items = [_TensorItem(f"train:{i}", int(y), "train") for i, y in enumerate(labels)]

    def image_features(chosen, augment=False, views=1, crop_scale=None):
        assert augment and views == given.shape[0] and crop_scale is None  # Dassl's train transform
        index = torch.as_tensor([int(item.path.split(":")[1]) for item in chosen])
        return given[:, index]

    given = views
    return FitContext(items, [], image_features, lambda text: None, seed)


def _dassl_lr(epoch, epochs, lr, warmup_epochs, warmup_lr):
    """Dassl's ConstantWarmupScheduler around CosineAnnealingLR(T_max=epochs), closed form."""
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * lr * (1 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


def _authors(features, labels, images, base_text_features, logit_scale, epochs, batch_size, generator,
             constraint="l2", lr=0.1, warmup_epochs=1, warmup_lr=1e-5):
    """AdapterMethod + ADAPTER.train + run_epoch + forward_backward (fp32 path), statement by
    statement; the shuffles are drawn from ``generator`` (theirs: NumPy's global stream)."""
    prototypes = nn.Parameter(base_text_features.clone())

    def forward_lp(feats):
        image_features_norm = feats / feats.norm(dim=-1, keepdim=True)
        prototypes_norm = prototypes / prototypes.norm(dim=-1, keepdim=True)
        return image_features_norm @ prototypes_norm.t() * logit_scale

    # init_lagrangian_multipliers on the zero-shot logits of the training samples
    with torch.no_grad():
        logits_ds = forward_lp(features)
        labels_one_hot = F.one_hot(labels)
        performance = torch.diag(torch.softmax(logits_ds, -1).t() @ labels_one_hot.to(torch.float32)) / \
            labels_one_hot.sum(0)
        if "corrected" in constraint:
            performance *= (logits_ds.shape[-1] / torch.sum(performance).item())
        if "balanced" in constraint:
            performance = torch.ones(logits_ds.shape[-1])
    alpha_constraint, penalty_parameter = performance.clone(), torch.zeros_like(performance)
    optim = torch.optim.SGD([prototypes], lr=lr, momentum=0.9, weight_decay=0.0, dampening=0, nesterov=False)
    # len(self.train_loader_x): Dassl's loader drops the last batch when there is a full one
    num_batches = len(torch.utils.data.DataLoader(range(images), batch_size=batch_size,
                                                  drop_last=images >= batch_size))
    for epoch in range(epochs):
        for group in optim.param_groups:
            group["lr"] = _dassl_lr(epoch, epochs, lr, warmup_epochs, warmup_lr)
        idx = torch.randperm(features.shape[0], generator=generator)
        shuffled, shuffled_labels = features[idx], labels[idx]
        for batch_idx in range(num_batches):
            feats = shuffled[batch_idx * batch_size:(batch_idx + 1) * batch_size]
            target = shuffled_labels[batch_idx * batch_size:(batch_idx + 1) * batch_size]
            loss = F.cross_entropy(forward_lp(feats), target)
            if constraint != "none":
                disimilitude = (prototypes - base_text_features.clone()).pow(2).sum(-1)
                loss = loss + torch.mean(alpha_constraint * disimilitude)
            optim.zero_grad()
            loss.backward()
            optim.step()
        if "adaptative" in constraint:  # outer_step and its phr
            with torch.no_grad():
                h = (prototypes - base_text_features.clone()).pow(2).sum(-1)
                x = alpha_constraint + penalty_parameter * h
                alpha_constraint = torch.where(x >= 0, x, torch.zeros_like(h))
                penalty_parameter = h.clone()
    return prototypes.detach(), alpha_constraint


def _views(dim, images_per_class, views, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(CLASSES), dim, generator=generator)
    labels = torch.arange(len(CLASSES)).repeat_interleave(images_per_class)
    return centres[labels] + 1.5 * torch.randn(views, len(labels), dim, generator=generator), labels


@pytest.mark.parametrize("options,constraint", [
    ({}, "l2"),  # the published CLAP
    ({"multipliers": "corrected", "outer_steps": True}, "l2_corrected_adaptative"),
    ({"multipliers": "balanced"}, "l2_balanced"),
    ({"constraint": False}, "none"),  # ZS-LP
])
def test_fit_equals_the_authors_training(vit, options, constraint):
    views, labels = _views(vit.embed_dim, images_per_class=3, views=3)
    method = mudpt.create("clap", vit, CLASSES, augment_epochs=3, epochs=6, batch_size=4, **options)
    method.fit(_context(views, labels, seed=5))
    base = method.zero_shot_prototypes()
    theirs, _ = _authors(views.reshape(-1, vit.embed_dim), labels.repeat(3), len(labels), base,
                         vit.model.logit_scale.exp().detach(), 6, 4, torch.Generator().manual_seed(5), constraint)
    assert not torch.allclose(theirs, base, atol=1e-3), "training must move the prototypes"
    assert torch.allclose(method.prototypes, theirs, rtol=1e-5, atol=1e-5)
    test = torch.randn(4, vit.embed_dim, generator=torch.Generator().manual_seed(9))
    expected = F.normalize(test, dim=-1) @ F.normalize(theirs, dim=-1).t() * vit.model.logit_scale.exp()
    assert torch.allclose(method.logits_of_features(test), expected, rtol=1e-5, atol=1e-4)


def test_a_training_set_smaller_than_a_batch_takes_one_batch_an_epoch(vit):
    from mudpt.methods.clap import batches_per_epoch

    assert [batches_per_epoch(n, 256) for n in (10, 255, 256, 600)] == [1, 1, 1, 2]
    views, labels = _views(vit.embed_dim, images_per_class=2, views=4)  # 6 images < batch 8, 24 samples
    method = mudpt.create("clap", vit, CLASSES, augment_epochs=4, epochs=3, batch_size=8)
    method.fit(_context(views, labels, seed=2))
    theirs, _ = _authors(views.reshape(-1, vit.embed_dim), labels.repeat(4), len(labels), method.zero_shot_prototypes(),
                         vit.model.logit_scale.exp().detach(), 3, 8, torch.Generator().manual_seed(2))
    assert torch.allclose(method.prototypes, theirs, rtol=1e-5, atol=1e-5)


def test_multipliers_are_zero_shot_clips_class_probabilities(vit):
    from mudpt.methods.clap import initial_multipliers

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 3.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 0])
    p = torch.softmax(logits, dim=-1)
    zero_shot = initial_multipliers(logits, labels, "zero_shot")
    assert torch.allclose(zero_shot, torch.stack([(p[0, 0] + p[3, 0]) / 2, p[1, 1], p[2, 2]]))
    assert torch.allclose(initial_multipliers(logits, labels, "corrected").sum(), torch.tensor(3.0))
    assert torch.allclose(initial_multipliers(logits, labels, "constant"), zero_shot.mean().expand(3))
    assert torch.equal(initial_multipliers(logits, labels, "balanced"), torch.ones(3))


def test_prototypes_are_the_raw_mean_of_raw_text_embeddings(vit):
    from mudpt.methods.tip_adapter import clip_selected_templates

    method = mudpt.create("clap", vit, CLASSES, dataset="imagenet")
    templates = clip_selected_templates() + ["a photo of a {}."]  # their IMAGENET_TEMPLATES_SELECT += custom
    assert method.settings.templates == templates
    assert mudpt.create("clap", vit, CLASSES, dataset="dtd").settings.templates == ["{} texture."]
    with torch.no_grad():
        raw = torch.stack([vit.model.encode_text(vit.tokenizer([t.format(c) for t in templates])).mean(dim=0)
                           for c in CLASSES])
    assert torch.allclose(method.zero_shot_prototypes(), raw, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(len(CLASSES)))  # not normalised: the penalty's scale
    assert get_method_class("clap").protocols() == ("fewshot", "dg")


def test_bad_data_and_an_unfitted_method_are_refused(vit):
    views, labels = _views(vit.embed_dim, images_per_class=2, views=2)
    keep = labels != 1
    with pytest.raises(mudpt.UserError, match="1 class\\(es\\) have none, e.g. 'tabby cat'"):
        mudpt.create("clap", vit, CLASSES, augment_epochs=2).fit(_context(views[:, keep], labels[keep]))
    with pytest.raises(mudpt.UserError, match="clap has not been fitted"):
        mudpt.create("clap", vit, CLASSES)(torch.zeros(1, 3, vit.image_size, vit.image_size))
