"""CoPrompt (Roy & Etemad, ICLR 2024): consistency-guided prompt learning, as the authors' code
computes it (github.com/ShuvenduRoy/CoPrompt: ``trainers/coprompt.py`` ``MultiModalPromptLearner``,
``Adapter``, ``CustomCLIP.forward``, ``gpt_clip_classifier``; ``trainers/constants.py``;
``configs/trainers/coprompt.yaml``; ``train.py``):

* MaPLe's prompts (a shallow text context from "a photo of a", deep text prompts, each mapped to
  the vision tower by a Linear(d_t, d_v)); with ``n_ctx`` 4 all four words are learned;
* CLIP-Adapter-style adapters on both unnormalised features: ``f' = 0.1 A_img(f) + 0.9 f`` and
  ``t' = 0.2 A_txt(t) + 0.8 t``, ``A = Linear(D, D/4, no bias), ReLU, Linear(D/4, D, no bias),
  ReLU``; logits ``exp(logit_scale) * cos(f', t')``;
* training: cross-entropy plus ``W * (text + image consistency)``: ``1 - mean_c cos(t'_c, g_jc)``
  against frozen CLIP's normalised text feature of the ``j``-th language-model description of
  each class (``j`` drawn per step, their ``random.randint``) and ``1 - mean_b cos(f'_b, h_b)``
  against frozen CLIP's feature of a *second* augmented view of the image (their ``image2``:
  Dassl's ``K_TRANSFORMS: 2`` with ``randaugment``); ``"mse"`` (their ``DISTILL``) uses the mean
  squared errors instead;
* their per-dataset settings (``trainers/constants.py``: depth, ``n_ctx``, ``W``) when the
  dataset is a benchmark and the user set none; elsewhere ``coprompt.yaml``'s (depth 9, 2
  tokens, W 1.0).

The class descriptions are data the user brings: a JSON file mapping each class name to its
sentences (the authors' ``gpt_file/<dataset>_prompt.json`` format), named by ``descriptions`` or
found beside the dataset (``descriptions.json``, or the authors' file name). They are read when
training starts; evaluation does not need them. The built-in world writes its own.
"""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mudpt.core.errors import ConfigError
from mudpt.methods import register_method
from mudpt.methods.base import Prompts, classname_text
from mudpt.methods.maple import MaPLe, MaPLeConfig
from mudpt.methods.config import option

#: trainers/constants.py get_dataset_specified_config: (PROMPT_DEPTH, N_CTX, W) per benchmark
#: (Food101 also trains 5 epochs instead of 8: the preset coprompt/vit_b16_food101).
DATASET_SETTINGS = {
    "imagenet": (12, 4, 8.0), "caltech101": (12, 4, 4.0), "oxford_pets": (12, 2, 0.1),
    "stanford_cars": (12, 4, 4.0), "oxford_flowers": (9, 4, 8.0), "food101": (9, 4, 0.5),
    "fgvc_aircraft": (9, 4, 2.0), "sun397": (12, 4, 8.0), "dtd": (12, 2, 8.0), "eurosat": (12, 2, 0.1),
    "ucf101": (12, 4, 2.0),
}
#: configs/trainers/coprompt.yaml's values where no dataset setting applies
DEFAULT_DEPTH, DEFAULT_N_CTX, DEFAULT_WEIGHT = 9, 2, 1.0
#: their dataset_name_mapping: the stem of the authors' description files, gpt_file/<stem>_prompt.json
AUTHORS_FILE_STEMS = {"caltech101": "caltech", "fgvc_aircraft": "fgvc"}
DESCRIPTIONS_FILE = "descriptions.json"


def description_files(dataset: str, folder: str) -> list[Path]:
    """Where the descriptions of ``dataset`` stored in ``folder`` are looked for, in order: a
    ``descriptions.json`` in the folder, the authors' file in it, and their ``gpt_file`` folder
    in it or beside it (the data root, where the built-in world writes its own)."""
    dataset = Path(dataset).name  # a bring-your-own dataset is named by its path
    stem = AUTHORS_FILE_STEMS.get(dataset, dataset)
    folder = Path(folder)
    name = f"{stem}_prompt.json"
    return [folder / DESCRIPTIONS_FILE, folder / name, folder / "gpt_file" / name, folder.parent / "gpt_file" / name]


def read_descriptions(path: str, classnames: list) -> list:
    """Each class's sentences from a JSON file ``{class name: [sentence, ...]}`` (a class is
    found by its name, its name with spaces for underscores, or either in lower case); a
    :class:`ConfigError` names the file and the classes it lacks."""
    from mudpt.core.errors import MissingFileError
    from mudpt.core.files import not_there, read_text

    if not Path(path).is_file():
        raise MissingFileError(f"the class descriptions file: {not_there(path)}", field="method_options.descriptions")
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error}); the class descriptions are a JSON object mapping "
                          "each class name to a list of sentences", field="method_options.descriptions") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the class descriptions must be a JSON object mapping each class name to a list of "
                          f"sentences, got a {type(data).__name__}", field="method_options.descriptions")
    lowered = {str(k).lower(): v for k, v in data.items()}
    found, missing = [], []
    for name in classnames:
        keys = (name, classname_text(name))
        value = next((data[k] for k in keys if k in data), None)
        if value is None:
            value = next((lowered[k.lower()] for k in keys if k.lower() in lowered), None)
        if not (isinstance(value, list) and value and all(isinstance(s, str) and s.strip() for s in value)):
            missing.append(name)
        found.append(value)
    if missing:
        raise ConfigError(f"{path}: {len(missing)} of the {len(classnames)} classes have no descriptions (a non-empty "
                          f"list of sentences): {', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}",
                          field="method_options.descriptions")
    return found


@dataclass
class CoPromptConfig(MaPLeConfig):
    """CoPrompt's options (their ``TRAINER.CoPrompt`` keys, ``TRAINER.W`` and ``DISTILL``)."""

    n_ctx: Optional[int] = option(None, "prompt tokens per depth (default: the dataset's setting, else 2)", min=1)
    depth: Optional[int] = option(None, "prompt depth (default: the dataset's setting, else 9; capped at the "
                                        "towers' blocks)", min=1)
    weight: Optional[float] = option(None, "W, the weight of the consistency terms (default: the dataset's "
                                           "setting, else 1.0)", min=0.0)
    distill: Literal["cosine", "mse"] = option("cosine", "the consistency terms: 1 - cosine, or mean squared error")
    image_ratio: float = option(0.1, "the image adapter's share of the image feature",
                                check=lambda r: 0.0 <= r <= 1.0, expected="a number in [0, 1]")
    text_ratio: float = option(0.2, "the text adapter's share of the text feature",
                               check=lambda r: 0.0 <= r <= 1.0, expected="a number in [0, 1]")
    reduction: int = option(4, "the adapters' bottleneck: feature width / reduction", min=1)
    descriptions: Optional[str] = option(None, "JSON file of class descriptions {class: [sentence, ...]} (default: "
                                               "descriptions.json or the authors' <dataset>_prompt.json beside "
                                               "the dataset)")
    dataset: Optional[str] = option(None, "take the authors' settings (depth, n_ctx, W) of this benchmark dataset")

    def for_dataset(self, dataset: str, folder: Optional[str] = None) -> "CoPromptConfig":
        changes = {}
        if self.dataset is None and dataset in DATASET_SETTINGS:
            changes["dataset"] = dataset
        if self.descriptions is None and folder is not None:  # training on a dataset: say so before it starts
            searched = description_files(dataset, folder)
            found = next((p for p in searched if p.is_file()), None)
            if found is None:
                raise ConfigError(
                    f"coprompt trains against language-model descriptions of the classes and found none beside the "
                    f"dataset (looked for {', '.join(str(p) for p in searched)}): give method_options.descriptions "
                    "(a JSON file {class: [sentence, ...]}, the authors' gpt_file format) or put descriptions.json "
                    "in the dataset's folder", field="method_options.descriptions")
            changes["descriptions"] = str(found.resolve())
        return self.resolved(**changes) if changes else self

    def resolve(self, clip):
        from mudpt.methods.base import resolve_depth

        depth, n_ctx, weight = DATASET_SETTINGS.get(self.dataset or "", (DEFAULT_DEPTH, DEFAULT_N_CTX, DEFAULT_WEIGHT))
        layers = min(clip.text_layers, clip.vision_layers)
        # the table's depth is a default (capped at the towers' blocks); the user's is checked
        depth = resolve_depth(self.depth, depth, layers, "depth", "coprompt", clip.name, "text and vision")
        return self.resolved(depth=depth, n_ctx=self.n_ctx or n_ctx,
                             weight=self.weight if self.weight is not None else weight)


def _adapter(width: int, reduction: int) -> nn.Sequential:
    """Their ``Adapter(c_in, reduction)`` (``.fc``)."""
    hidden = width // reduction
    return nn.Sequential(OrderedDict([
        ("0", nn.Linear(width, hidden, bias=False)), ("1", nn.ReLU(inplace=True)),
        ("2", nn.Linear(hidden, width, bias=False)), ("3", nn.ReLU(inplace=True))]))


@register_method("coprompt")
class CoPrompt(MaPLe):
    """MaPLe's prompts with feature adapters, trained for consistency with frozen CLIP."""

    Config = CoPromptConfig
    label = "CoPrompt"
    report_order = 125
    published_presets = "coprompt/vit_b16"
    train_augment = "randaugment"
    train_views = 2

    def build(self):
        super().build()
        dim, reduction = self.clip.embed_dim, self.settings.reduction
        self.adapter_image = _adapter(dim, reduction)
        self.adapter_text = _adapter(dim, reduction)
        self._descriptions: Optional[torch.Tensor] = None

    def text_learned_tensors(self):
        return super().text_learned_tensors() + list(self.adapter_text.parameters())

    def on_classnames_changed(self) -> None:
        super().on_classnames_changed()
        self._descriptions = None

    def encode_class_text(self, prompts: Prompts) -> torch.Tensor:
        text = super().encode_class_text(prompts)
        r = self.settings.text_ratio
        return r * self.adapter_text(text) + (1 - r) * text

    def encode_images(self, images: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        image = super().encode_images(images, prompts)
        r = self.settings.image_ratio
        return r * self.adapter_image(image) + (1 - r) * image

    def description_features(self) -> torch.Tensor:
        """Frozen CLIP's normalised text features of the classes' descriptions (sentences, C, D):
        their ``gpt_clip_classifier``; a class with fewer sentences repeats them cyclically."""
        if self._descriptions is None:
            path = self.settings.descriptions
            if path is None:
                raise ConfigError(
                    "coprompt trains against language-model descriptions of the classes and found none: give "
                    "method_options.descriptions (a JSON file {class: [sentence, ...]}, the authors' gpt_file format), "
                    f"or put {DESCRIPTIONS_FILE} beside the dataset", field="method_options.descriptions")
            sentences = read_descriptions(path, self.classnames)
            most = max(len(s) for s in sentences)
            device = self.clip.device
            with torch.no_grad(), torch.autocast(device.type, enabled=False):
                features = []
                for j in range(most):
                    tokens = self.tokenize([s[j % len(s)] for s in sentences]).to(device)
                    features.append(F.normalize(self.clip.model.encode_text(tokens).float(), dim=-1))
            self._descriptions = torch.stack(features)
        return self._descriptions

    def training_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        # two views (batch, 2, 3, S, S) as the training loop gives them; a plain batch (one view)
        # is its own second view, as on a backbone that refuses RandAugment
        first, second = (images[:, 0], images[:, 1]) if images.dim() == 5 else (images, images)
        image_features, text_features = self.features(first)
        logits = self.clip_logits(image_features, text_features)
        descriptions = self.description_features()
        frozen_text = descriptions[random.randint(0, descriptions.shape[0] - 1)]
        frozen_image = self.frozen_image_features(second)
        image_norm = F.normalize(image_features.float(), dim=-1)
        ce = F.cross_entropy(logits.float(), labels)
        if self.settings.distill == "cosine":
            text = 1.0 - F.cosine_similarity(text_features, frozen_text, dim=1, eps=1e-7).mean()
            image = 1.0 - F.cosine_similarity(image_norm, frozen_image, dim=1, eps=1e-7).mean()
        else:
            text, image = F.mse_loss(text_features, frozen_text), F.mse_loss(image_norm, frozen_image)
        loss = ce + self.settings.weight * (text + image)
        return {"logits": logits, "loss": loss,
                "terms": {"ce": ce.detach(), "text": text.detach(), "image": image.detach()}}
