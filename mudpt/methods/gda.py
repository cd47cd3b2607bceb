"""GDA (Wang et al., ICLR 2024): training-free Gaussian discriminant analysis on frozen CLIP
features beside zero-shot CLIP, as the authors' code computes it (github.com/mrflogs/ICLR24,
``main_few_shots.py`` ``run``; ``utils.py`` ``clip_classifier``):

* features: frozen CLIP's L2-normalised features of ``augment_epochs`` augmented views of every
  training image (random resized crop of scale 0.5-1 and flip, each view a sample of its own);
* class means ``mu_c``; a covariance shared by the classes from the class-centred samples, with
  the authors' shrinkage: ``P = D * pinv((N - 1) S + tr(S) I)``, ``S`` the covariance
  (``torch.cov``) of the ``N`` centred samples of dimension ``D``;
* the linear discriminant ``w_c = P mu_c``, ``b_c = log(1/C) - mu_c^T P mu_c / 2`` (uniform
  priors);
* logits ``100 f W^T + alpha (f w_c + b_c)`` for a normalised test feature ``f``, with zero-shot
  CLIP's class text features ``W`` (the dataset's templates: CLIP's 7 for ImageNet and its
  variants, CoOp's hand-crafted one otherwise, as Tip-Adapter's, whose data code GDA reuses) and
  the constant 100 of their code;
* ``alpha`` searched on the validation split over ``[1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100]``, the
  first best kept (0.1 when none is better than 0 %).

The discriminant scores the classes it was fitted on or a subset of them (``ClosedSet``). The
authors' base-to-new variant (``main_base2new.py``) is not here yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F

from mudpt.core.errors import ConfigError
from mudpt.methods import register_method
from mudpt.methods.base import PromptMethod, Prompts
from mudpt.methods.closed_set import ClosedSet
from mudpt.methods.config import MethodConfig, option
from mudpt.methods.tip_adapter import CACHE_CROP_SCALE, resolve_templates
from mudpt.methods.zsclip import DATASET_TEMPLATES

ALPHAS = [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]


@dataclass
class GDAConfig(MethodConfig):
    """GDA's options."""

    augment_epochs: int = option(10, "augmented views of every training image (each a sample)", min=1)
    alphas: list[float] = option(ALPHAS, "the alpha grid searched on the validation split",
                                 check=lambda v: len(v) >= 1 and min(v) >= 0, expected="a non-empty list of numbers >= 0")
    search: bool = option(True, "search alpha on the validation split (else init_alpha)")
    init_alpha: float = option(0.1, "alpha without a search (the authors' starting value)", min=0.0)
    templates: Optional[Union[str, list[str]]] = option(None, "zero-shot CLIP's templates (default: the dataset's)")
    dataset: Optional[str] = option(None, "take the templates of this benchmark dataset")
    logit_scale: Optional[float] = option(100.0, "zero-shot CLIP's logit scale (the authors' constant 100; None: "
                                                 "the backbone's)", min=0.0)

    dataset_templates = DATASET_TEMPLATES
    template_option = "templates"

    def resolve(self, clip):
        return self.resolved(templates=resolve_templates(self.templates, self.dataset))


def discriminant(features: torch.Tensor, labels: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight (C, D), bias (C,))`` of the authors' discriminant from samples ``features``
    (M, D) with ``labels`` (M,) (see the module docstring)."""
    means = torch.stack([features[labels == c].mean(dim=0) for c in range(classes)])
    centred = torch.cat([features[labels == c] - means[c] for c in range(classes)])
    covariance = centred.T.cov()
    dim = centred.shape[1]
    precision = dim * torch.linalg.pinv((centred.shape[0] - 1) * covariance
                                        + covariance.trace() * torch.eye(dim, dtype=features.dtype))
    weight = means @ precision  # row c: mu_c^T P, so f . weight[c] = mu_c^T P f (their 'nd, dc -> cn')
    bias = math.log(1.0 / classes) - torch.einsum("nd,dc,nc->n", means, precision, means) / 2
    return weight, bias


@register_method("gda")
class GDA(ClosedSet, PromptMethod):
    """Gaussian discriminant analysis on frozen features (see the module docstring)."""

    Config = GDAConfig
    label = "GDA"
    report_order = 72
    published_presets = "gda/vit_b16"
    optimized = False
    train_crop_scale = CACHE_CROP_SCALE

    def prompt_texts(self, classnames):  # zero-shot CLIP's text comes from frozen_text_features
        return ["" for _ in classnames]

    def text_learned_tensors(self):
        return []

    def _set_discriminant(self, weight: torch.Tensor, bias: torch.Tensor, alpha: float) -> None:
        device = self.clip.device
        self.register_buffer("gda_weight", weight.to(device=device, dtype=torch.float32))
        self.register_buffer("gda_bias", bias.to(device=device, dtype=torch.float32))
        self.register_buffer("alpha", torch.as_tensor(float(alpha), device=device))
        self.fitted_classnames = list(self.classnames)

    def prepare_learned_state(self, state_dict):
        if "gda_weight" in state_dict and not hasattr(self, "gda_weight"):
            self._set_discriminant(torch.zeros_like(state_dict["gda_weight"]), torch.zeros_like(state_dict["gda_bias"]),
                                   0.0)

    def fit(self, context):
        s = self.settings
        views = context.image_features(context.train, augment=True, views=s.augment_epochs,
                                       crop_scale=CACHE_CROP_SCALE)
        features = F.normalize(views.float(), dim=-1).reshape(-1, views.shape[-1])  # view-major, as their loop
        labels = torch.as_tensor([item.label for item in context.train]).repeat(s.augment_epochs)
        missing = sorted(set(range(len(self.classnames))) - set(labels.tolist()))
        if missing:
            raise ConfigError(f"gda needs training images of every class; {len(missing)} class(es) have none, e.g. "
                              f"{self.classnames[missing[0]]!r}", field="dataset")
        weight, bias = discriminant(features, labels, len(self.classnames))
        self._set_discriminant(weight, bias, s.init_alpha)
        if s.search:
            self.search_alpha(context)

    def search_alpha(self, context) -> None:
        features = F.normalize(context.image_features(context.val)[0].float().to(self.clip.device), dim=-1)
        labels = torch.as_tensor([item.label for item in context.val], device=self.clip.device)
        if len(labels) == 0:
            raise ConfigError("gda searches alpha on the validation split, which is empty here (or set search=False)",
                              field="dataset")
        best, best_alpha = 0.0, 0.1  # the authors' starting values
        with torch.no_grad():
            for alpha in self.settings.alphas:
                accuracy = float((self.logits_of_features(features, alpha).argmax(dim=1) == labels).float().mean())
                if accuracy > best:
                    best, best_alpha = accuracy, alpha
        self.alpha.fill_(best_alpha)
        context.note(f"gda: alpha {best_alpha:g} chosen on the validation split ({100 * best:.2f}%)")

    @property
    def logit_scale(self) -> torch.Tensor:
        if self.settings.logit_scale is None:
            return super().logit_scale
        return torch.tensor(float(self.settings.logit_scale), device=self.clip.device)

    def logits(self, images):
        if not hasattr(self, "gda_weight"):
            raise ConfigError("gda has not been fitted: train it (mudpt train fits it) or load a fitted one",
                              field="method")
        features = F.normalize(self.encode_images(images, Prompts(text=[], vision=[])).float(), dim=-1)
        return self.logits_of_features(features)

    def logits_of_features(self, features: torch.Tensor, alpha=None) -> torch.Tensor:
        """``100 f W^T + alpha (f w_c + b_c)`` of normalised features ``f`` for the current classes."""
        alpha = self.alpha if alpha is None else alpha
        rows = self.fitted_rows()
        clip_logits = self.clip_logits(features, self.frozen_text_features(self.settings.templates))
        return clip_logits + alpha * (features @ self.gda_weight[rows].t() + self.gda_bias[rows])
