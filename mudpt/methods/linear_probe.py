"""Linear probe: logistic regression on frozen CLIP image features (the CLIP papers' baseline).

As CoOp's ``lpclip/linear_probe.py`` runs it: scikit-learn's ``LogisticRegression`` (lbfgs, L2,
1000 iterations) on the few-shot training features; the inverse regularisation strength ``C``
chosen on the validation split by CoOp's search: the best of ``1e6, 1e4, ..., 1e-6`` (the
first best), then ``steps`` rounds of a bisection in log space between ``C/10`` and ``10 C``
(each round fits both ends, keeps the better, halves the interval towards it). Features come
from the test transform (centre crop, no augmentation) and are L2-normalised (``normalize``;
CoOp's script uses the raw features: ``normalize=False``). The fit is in float64, as CoOp's
script fits the float64 arrays its feature extractor writes (``feat_extractor.py`` saves
``feature.tolist()``): the float32 features are cast at the fit, not in the cache. At small ``C``
a float32 fit flips validation predictions, and the search then takes another path. Features
are extracted once per backbone, weights and items and cached on disk
(:class:`~mudpt.methods.base.FitContext`).

The classifier predicts only the classes it was fitted on: asking it for other classes (new
classes, another dataset) is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mudpt.core.errors import ConfigError
from mudpt.methods import register_method
from mudpt.methods.base import PromptMethod, Prompts
from mudpt.methods.closed_set import ClosedSet
from mudpt.methods.config import MethodConfig, option
from mudpt.methods.feature_space import FeatureSpace

INITIAL_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


@dataclass
class LinearProbeConfig(MethodConfig):
    """The linear probe's options."""

    normalize: bool = option(True, "L2-normalise the image features (CoOp's script: raw features)")
    steps: int = option(8, "bisection rounds of the search for C after the initial grid", min=0)
    max_iter: int = option(1000, "lbfgs iterations of each fit", min=1)


def _fit(features: np.ndarray, labels: np.ndarray, c: float, max_iter: int):
    import warnings

    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        # Few-shot data has few samples per class by design (1 shot: as many classes as samples).
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        return LogisticRegression(solver="lbfgs", max_iter=max_iter, C=c).fit(features, labels)


def _accuracy(classifier, features: np.ndarray, labels: np.ndarray) -> float:
    return float((classifier.predict(features) == labels).mean())


def search_c(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, steps: int = 8,
             max_iter: int = 1000, fit=_fit) -> tuple[float, object, list]:
    """CoOp's search for ``C`` (see the module docstring): ``(C, classifier, trace)`` where
    ``trace`` lists ``(C, validation accuracy)`` of every fit, in order."""
    trace = []
    grid = []
    for c in INITIAL_GRID:
        classifier = fit(train_x, train_y, c, max_iter)
        grid.append((_accuracy(classifier, val_x, val_y), classifier))
        trace.append((c, grid[-1][0]))
    peak = int(np.argmax([acc for acc, _ in grid]))
    c_final, final = INITIAL_GRID[peak], grid[peak][1]
    left, right = 0.1 * c_final, 10.0 * c_final
    for _ in range(steps):
        fit_left, fit_right = fit(train_x, train_y, left, max_iter), fit(train_x, train_y, right, max_iter)
        acc_left, acc_right = _accuracy(fit_left, val_x, val_y), _accuracy(fit_right, val_x, val_y)
        trace += [(left, acc_left), (right, acc_right)]
        if acc_left < acc_right:
            c_final, final = right, fit_right
            left, right = 10 ** (0.5 * (math.log10(right) + math.log10(left))), right
        else:
            c_final, final = left, fit_left
            left, right = left, 10 ** (0.5 * (math.log10(right) + math.log10(left)))
    return c_final, final, trace


@register_method("linear_probe")
class LinearProbe(ClosedSet, FeatureSpace, PromptMethod):
    """Logistic regression on frozen image features (see the module docstring)."""

    Config = LinearProbeConfig
    label = "Linear probe"
    report_order = 20
    published_presets = "linear_probe/vit_b16"

    def build(self):
        self.prompt_prefix = ""

    def fit(self, context):
        # float64, as CoOp's script fits (see the module docstring)
        train = context.image_features(context.train)[0].double()
        val = context.image_features(context.val)[0].double()
        if self.settings.normalize:
            train, val = F.normalize(train, dim=-1), F.normalize(val, dim=-1)
        train_y = np.array([item.label for item in context.train])
        val_y = np.array([item.label for item in context.val])
        if len(val_y) == 0:
            raise ConfigError("the linear probe chooses C on the validation split, which is empty here",
                              field="dataset")
        c, classifier, _ = search_c(train.numpy(), train_y, val.numpy(), val_y, self.settings.steps,
                                    self.settings.max_iter)
        weight = torch.zeros(len(self.classnames), train.shape[1])
        bias = torch.full((len(self.classnames),), -1e4)  # a class without training images is never predicted
        classes = torch.as_tensor(classifier.classes_, dtype=torch.long)
        coef = torch.as_tensor(classifier.coef_, dtype=torch.float32)
        intercept = torch.as_tensor(classifier.intercept_, dtype=torch.float32).reshape(-1)
        if len(classes) == 2:
            # A binary fit has one score w.x + b for its second class: as softmax logits, the
            # first class scores 0, so that the arg-max and the probabilities are the fit's own.
            coef = torch.cat([torch.zeros_like(coef), coef])
            intercept = torch.cat([torch.zeros_like(intercept), intercept])
        weight[classes] = coef.reshape(len(classes), -1)
        bias[classes] = intercept
        self._set_classifier(weight, bias, c)
        context.note(f"linear probe: C = {c:.4g} chosen on the validation split")

    def _set_classifier(self, weight: torch.Tensor, bias: torch.Tensor, c) -> None:
        device = self.clip.device
        self.register_buffer("weight", weight.to(device))
        self.register_buffer("bias", bias.to(device))
        self.register_buffer("c", torch.as_tensor(float(c), device=device))
        self.fitted_classnames = list(self.classnames)

    def prepare_learned_state(self, state_dict):
        if "weight" in state_dict and not hasattr(self, "weight"):
            self._set_classifier(torch.zeros_like(state_dict["weight"]), torch.zeros_like(state_dict["bias"]), 0.0)

    def logits(self, images):
        self.check_fitted("weight")
        features = self.encode_images(images, Prompts(text=[], vision=[])).float()
        if self.settings.normalize:
            features = F.normalize(features, dim=-1)
        rows = self.fitted_rows()
        return features @ self.weight[rows].t() + self.bias[rows]
