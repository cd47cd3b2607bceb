"""A user's plug-in as a test would write it: one method module and one preset file, registered
through the public registries only (nothing in mudpt names it).

``toy_scale`` learns one number: a temperature multiplying zero-shot CLIP's logits. It is
open-set (the class text features are frozen CLIP's), so it runs under every protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mudpt.methods import MethodConfig, PromptMethod, option, register_method
from mudpt.methods.base import Prompts

CONFIGS = Path(__file__).resolve().parent / "configs"


@dataclass
class ToyScaleConfig(MethodConfig):
    init_scale: float = option(1.0, "initial multiplier of the zero-shot logits", min=0.0)
    template: str = option("a photo of a {}.", "the class prompt")


class ToyScale(PromptMethod):
    Config = ToyScaleConfig
    label = "Toy scale"
    report_order = 5  # before zero-shot CLIP (10)
    published_presets = {}

    def build(self):
        self.scale = nn.Parameter(torch.tensor(float(self.settings.init_scale)))

    def text_learned_tensors(self):
        return []  # the class text features do not depend on the learned scale

    def encode_class_text(self, prompts: Prompts) -> torch.Tensor:
        return self.frozen_text_features([self.settings.template])

    def logits(self, images):
        return self.scale * super().logits(images)


def register() -> None:
    """What the plug-in's entry point would call."""
    from mudpt.engine.config import register_preset_dir
    from mudpt.methods import available_methods

    if "toy_scale" not in available_methods():
        register_method("toy_scale")(ToyScale)
    register_preset_dir(CONFIGS)
