"""Tip-Adapter and Tip-Adapter-F: a key-value cache of few-shot image features beside zero-shot CLIP.

Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification"
(ECCV 2022), as their code (gaopengcuhk/Tip-Adapter, ``main.py`` and ``utils.py``) computes it:

* cache keys: frozen CLIP's features of the few-shot training images, averaged over
  ``augment_epochs`` augmented views (random resized crop of scale 0.5-1 and flip), then
  L2-normalised; values: the one-hot labels;
* logits ``s * f W^T + alpha * exp(-beta * (1 - f K^T)) L`` for a normalised test feature ``f``,
  zero-shot CLIP's class text features ``W`` (the dataset's hand-crafted template; ImageNet and
  its variants: CLIP's 7 selected templates, ensembled) and the cache keys ``K`` / values ``L``;
  ``s`` is the authors' constant 100 (``clip_logits = 100. * features @ clip_weights``), not the
  backbone's ``logit_scale.exp()``: OpenAI's archives store the scale in fp16, where ln 100 rounds
  to 4.60546875 and its exp is 100.0299. ``logit_scale=None`` uses the backbone's own scale, as
  the world's presets do (its tiny CLIP learned 19.09, and 100 is OpenAI's clamped value);
* ``alpha`` and ``beta`` searched on the validation split over ``search_step`` values in
  ``[0.1, search_scale)`` each (200 betas, 20 alphas; the first best kept). The grid's upper
  ends and the initial ``alpha`` are the authors' per dataset (``configs/<dataset>.yaml``,
  :data:`DATASET_SETTINGS`; ImageNet's for datasets they did not configure) unless set.

``tip_adapter`` is training-free (the cache is its learned state, stored in fp16 as the authors'
fp16 model holds it: 16 shots x 1,000 classes x 512 dims = 15.6 MiB). ``tip_adapter_f`` makes the
keys a trainable tensor initialised from the cache and trains it with the cross-entropy of the
logits at the initial ``alpha``, ``beta`` (the authors' recipe: AdamW, lr 0.001, eps 1e-4, batch
256, 20 epochs, cosine per step, the cache's augmentation), then searches ``alpha``, ``beta`` on
the validation split. Two differences from the authors' code: they keep the epoch with the best
*test* accuracy, which selects on test labels, where mudpt keeps the last epoch; and their
keys train in pure fp16 (the model's dtype), where mudpt keeps trained keys in fp32 under the
run's autocast precision.

The cache scores the classes it was built from, or a subset of them (the cache's values restricted
to those classes' columns, as for ImageNet-A/-R); other classes are an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from mudpt.core.errors import ConfigError
from mudpt.methods import register_method
from mudpt.methods.base import PromptMethod, Prompts
from mudpt.methods.closed_set import ClosedSet
from mudpt.methods.config import MethodConfig, option
from mudpt.methods.feature_space import FeatureSpace
from mudpt.methods.zsclip import DATASET_TEMPLATES, dataset_template

CACHE_CROP_SCALE = (0.5, 1.0)
IMAGENET_DATASETS = ("imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")


def clip_selected_templates() -> list[str]:
    """CLIP's 7 selected ImageNet templates (open_clip's ``SIMPLE_IMAGENET_TEMPLATES``)."""
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    return [template("{}") for template in SIMPLE_IMAGENET_TEMPLATES]


#: The authors' per-dataset settings (their configs/<dataset>.yaml): the upper ends of the beta and
#: alpha grids, and the initial alpha (the initial beta is 1 everywhere). Tip-Adapter-F trains 20
#: epochs on each, EuroSAT 100.
DATASET_SETTINGS = {
    "imagenet": ([7.0, 3.0], 1.17), "caltech101": ([12.0, 5.0], 3.0), "dtd": ([13.0, 13.0], 2.0),
    "eurosat": ([12.0, 10.0], 2.0), "fgvc_aircraft": ([30.0, 30.0], 5.0), "food101": ([10.0, 10.0], 1.17),
    "oxford_flowers": ([50.0, 50.0], 10.0), "oxford_pets": ([7.0, 3.0], 1.17),
    "stanford_cars": ([20.0, 10.0], 3.0), "sun397": ([12.0, 10.0], 1.17), "ucf101": ([7.0, 3.0], 3.0),
}


def resolve_templates(templates, dataset: Optional[str]) -> list[str]:
    """Zero-shot CLIP's templates of the cache methods (Tip-Adapter's data code, which GDA
    reuses): the user's, CLIP's 7 selected ones for ImageNet and its variants, else the
    dataset's hand-crafted one (CoOp's)."""
    if templates is not None:
        return [templates] if isinstance(templates, str) else list(templates)
    if dataset in IMAGENET_DATASETS:
        return clip_selected_templates()
    return [dataset_template(dataset)]


@dataclass
class ZeroShotTemplatesConfig(MethodConfig):
    """The zero-shot templates option of the methods that set zero-shot CLIP beside what they
    learn (Tip-Adapter, GDA, LP++, CLAP): the user's, else the dataset's (:func:`resolve_templates`)."""

    templates: Optional[Union[str, list[str]]] = option(None, "zero-shot CLIP's templates (default: the dataset's)")
    dataset: Optional[str] = option(None, "take the templates of this benchmark dataset")

    dataset_templates = DATASET_TEMPLATES
    template_option = "templates"

    def resolve(self, clip):
        return self.resolved(templates=resolve_templates(self.templates, self.dataset))


def search_values(scale: float, steps: int) -> list[float]:
    """The authors' search grid: ``i * (scale - 0.1) / steps + 0.1`` for ``i < steps``."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


@dataclass
class TipAdapterConfig(ZeroShotTemplatesConfig):
    """Tip-Adapter's options."""

    augment_epochs: int = option(10, "augmented views of each training image averaged into its cache key", min=1)
    init_alpha: Optional[float] = option(None, "alpha without a search and during Tip-Adapter-F's training "
                                               "(default: the authors' for the dataset)", min=0)
    init_beta: float = option(1.0, "beta without a search (and during Tip-Adapter-F's training)", min=0)
    search: bool = option(True, "search alpha and beta on the validation split")
    search_scale: Optional[list[float]] = option(None, "upper ends of the beta and alpha grids (default: the "
                                                 "authors' for the dataset)", check=lambda v: len(v) == 2 and min(v) > 0.1,
                                                 expected="two numbers > 0.1")
    search_step: list[int] = option([200, 20], "grid sizes of beta and alpha",
                                    check=lambda v: len(v) == 2 and min(v) >= 1, expected="two integers >= 1")
    logit_scale: Optional[float] = option(100.0, "zero-shot CLIP's logit scale (the authors' constant 100; None: "
                                                 "the backbone's)", min=0.0)


    def resolve(self, clip):
        templates = resolve_templates(self.templates, self.dataset)
        dataset = "imagenet" if self.dataset in IMAGENET_DATASETS else self.dataset
        scale, alpha = DATASET_SETTINGS.get(dataset, DATASET_SETTINGS["imagenet"])
        return self.resolved(templates=templates,
                             search_scale=list(self.search_scale) if self.search_scale is not None else list(scale),
                             init_alpha=self.init_alpha if self.init_alpha is not None else alpha)


@register_method("tip_adapter")
class TipAdapter(ClosedSet, FeatureSpace, PromptMethod):
    """The training-free cache model (see the module docstring)."""

    Config = TipAdapterConfig
    label = "Tip-Adapter"
    report_order = 60
    published_presets = "tip_adapter/vit_b16"
    train_crop_scale = CACHE_CROP_SCALE
    keys_dtype = torch.float16  # the authors' fp16 cache

    # -- the cache ------------------------------------------------------------------------------
    def _set_cache(self, keys: torch.Tensor, labels: torch.Tensor, alpha: float, beta: float) -> None:
        device = self.clip.device
        self.register_buffer("cache_keys", keys.to(device=device, dtype=self.keys_dtype))
        self.register_buffer("cache_labels", labels.to(device=device, dtype=torch.int32))
        self.register_buffer("alpha", torch.as_tensor(float(alpha), device=device))
        self.register_buffer("beta", torch.as_tensor(float(beta), device=device))
        self.fitted_classnames = list(self.classnames)

    def prepare_learned_state(self, state_dict):
        if "cache_keys" in state_dict and not hasattr(self, "cache_labels"):
            self._set_cache(torch.zeros_like(state_dict["cache_keys"]), torch.zeros_like(state_dict["cache_labels"]),
                            0.0, 0.0)

    def keys(self) -> torch.Tensor:
        return self.cache_keys

    def fit(self, context):
        s = self.settings
        views = context.image_features(context.train, augment=True, views=s.augment_epochs,
                                       crop_scale=CACHE_CROP_SCALE)
        keys = F.normalize(views.mean(dim=0), dim=-1)
        labels = torch.as_tensor([item.label for item in context.train])
        self._set_cache(keys, labels, s.init_alpha, s.init_beta)
        self.after_cache(context)

    def after_cache(self, context) -> None:
        self.search_alpha_beta(context)

    def search_alpha_beta(self, context) -> None:
        s = self.settings
        if not s.search:
            return
        features = F.normalize(context.image_features(context.val)[0].to(self.clip.device), dim=-1)
        labels = torch.as_tensor([item.label for item in context.val], device=self.clip.device)
        if len(labels) == 0:
            raise ConfigError(f"{self.method_name} searches alpha and beta on the validation split, which is empty "
                              "here (or set search=False)", field="dataset")
        best, best_beta, best_alpha = 0.0, 0.0, 0.0
        with torch.no_grad():
            clip_logits = self.clip_logits(features, self.frozen_text_features(self.settings.templates))
            affinity = features @ self.keys().float().t()
            for beta in search_values(s.search_scale[0], s.search_step[0]):
                cache = self._cache_logits(affinity, beta)
                for alpha in search_values(s.search_scale[1], s.search_step[1]):
                    accuracy = float(((clip_logits + alpha * cache).argmax(dim=1) == labels).float().mean())
                    if accuracy > best:
                        best, best_beta, best_alpha = accuracy, beta, alpha
        self.alpha.fill_(best_alpha)
        self.beta.fill_(best_beta)
        context.note(f"{self.method_name}: alpha {best_alpha:.3f}, beta {best_beta:.3f} chosen on the validation split "
                     f"({100 * best:.2f}%)")

    def _cache_logits(self, affinity: torch.Tensor, beta) -> torch.Tensor:
        values = F.one_hot(self.cache_labels.long(), len(self.fitted_classnames)).float()[:, self.fitted_rows()]
        return torch.exp(-(beta - beta * affinity)) @ values

    # -- logits ---------------------------------------------------------------------------------
    def logits(self, images):
        self.check_fitted("cache_labels")  # the cache
        features = F.normalize(self.encode_images(images, Prompts(text=[], vision=[])).float(), dim=-1)
        return self.logits_of_features(features)

    def logits_of_features(self, features: torch.Tensor, alpha=None, beta=None) -> torch.Tensor:
        """``s f W^T + alpha * exp(-beta (1 - f K^T)) L`` of normalised features ``f``."""
        alpha = self.alpha if alpha is None else alpha
        beta = self.beta if beta is None else beta
        clip_logits = self.clip_logits(features, self.frozen_text_features(self.settings.templates))
        affinity = features @ self.keys().float().t()
        return clip_logits + alpha * self._cache_logits(affinity, beta)


@dataclass
class TipAdapterFConfig(TipAdapterConfig):
    """Tip-Adapter-F's options (the training settings are the run's: see its preset)."""


@register_method("tip_adapter_f")
class TipAdapterF(TipAdapter):
    """Tip-Adapter with fine-tuned keys (see the module docstring)."""

    Config = TipAdapterFConfig
    label = "Tip-Adapter-F"
    report_order = 70
    published_presets = "tip_adapter_f/vit_b16"
    optimized = True

    def after_cache(self, context) -> None:
        # The keys become trainable, from Tip-Adapter's fp16 cache (as the authors' fp16 adapter
        # starts), so the first logits are Tip-Adapter's; trained, they are kept in fp32 and
        # replace the cache in the learned state. alpha and beta stay at their initial values
        # until the search at the end.
        self.adapter_keys = nn.Parameter(self.cache_keys.float().clone())
        del self.cache_keys

    def prepare_learned_state(self, state_dict):
        if "adapter_keys" in state_dict and not hasattr(self, "adapter_keys"):
            device = self.clip.device
            self.register_buffer("cache_labels", torch.zeros_like(state_dict["cache_labels"]).to(device))
            self.register_buffer("alpha", torch.zeros((), device=device))
            self.register_buffer("beta", torch.zeros((), device=device))
            self.fitted_classnames = list(self.classnames)
            self.adapter_keys = nn.Parameter(torch.zeros_like(state_dict["adapter_keys"]).to(device))

    def keys(self) -> torch.Tensor:
        return self.adapter_keys

    def training_step(self, images, labels):
        features = self.frozen_image_features(images)
        logits = self.logits_of_features(features, self.settings.init_alpha, self.settings.init_beta)
        return {"logits": logits, "loss": F.cross_entropy(logits, labels), "terms": {}}

    def on_train_end(self, context=None):
        if context is not None:
            self.search_alpha_beta(context)
