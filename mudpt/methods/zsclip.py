"""Zero-shot CLIP: hand-crafted templates, optionally an ensemble of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F

from mudpt.core.errors import ConfigError
from mudpt.methods import register_method
from mudpt.methods.base import PromptMethod, Prompts, classname_text
from mudpt.methods.config import MethodConfig, option

# CoOp's hand-crafted template of each benchmark dataset (its zero-shot CLIP baseline).
DATASET_TEMPLATES = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}
DEFAULT_TEMPLATE = "a photo of a {}."


def _valid_templates(value) -> bool:
    templates = [value] if isinstance(value, str) else value
    return bool(templates) and all(t.count("{}") == 1 for t in templates)


def dataset_template(dataset: Optional[str]) -> str:
    """CoOp's template for a benchmark dataset key, the default template otherwise."""
    return DATASET_TEMPLATES.get(dataset or "", DEFAULT_TEMPLATE)


@dataclass
class ZeroShotCLIPConfig(MethodConfig):
    """Zero-shot CLIP's options."""

    templates: Optional[Union[str, list[str]]] = option(
        None, "template string(s) with one '{}' for the class name; several = ensemble (default 'a photo of a {}.')",
        check=_valid_templates, expected="a template string or a non-empty list of strings, each with exactly one '{}'")
    dataset: Optional[str] = option(None, "use CoOp's hand-crafted template of this benchmark dataset",
                                    check=lambda d: d in DATASET_TEMPLATES,
                                    expected="one of " + ", ".join(sorted(DATASET_TEMPLATES)))

    def check(self):
        if self.templates is not None and self.dataset is not None:
            raise ConfigError("zsclip: give either templates=... or dataset=..., not both",
                              field="method_options.templates")

    dataset_templates = DATASET_TEMPLATES
    template_option = "templates"

    def resolve(self, clip):
        if self.templates is None:
            templates = [dataset_template(self.dataset)]
        else:
            templates = [self.templates] if isinstance(self.templates, str) else list(self.templates)
        return self.resolved(templates=templates)


@register_method("zsclip")
class ZeroShotCLIP(PromptMethod):
    """Zero-shot CLIP. Text features are the (renormalised) mean of the normalised features of
    every template; no learned tensors."""

    Config = ZeroShotCLIPConfig
    label = "Zero-shot CLIP"
    report_order = 10
    published_presets = "zsclip/vit_b16"
    learns_from_data = False
    optimized = False
    frozen_image_tower = True

    def use_dataset(self, dataset: str) -> None:
        """Evaluating on another benchmark: a template chosen by dataset follows the dataset
        (as the reference zero-shot CLIP is evaluated); explicit templates stay."""
        if self.config.templates is None:
            self.settings = self.settings.resolved(templates=[dataset_template(dataset)])
            self.set_classnames(self.classnames)

    def prompt_texts(self, classnames):
        return [t.format(classname_text(c)) for t in self.settings.templates for c in classnames]

    def text_learned_tensors(self):
        return []

    def encode_class_text(self, prompts: Prompts) -> torch.Tensor:
        self.text_encoder_calls += 1
        features = self.text_tower(self.class_tokens)
        n_templates = len(self.settings.templates)
        if n_templates == 1:
            return features
        features = F.normalize(features.float(), dim=-1).reshape(n_templates, len(self.classnames), -1)
        return features.mean(dim=0)
