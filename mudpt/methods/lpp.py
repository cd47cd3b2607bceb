"""LP++ (Huang et al., CVPR 2024): a linear probe whose class scores blend learned visual
prototypes with zero-shot CLIP's text embeddings through class-wise multipliers, trained with
data-driven step sizes, as the authors' code computes it
(github.com/FereshteShakeri/FewShot-CLIP-Strong-Baseline, ``methods/linear_probe_p2.py``
``LinearProbe_P2.forward`` and ``calculate_*``; ``methods/utils.py`` ``compute_centroids*``):

* features: frozen CLIP's L2-normalised features of one augmented view of every training image
  (their ``train_tranform``: random resized crop of scale 0.5-1 and flip), the validation images
  with the test transform; ``T`` zero-shot CLIP's normalised class text features (the dataset's
  templates, as Tip-Adapter's, whose data code they reuse);
* logits ``f W^T + b + alpha_c (f . t_c)`` with prototypes ``W`` (C, D) initialised to the *sum*
  of each class's features (``compute_centroids``: the division is commented out), a bias ``b``
  drawn as ``nn.Linear`` draws it (uniform in +-1/sqrt(D)), and one multiplier per class,
  all initialised to ``init_scale`` (250) x the mean over classes of the class's mean text score
  ``f_i . t_c`` (``calculate_init_alpha``: their ``250 / shots * shots * mean``);
* ``steps`` (300) full-batch steps: SGD with momentum 0.9 on ``W`` and ``b`` at
  ``lr_w = 4 N / lambda_max(F^T F)`` (``calculate_lr_w``), the mean cross-entropy over the ``N``
  training features; every ``alpha_every`` (10) steps a gradient step on the multipliers at
  ``lr_alpha = N / (4 max_c sum_i (f_i . t_c)^2)`` (``calculate_lr_alpha``);
* after every step the validation accuracy; the state of the best step is kept (``>=``: the
  latest of equal ones), as their code reports the test accuracy of that step.

Where mudpt differs, on purpose (docs/METHODS.md, "LP++"): their multiplier step uses
``alpha_vec.grad``, which nothing zeroes (``optimizer.zero_grad()`` covers the classifier only),
so at step ``10 k`` it is the sum of the gradients of all steps so far. That is what produced
their numbers, so it is the default (``alpha_gradient="accumulated"``); ``"current"`` takes the
step's own gradient, as the paper's block coordinate descent describes. Their tensors are CLIP's
fp16 on CUDA (their code runs only there); mudpt computes in float32, the step sizes' eigenvalue
in float64. The bias draw and the augmented view come from the run's seed, not their RNG stream.

The classifier scores the classes it was fitted on, or a subset of them; other classes are an
error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from mudpt.core.errors import ConfigError
from mudpt.methods import register_method
from mudpt.methods.base import PromptMethod, Prompts
from mudpt.methods.closed_set import ClosedSet
from mudpt.methods.config import option
from mudpt.methods.feature_space import FeatureSpace
from mudpt.methods.tip_adapter import CACHE_CROP_SCALE, ZeroShotTemplatesConfig


@dataclass
class LPPConfig(ZeroShotTemplatesConfig):
    """LP++'s options."""

    steps: int = option(300, "full-batch gradient steps (the authors' train_epoch)", min=1)
    alpha_every: int = option(10, "a step on the class multipliers every this many steps", min=1)
    alpha_gradient: Literal["accumulated", "current"] = option(
        "accumulated", "the multipliers' step: the gradient summed over all steps so far (the authors' code) or the "
                       "step's own gradient (the paper's block coordinate descent)")
    init_scale: float = option(250.0, "the multipliers start at this times the mean class text score", min=0.0)
    momentum: float = option(0.9, "SGD momentum of the prototypes and bias", min=0.0)
    select_on_validation: bool = option(True, "keep the step with the best validation accuracy (the authors' code); "
                                              "else the last step")




def step_sizes(features: torch.Tensor, text_scores: torch.Tensor) -> tuple[float, float]:
    """``(lr_w, lr_alpha)``: ``4 N / lambda_max(F^T F)`` and ``N / (4 max_c sum_i s_ic^2)`` of
    normalised ``features`` (N, D) and their text scores ``s = F T^T`` (N, C)."""
    n = features.shape[0]
    gram = features.double().T @ features.double()
    lr_w = 4 * n / float(torch.linalg.eigvalsh(gram).max())
    lr_alpha = n / (4 * float(text_scores.double().pow(2).sum(dim=0).max()))
    return lr_w, lr_alpha


def class_sums(features: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """``(C, D)``: the sum of each class's rows (the authors' ``compute_centroids``)."""
    return F.one_hot(labels, classes).to(features.dtype).T @ features


@register_method("lpp")
class LPP(ClosedSet, FeatureSpace, PromptMethod):
    """LP++ (see the module docstring)."""

    Config = LPPConfig
    label = "LP++"
    report_order = 22
    published_presets = "lpp/vit_b16"
    train_crop_scale = CACHE_CROP_SCALE

    def _set_classifier(self, weight: torch.Tensor, bias: torch.Tensor, alpha: torch.Tensor) -> None:
        device = self.clip.device
        self.register_buffer("lpp_weight", weight.detach().to(device=device, dtype=torch.float32))
        self.register_buffer("lpp_bias", bias.detach().to(device=device, dtype=torch.float32))
        self.register_buffer("lpp_alpha", alpha.detach().to(device=device, dtype=torch.float32))
        self.fitted_classnames = list(self.classnames)

    def prepare_learned_state(self, state_dict):
        if "lpp_weight" in state_dict and not hasattr(self, "lpp_weight"):
            self._set_classifier(torch.zeros_like(state_dict["lpp_weight"]), torch.zeros_like(state_dict["lpp_bias"]),
                                 torch.zeros_like(state_dict["lpp_alpha"]))

    def text_features(self) -> torch.Tensor:
        return self.frozen_text_features(self.settings.templates)

    def fit(self, context):
        s = self.settings
        device = self.clip.device
        views = context.image_features(context.train, augment=True, views=1, crop_scale=CACHE_CROP_SCALE)
        features = F.normalize(views[0].float().to(device), dim=-1)
        labels = torch.as_tensor([item.label for item in context.train], device=device)
        classes = len(self.classnames)
        self.require_every_class(labels.tolist())
        val_features = F.normalize(context.image_features(context.val)[0].float().to(device), dim=-1)
        val_labels = torch.as_tensor([item.label for item in context.val], device=device)
        if s.select_on_validation and len(val_labels) == 0:
            raise ConfigError("lpp keeps the step with the best validation accuracy, and the validation split is "
                              "empty here (or set select_on_validation=False)", field="dataset")
        with torch.no_grad():
            text = self.text_features()
            scores, val_scores = features @ text.t(), val_features @ text.t()
        generator = torch.Generator().manual_seed(int(context.seed))
        bound = 1.0 / math.sqrt(features.shape[1])
        bias0 = (torch.rand(classes, generator=generator) * 2 - 1) * bound
        weight, bias, alpha, note = train_lpp(features, labels, scores, val_features, val_scores, val_labels,
                                              bias0.to(device), s)
        self._set_classifier(weight, bias, alpha)
        context.note(f"lpp: {note}")

    def logits(self, images):
        self.check_fitted("lpp_weight")
        features = F.normalize(self.encode_images(images, Prompts(text=[], vision=[])).float(), dim=-1)
        return self.logits_of_features(features)

    def logits_of_features(self, features: torch.Tensor) -> torch.Tensor:
        """``f W^T + b + alpha_c (f . t_c)`` of normalised features ``f`` for the current classes."""
        rows = self.fitted_rows()
        return lpp_logits(features, self.lpp_weight[rows], self.lpp_bias[rows], self.lpp_alpha[rows],
                          features @ self.text_features().t())


def lpp_logits(features, weight, bias, alpha, scores):
    """LP++'s logits from normalised features, prototypes, bias, multipliers and text scores."""
    return features @ weight.t() + bias + alpha * scores


def train_lpp(features, labels, scores, val_features, val_scores, val_labels, bias0, s: LPPConfig):
    """LP++'s optimisation (see the module docstring) on normalised ``features`` (N, D) with text
    ``scores`` (N, C), and the validation split's: ``(weight, bias, alpha, note)``."""
    classes = scores.shape[1]
    lr_w, lr_alpha = step_sizes(features, scores)
    counts = torch.bincount(labels, minlength=classes).to(scores.dtype)
    class_mean_score = class_sums(scores, labels, classes).diagonal() / counts  # mean_{i in c} s_ic
    weight = class_sums(features, labels, classes).clone().requires_grad_(True)
    bias = bias0.clone().float().requires_grad_(True)
    alpha = torch.full((classes,), s.init_scale * float(class_mean_score.mean()), device=features.device,
                       requires_grad=True)
    optimizer = torch.optim.SGD([weight, bias], lr=lr_w, momentum=s.momentum)
    accumulated = torch.zeros_like(alpha)
    best = (-1, -1, None)  # (correct, step, state)
    for step in range(s.steps):
        loss = F.cross_entropy(lpp_logits(features, weight, bias, alpha, scores), labels)
        optimizer.zero_grad()
        grad_weight, grad_bias, grad_alpha = torch.autograd.grad(loss, [weight, bias, alpha])
        weight.grad, bias.grad = grad_weight, grad_bias
        optimizer.step()
        accumulated += grad_alpha
        if (step + 1) % s.alpha_every == 0:
            with torch.no_grad():
                alpha -= lr_alpha * (accumulated if s.alpha_gradient == "accumulated" else grad_alpha)
        if s.select_on_validation:
            with torch.no_grad():
                predicted = lpp_logits(val_features, weight, bias, alpha, val_scores).argmax(dim=1)
                correct = int((predicted == val_labels).sum())
            if correct >= best[0]:
                best = (correct, step, (weight.detach().clone(), bias.detach().clone(), alpha.detach().clone()))
    if not s.select_on_validation:
        return weight.detach(), bias.detach(), alpha.detach(), (
            f"{s.steps} steps (lr_w {lr_w:.4g}, lr_alpha {lr_alpha:.4g}), the last kept")
    correct, step, (weight, bias, alpha) = best
    return weight, bias, alpha, (f"step {step + 1} of {s.steps} kept ({100 * correct / len(val_labels):.2f}% on the "
                                 f"validation split; lr_w {lr_w:.4g}, lr_alpha {lr_alpha:.4g})")
