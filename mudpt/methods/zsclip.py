"""Zero-shot CLIP: hand-crafted templates, optionally an ensemble of them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mudpt import towers
from mudpt.methods import register_method
from mudpt.methods.base import Option, PromptMethod, Prompts, classname_text

# CoOp's per-dataset templates (keys as in ../shared/spec/PROTOCOLS.md).
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
    return bool(templates) and all(isinstance(t, str) and t.count("{}") == 1 for t in templates)


@register_method("zsclip")
class ZeroShotCLIP(PromptMethod):
    """Zero-shot CLIP. Text features are the (renormalised) mean of the normalised features of
    every template; no learned tensors."""

    OPTIONS = {
        "templates": Option(None, (list, tuple, str, None),
                            "template string(s) with one '{}' for the class name; several = ensemble",
                            check=_valid_templates,
                            check_message="a template string or non-empty list of strings, each with exactly one '{}'"),
        "dataset": Option(None, (str, None), "use CoOp's hand-crafted template for this dataset key",
                          choices=tuple(sorted(DATASET_TEMPLATES))),
    }

    def finalize_options(self, options):
        templates = options["templates"]
        if templates is not None and options["dataset"] is not None:
            raise ValueError("zsclip: give either templates=... or dataset=..., not both")
        if templates is None:
            templates = [DATASET_TEMPLATES[options["dataset"]]] if options["dataset"] else [DEFAULT_TEMPLATE]
        elif isinstance(templates, str):
            templates = [templates]
        options["templates"] = list(templates)
        return options

    def prompt_texts(self, classnames):
        return [t.format(classname_text(c)) for t in self.options["templates"] for c in classnames]

    def _text_learned_tensors(self):
        return []

    def encode_class_text(self, prompts: Prompts) -> torch.Tensor:
        self.text_encoder_calls += 1
        features = towers.encode_text(self.clip.model, self.class_tokens, truncate=self.truncate_text)
        n_templates = len(self.options["templates"])
        if n_templates == 1:
            return features
        features = F.normalize(features.float(), dim=-1).reshape(n_templates, len(self.classnames), -1)
        return features.mean(dim=0)
