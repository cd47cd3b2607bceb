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

The base-to-new variant (``main_base2new.py`` ``run``): the fitted classes' covariance is the
mean of the per-class covariances (``covariance="pooled"``), and classes the method was not
fitted on get a synthesised discriminant. For each such class's text feature ``w`` (zero-shot
CLIP's), its ``k`` (64) nearest training features ``V_w`` (by ``w . v``) give the mean
``mean([V_w; w repeated 16 times])`` and the precision
``D * pinv((k - 1) S_w + tr(S_w) I)`` with ``S_w = (V_w - w)^T (V_w - w) / (k - 1)``. The precisions
are averaged over the classes, the priors are uniform, and ``alpha`` is the fitted one. The
training features are therefore part of the learned state (``augment_epochs`` x shots x classes x
D floats). A class list the method was fitted on, or a subset of it, uses the fitted
discriminant's rows; any other list gets synthesised discriminants for all of its classes, as the
authors' new split does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from mudpt.core.errors import ConfigError
from mudpt.methods import register_method
from mudpt.methods.base import PromptMethod, Prompts
from mudpt.methods.config import option
from mudpt.methods.feature_space import FeatureSpace
from mudpt.methods.tip_adapter import CACHE_CROP_SCALE, ZeroShotTemplatesConfig

ALPHAS = [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]


@dataclass
class GDAConfig(ZeroShotTemplatesConfig):
    """GDA's options."""

    augment_epochs: int = option(10, "augmented views of every training image (each a sample)", min=1)
    alphas: list[float] = option(ALPHAS, "the alpha grid searched on the validation split",
                                 check=lambda v: len(v) >= 1 and min(v) >= 0, expected="a non-empty list of numbers >= 0")
    search: bool = option(True, "search alpha on the validation split (else init_alpha)")
    init_alpha: float = option(0.1, "alpha without a search (the authors' starting value)", min=0.0)
    logit_scale: Optional[float] = option(100.0, "zero-shot CLIP's logit scale (the authors' constant 100; None: "
                                                 "the backbone's)", min=0.0)
    covariance: Literal["shrinkage", "pooled"] = option(
        "shrinkage", "the fitted classes' covariance: the few-shot script's shrinkage estimator, or the base-to-new "
                     "script's mean of the per-class covariances")
    neighbours: int = option(64, "synthesised classes: training features nearest to the class's text feature", min=2)
    text_repeats: int = option(16, "synthesised classes: copies of the text feature in the class mean", min=0)




def _shrunk_precision(centred: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """The authors' shrinkage estimator: ``D * pinv((n - 1) S + tr(S) I)``."""
    dim = covariance.shape[0]
    return dim * torch.linalg.pinv((centred.shape[0] - 1) * covariance
                                   + covariance.trace() * torch.eye(dim, dtype=covariance.dtype))


def _linear(means: torch.Tensor, precision: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight (C, D), bias (C,))`` of Gaussians with ``means`` and a shared ``precision``,
    uniform priors: row c of the weight is ``mu_c^T P`` (so ``f . weight[c] = mu_c^T P f``, their
    ``'nd, dc -> cn'``)."""
    bias = math.log(1.0 / means.shape[0]) - torch.einsum("nd,dc,nc->n", means, precision, means) / 2
    return means @ precision, bias


def discriminant(features: torch.Tensor, labels: torch.Tensor, classes: int,
                 covariance: str = "shrinkage") -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight (C, D), bias (C,))`` of the fitted discriminant from samples ``features`` (M, D)
    with ``labels`` (M,): the few-shot script's shrinkage estimator of the class-centred samples,
    or the base-to-new script's ``pinv`` of the mean per-class covariance."""
    means = torch.stack([features[labels == c].mean(dim=0) for c in range(classes)])
    if covariance == "pooled":
        per_class = torch.stack([features[labels == c].T.cov() for c in range(classes)])
        return _linear(means, torch.linalg.pinv(per_class.mean(dim=0)))
    centred = torch.cat([features[labels == c] - means[c] for c in range(classes)])
    return _linear(means, _shrunk_precision(centred, centred.T.cov()))


def synthesised(text: torch.Tensor, features: torch.Tensor, neighbours: int,
                text_repeats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` for classes seen only through their normalised text features ``text``
    (C, D), from the training ``features`` (M, D) (see the module docstring)."""
    k = min(neighbours, features.shape[0])
    means, precisions = [], []
    for w in text:
        near = features[torch.topk(w @ features.T, k=k, largest=True)[1]]
        means.append(torch.cat([near, w.unsqueeze(0).repeat(text_repeats, 1)]).mean(dim=0))
        deviation = near - w.unsqueeze(0)
        covariance = deviation.T @ deviation / (k - 1)
        precisions.append(_shrunk_precision(near, covariance))
    return _linear(torch.stack(means), torch.stack(precisions).mean(dim=0))


@register_method("gda")
class GDA(FeatureSpace, PromptMethod):
    """Gaussian discriminant analysis on frozen features (see the module docstring)."""

    Config = GDAConfig
    label = "GDA"
    report_order = 72
    # the few-shot script's recipe, and the base-to-new script's (pooled covariance, synthesised new classes)
    published_presets = {"fewshot": "gda/vit_b16", "base2new": "gda/vit_b16_base2new", "xd": "gda/vit_b16"}
    train_crop_scale = CACHE_CROP_SCALE

    #: the classes of the fitted discriminant, in its row order
    fitted_classnames: list = []

    def _set_discriminant(self, weight: torch.Tensor, bias: torch.Tensor, alpha: float,
                          features: torch.Tensor) -> None:
        device = self.clip.device
        self.register_buffer("gda_weight", weight.to(device=device, dtype=torch.float32))
        self.register_buffer("gda_bias", bias.to(device=device, dtype=torch.float32))
        self.register_buffer("alpha", torch.as_tensor(float(alpha), device=device))
        self.register_buffer("train_features", features.to(device=device, dtype=torch.float32))
        self.fitted_classnames = list(self.classnames)
        self._synthesised = None

    def prepare_learned_state(self, state_dict):
        if "gda_weight" in state_dict and not hasattr(self, "gda_weight"):
            self._set_discriminant(torch.zeros_like(state_dict["gda_weight"]), torch.zeros_like(state_dict["gda_bias"]),
                                   0.0, torch.zeros_like(state_dict["train_features"]))
            self.fitted_classnames = list(self.classnames)  # what it is loaded with: the saved fitted classes

    def on_classnames_changed(self) -> None:
        self._synthesised = None

    def load_learned_state_dict(self, state_dict: dict) -> None:
        super().load_learned_state_dict(state_dict)
        self._synthesised = None

    def _apply(self, fn, *args, **kwargs):
        self._synthesised = None  # computed on the old device / dtype
        return super()._apply(fn, *args, **kwargs)

    def fit(self, context):
        s = self.settings
        views = context.image_features(context.train, augment=True, views=s.augment_epochs,
                                       crop_scale=CACHE_CROP_SCALE)
        features = F.normalize(views.float(), dim=-1).reshape(-1, views.shape[-1])  # view-major, as their loop
        labels = torch.as_tensor([item.label for item in context.train]).repeat(s.augment_epochs)
        self.require_every_class(labels)
        weight, bias = discriminant(features, labels, len(self.classnames), s.covariance)
        self._set_discriminant(weight, bias, s.init_alpha, features)
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

    def logits(self, images):
        self.check_fitted("gda_weight")
        features = F.normalize(self.encode_images(images, Prompts(text=[], vision=[])).float(), dim=-1)
        return self.logits_of_features(features)

    def discriminant_for_classes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` of the current classes: the fitted rows when every class was fitted,
        else discriminants synthesised for all of them (cached per class list)."""
        fitted = {name: i for i, name in enumerate(self.fitted_classnames)}
        if all(name in fitted for name in self.classnames):
            rows = torch.as_tensor([fitted[name] for name in self.classnames], device=self.clip.device)
            return self.gda_weight[rows], self.gda_bias[rows]
        if getattr(self, "_synthesised", None) is None:
            with torch.no_grad():
                text = self.frozen_text_features(self.settings.templates)
                self._synthesised = synthesised(text, self.train_features, self.settings.neighbours,
                                                self.settings.text_repeats)
        return self._synthesised

    def logits_of_features(self, features: torch.Tensor, alpha=None) -> torch.Tensor:
        """``100 f W^T + alpha (f w_c + b_c)`` of normalised features ``f`` for the current classes."""
        alpha = self.alpha if alpha is None else alpha
        weight, bias = self.discriminant_for_classes()
        clip_logits = self.clip_logits(features, self.frozen_text_features(self.settings.templates))
        return clip_logits + alpha * (features @ weight.t() + bias)
