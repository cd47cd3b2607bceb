"""CLAP (Silva-Rodriguez et al., CVPR 2024): a linear probe initialised with zero-shot CLIP's
class prototypes and held near them by a class-adaptive penalty, trained without a validation
split, as the authors' code computes it (github.com/jusiro/CLAP, ``trainers/adapters.py``:
``AdapterMethod`` with ``INIT=ZS`` and ``CONSTRAINT=l2``, ``ADAPTER.train``,
``TrainerXCostume.run_epoch``, ``forward_backward``; ``configs/trainers/SGD_lr1e-1_B256_ep300.yaml``;
``scripts/adapt.sh`` and ``experiments/experiment_CLAP.txt`` for the published runs):

* zero-shot prototypes ``t_c``: the *raw* (not normalised) text embeddings of the class, averaged
  raw over the templates (``_get_base_text_features``): CoOp's hand-crafted template of the
  dataset, and for ImageNet CLIP's 7 selected templates plus "a photo of a {}.";
* features: frozen CLIP's features of ``augment_epochs`` (20) augmented views of every training
  image (Dassl's random resized crop and flip), each view a sample (``extract_features``, ``reps``);
* logits ``s * norm(f) . norm(w_c)`` with the backbone's logit scale ``s`` (``logit_scale.exp()``)
  and prototypes ``w`` (C, D) initialised to ``t``;
* loss: the mean cross-entropy of a batch plus ``mean_c(lambda_c ||w_c - t_c||^2)``
  (``zero_shot_constraint``), with multipliers ``lambda_c`` fixed before training to zero-shot
  CLIP's mean softmax probability of class ``c`` over its training samples
  (``init_lagrangian_multipliers``; ``multipliers`` chooses their other variants);
* SGD (momentum 0.9, no weight decay), lr 0.1 for ``epochs`` (300) epochs, Dassl's cosine with one
  constant warm-up epoch at 1e-5, stepped per epoch; an epoch shuffles all samples and takes
  ``N // batch_size`` batches of ``batch_size`` (256) from them (one batch when the ``N`` training
  images are fewer than a batch: Dassl's ``drop_last``), so an epoch sees as many samples as there
  are images, whatever the number of views; the last epoch's prototypes are kept.

``outer_steps=True`` runs the augmented Lagrangian's outer step after every epoch (their
``CONSTRAINT`` containing "adaptative"): ``lambda <- max(0, lambda + rho h)``, ``rho <- h`` with ``h``
the squared distances. The published runs keep the multipliers fixed (``CONSTRAINT=l2``), and so
does the default. ``constraint=False`` is their ZS-LP baseline.

Where mudpt differs (docs/METHODS.md, "CLAP"): the shuffles come from the run's seed (a torch
generator) rather than NumPy's global stream; the text embeddings are computed in float32, where
their text tower runs in CLIP's fp16 before the model is cast to float32. Everything else is
float32 in both. The prototypes score the classes they were fitted on, or a subset of them
(ImageNet-A/-R in domain generalisation); other classes are an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from mudpt.core.schedules import warmup_cosine
from mudpt.methods import register_method
from mudpt.methods.base import PromptMethod, Prompts
from mudpt.methods.closed_set import ClosedSet
from mudpt.methods.config import option
from mudpt.methods.feature_space import FeatureSpace
from mudpt.methods.tip_adapter import ZeroShotTemplatesConfig, clip_selected_templates
from mudpt.methods.zsclip import dataset_template


def clap_templates(templates, dataset: Optional[str]) -> list[str]:
    """The user's templates, else the authors' (``_get_base_text_features``): CoOp's template of
    the dataset, after CLIP's 7 selected ones for ImageNet."""
    if templates is not None:
        return [templates] if isinstance(templates, str) else list(templates)
    chosen = clip_selected_templates() if dataset == "imagenet" else []
    return chosen + [dataset_template(dataset)]


@dataclass
class CLAPConfig(ZeroShotTemplatesConfig):
    """CLAP's options. It trains on cached features inside ``fit``: its optimisation settings are
    these options (the authors' trainer config), not the run's optimiser fields."""

    augment_epochs: int = option(20, "augmented views of every training image, each a sample", min=1)
    epochs: int = option(300, "training epochs on the cached features", min=1)
    batch_size: int = option(256, "samples per step", min=1)
    lr: float = option(0.1, "SGD learning rate after the warm-up", min=0.0)
    momentum: float = option(0.9, "SGD momentum", min=0.0)
    weight_decay: float = option(0.0, "SGD weight decay", min=0.0)
    warmup_epochs: int = option(1, "constant warm-up epochs before the cosine schedule", min=0)
    warmup_lr: float = option(1e-5, "learning rate of the warm-up", min=0.0)
    constraint: bool = option(True, "the class-adaptive penalty towards the zero-shot prototypes (False: ZS-LP)")
    multipliers: Literal["zero_shot", "balanced", "corrected", "constant"] = option(
        "zero_shot", "the penalty's multipliers: zero-shot CLIP's mean probability of each class on its training "
                     "samples; all 1 (balanced); that rescaled to sum to C (corrected); its mean for every class "
                     "(constant)")
    outer_steps: bool = option(False, "the augmented Lagrangian's outer step after every epoch (the authors' "
                                      "'adaptative' constraint; their published runs keep the multipliers fixed)")


    def resolve(self, clip):
        return self.resolved(templates=clap_templates(self.templates, self.dataset))


def initial_multipliers(zero_shot_logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """``lambda`` (C,) from zero-shot CLIP's logits (M, C) of the training samples (their
    ``init_lagrangian_multipliers``)."""
    classes = zero_shot_logits.shape[1]
    if kind == "balanced":
        return torch.ones(classes, device=zero_shot_logits.device)
    one_hot = F.one_hot(labels, classes).float()
    performance = torch.diag(torch.softmax(zero_shot_logits, dim=-1).t() @ one_hot) / one_hot.sum(dim=0)
    if kind == "corrected":
        performance = performance * (classes / float(performance.sum()))
    elif kind == "constant":
        performance = torch.full_like(performance, float(performance.mean()))
    return performance


def outer_step(distance: torch.Tensor, multipliers: torch.Tensor, penalty: torch.Tensor):
    """The PHR outer step (their ``outer_step``): ``(max(0, lambda + rho h), h)``."""
    x = multipliers + penalty * distance
    return torch.where(x >= 0, x, torch.zeros_like(x)), distance.clone()


def batches_per_epoch(images: int, batch_size: int) -> int:
    """Dassl's training loader length: ``drop_last`` when there is at least one full batch."""
    return images // batch_size if images >= batch_size else 1


@register_method("clap")
class CLAP(ClosedSet, FeatureSpace, PromptMethod):
    """CLAP (see the module docstring)."""

    Config = CLAPConfig
    label = "CLAP"
    report_order = 24
    published_presets = "clap/vit_b16"

    def _set_prototypes(self, prototypes: torch.Tensor) -> None:
        self.register_buffer("prototypes", prototypes.detach().to(device=self.clip.device, dtype=torch.float32))
        self.fitted_classnames = list(self.classnames)

    def prepare_learned_state(self, state_dict):
        if "prototypes" in state_dict and not hasattr(self, "prototypes"):
            self._set_prototypes(torch.zeros_like(state_dict["prototypes"]))

    def zero_shot_prototypes(self) -> torch.Tensor:
        """``t`` (C, D): the raw mean of the raw text embeddings over the templates."""
        return self.frozen_text_features(self.settings.templates, average="raw", normalize=False)

    def fit(self, context):
        s = self.settings
        device = self.clip.device
        views = context.image_features(context.train, augment=True, views=s.augment_epochs)
        features = views.float().reshape(-1, views.shape[-1]).to(device)  # view-major, as their reps loop
        labels = torch.as_tensor([item.label for item in context.train], device=device).repeat(s.augment_epochs)
        self.require_every_class(labels.tolist())
        generator = torch.Generator().manual_seed(int(context.seed))
        prototypes, note = train_clap(features, labels, len(context.train), self.zero_shot_prototypes(),
                                      self.clip_logits, s, generator)
        self._set_prototypes(prototypes)
        context.note(f"clap: {note}")

    def logits(self, images):
        self.check_fitted("prototypes")
        return self.logits_of_features(self.encode_images(images, Prompts(text=[], vision=[])).float())

    def logits_of_features(self, features: torch.Tensor) -> torch.Tensor:
        """``s * norm(f) . norm(w_c)`` for the current classes."""
        return self.clip_logits(features, self.prototypes[self.fitted_rows()])


def train_clap(features, labels, images: int, zero_shot: torch.Tensor, logits_of, s: CLAPConfig,
               generator: torch.Generator):
    """CLAP's training (see the module docstring) on raw ``features`` (M, D) of ``images``
    training images, ``logits_of(features, prototypes)`` being the method's CLIP logits:
    ``(prototypes, note)``."""
    with torch.no_grad():
        multipliers = initial_multipliers(logits_of(features, zero_shot), labels, s.multipliers)
    penalty = torch.zeros_like(multipliers)
    prototypes = zero_shot.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([prototypes], lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    scheduler = warmup_cosine(optimizer, s.epochs, s.warmup_epochs, s.warmup_lr)
    steps = batches_per_epoch(images, s.batch_size)
    for _ in range(s.epochs):
        order = torch.randperm(features.shape[0], generator=generator).to(features.device)
        for b in range(steps):
            rows = order[b * s.batch_size:(b + 1) * s.batch_size]
            loss = F.cross_entropy(logits_of(features[rows], prototypes), labels[rows])
            if s.constraint:
                loss = loss + (multipliers * (prototypes - zero_shot).pow(2).sum(dim=-1)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        if s.constraint and s.outer_steps:
            with torch.no_grad():
                multipliers, penalty = outer_step((prototypes - zero_shot).pow(2).sum(dim=-1), multipliers, penalty)
    kind = "no constraint (ZS-LP)" if not s.constraint else f"{s.multipliers} multipliers (mean {float(multipliers.mean()):.3f})"
    return prototypes.detach(), f"{s.epochs} epochs of {steps} step(s), {kind}"
