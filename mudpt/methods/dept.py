"""DePT (Zhang et al., CVPR 2024): decoupled prompt tuning as a plug-in over a registered prompt
method, as the authors' code computes it (github.com/Koorye/DePT: ``trainers/elp_coop.py``,
``elp_cocoop.py``, ``elp_kgcoop.py``, ``elp_maple.py`` (``FiLM``, ``CustomCLIP``), ``trainers/
optim.py`` (the staged learning rate) and ``train.py`` ``extend_cfg``):

* the wrapped method (``base``) computes its features, logits and loss as it does alone;
* a channel-wise transform (their ``FiLM``: ``scale * x + bias`` with ``scale`` ones and ``bias``
  zeros, one for the image and one for the text features) of the *unnormalised* features feeds
  a linear head (``nn.Linear(D, classes)``, their ``linear_probe_proj``) trained on the image
  features and on the text features of each image's class, both with the image's label;
* loss: the wrapped method's loss with its cross-entropy ``ce`` weighted ``1 - w`` plus ``w``
  times the head's cross-entropy (``w`` 0.7): ``(1 - w) ce + w ce_head + the method's other
  terms`` (KgCoOp's regulariser stays, as in their ``elp_kgcoop.py``);
* inference: on the classes the head was trained on (base classes; ImageNet and its variants
  after training on ImageNet, the head's rows mapped by class name as their ImageNet-A/-R
  clipping does) the fused logits ``(1 - w) * the method's + w * the head's``; on any other class
  list (new classes, other datasets) the method's own logits;
* their staged learning rate: the head and the transforms train at ``head_lr_multiplier`` (6.5)
  times the prompts' lr.

``mudpt.create("dept", clip, classnames, base="maple", base_options={...})``, or a registered
composition ``dept_<base>`` (``dept_coop``, ``dept_maple``, ...) for sweeps and reports.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mudpt.core.errors import ConfigError
from mudpt.methods import create, get_method_class, register_method
from mudpt.methods.base import PromptMethod, Prompts
from mudpt.methods.config import MethodConfig, option

#: The methods DePT wraps: the authors' four (CoOp, CoCoOp, KgCoOp, MaPLe) and the prompt methods
#: whose loss is cross-entropy plus terms (not ProGrad, whose gradient treatment assumes its own
#: loss; not the fitted, closed-set baselines).
DEPT_BASES = ("coop", "cocoop", "kgcoop", "maple", "promptsrc", "mudpt", "ivlp", "vpt", "tcp", "mma", "clip_lora")

_LABELS = {"coop": "CoOp", "cocoop": "CoCoOp", "kgcoop": "KgCoOp", "maple": "MaPLe", "promptsrc": "PromptSRC",
           "mudpt": "MuDPT"}


class ChannelTransform(nn.Module):
    """Their ``FiLM`` (bias on, no sigmoid): ``scale * x + bias`` per channel."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale.to(x.dtype) * x + self.bias.to(x.dtype)


@dataclass
class DePTConfig(MethodConfig):
    """DePT's options (their ``TRAINER.LINEAR_PROBE`` / ``FILM`` / ``OPTIM.LR_EXP`` keys) and the
    wrapped method with its own options."""

    base: Literal[DEPT_BASES] = option("coop", "the prompt method DePT wraps")
    base_options: dict = option({}, "the wrapped method's options (as that method takes them)")
    weight: float = option(0.7, "weight of the head's loss and logits; the method's get 1 - weight",
                           check=lambda w: 0.0 <= w <= 1.0, expected="a number in [0, 1]")
    film: bool = option(True, "the channel-wise transforms of the features before the head (their cwT)")
    fusion: bool = option(True, "on the head's classes, fuse the method's and the head's logits (False: the "
                                "head's alone)")
    head_lr_multiplier: float = option(6.5, "the head's and the transforms' learning rate over the prompts' "
                                            "(their staged lr, LR_EXP)", min=0.0)

    def base_config(self) -> MethodConfig:
        """The wrapped method's typed config (errors name ``base_options``)."""
        try:
            return get_method_class(self.base).Config.from_dict(self.base_options)
        except ConfigError as error:
            field = error.field or "method_options"
            inner = field.split(".", 1)[1] if field.startswith("method_options.") else ""
            raise ConfigError(f"base_options of method {self.method_name!r} (for {self.base!r}): {error}",
                              field="method_options.base_options" + (f".{inner}" if inner else "")) from None

    def check(self) -> None:
        self.base_config()

    def for_dataset(self, dataset: str, folder=None) -> "DePTConfig":
        before = self.base_config()
        after = before.for_dataset(dataset, folder)
        changed = {k: v for k, v in after.to_dict().items() if getattr(before, k) != v}
        return self.resolved(base_options={**self.base_options, **changed}) if changed else self


@register_method("dept")
class DePT(PromptMethod):
    """A wrapped prompt method plus DePT's channel-adjusted head (see the module docstring)."""

    Config = DePTConfig
    label = "DePT"
    report_order = 95
    published_presets = "dept/vit_b16_ep10_bs4_lr35"

    @classmethod
    def requires_vit(cls, config: MethodConfig) -> bool:
        return get_method_class(config.base).requires_vit(config.base_config())

    def build(self):
        s = self.settings
        base = create(s.base, self.clip, self.classnames, config=self.config.base_config())
        self.base = base
        self.train_crop_scale = base.train_crop_scale
        dim = self.clip.embed_dim
        if s.film:
            self.film_lp_img = ChannelTransform(dim)
            self.film_lp_text = ChannelTransform(dim)
        # their linear_probe_proj, over the classes it is trained on
        self.linear_probe_proj = nn.Linear(dim, len(self.classnames))
        self.fitted_classnames = list(self.classnames)

    # -- the wrapped method's switches and hooks ---------------------------------------------------
    _FORWARDED = ("text_chunk", "truncate_text", "cls_only_last_block")

    def __setattr__(self, name, value):
        if name in self._FORWARDED and "base" in self._modules:
            setattr(self._modules["base"], name, value)
        super().__setattr__(name, value)

    def set_classnames(self, classnames) -> None:
        from mudpt.core.classnames import validate_classnames

        classnames = validate_classnames(classnames)
        self.base.set_classnames(classnames)
        self.class_text.set(classnames)

    def use_dataset(self, dataset: str) -> None:
        self.base.use_dataset(dataset)

    def compute_prompts(self) -> Prompts:
        return self.base.compute_prompts()

    def text_context(self) -> list:
        return self.base.text_context()

    def fit(self, context) -> None:
        self.base.fit(context)

    def on_epoch_end(self, epoch, epochs) -> None:
        self.base.on_epoch_end(epoch, epochs)

    def on_train_end(self, context=None) -> None:
        self.base.on_train_end(context)

    def training_state(self) -> dict:
        return self.base.training_state()

    def load_training_state(self, state) -> None:
        self.base.load_training_state(state)

    def lr_multiplier(self, name: str) -> float:
        """Their staged lr: ``OPTIM.NEW_LAYERS = ['linear_probe', 'film']`` at ``LR * LR_EXP``."""
        return 1.0 if name.startswith("base.") else self.settings.head_lr_multiplier

    # -- the head ------------------------------------------------------------------------------
    def head_applies(self) -> bool:
        """Whether the current classes are all among the head's (their base / ImageNet case)."""
        fitted = set(self.fitted_classnames)
        return all(name in fitted for name in self.classnames)

    def _head_rows(self) -> torch.Tensor:
        index = {name: i for i, name in enumerate(self.fitted_classnames)}
        return torch.as_tensor([index[name] for name in self.classnames], dtype=torch.long,
                               device=self.linear_probe_proj.weight.device)

    def _transform(self, features: torch.Tensor, which: str) -> torch.Tensor:
        if not self.settings.film:
            return features
        return (self.film_lp_img if which == "image" else self.film_lp_text)(features)

    def _run_base(self, call, *args):
        """Call the wrapped method, recording its unnormalised image (and text) features."""
        tap: dict = {}
        self.base.feature_tap = tap
        try:
            out = call(*args)
        finally:
            self.base.feature_tap = None
        return out, tap

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        logits, tap = self._run_base(self.base.logits, images)
        if not self.head_applies():
            return logits
        head = self.linear_probe_proj(self._transform(tap["image"].float(), "image"))[:, self._head_rows()]
        if not self.settings.fusion:
            return head
        w = self.settings.weight
        return (1 - w) * logits.float() + w * head

    def training_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        out, tap = self._run_base(self.base.training_step, images, labels)
        text = tap.get("text")
        if text is None:  # a method whose class text is frozen (VPT): its raw features, once per step
            with torch.no_grad():
                text = self.base.encode_class_text(self.base.compute_prompts())
        text, image = self._transform(text.float(), "text"), self._transform(tap["image"].float(), "image")
        rows = self._head_rows()[labels]
        # each image's class text feature (per image for CoCoOp's (B, C, D)) and the image feature
        class_text = text[rows] if text.dim() == 2 else text[torch.arange(len(labels), device=text.device), labels]
        head_logits = self.linear_probe_proj(torch.cat([class_text, image]))
        head_ce = F.cross_entropy(head_logits, torch.cat([rows, rows]))
        ce = F.cross_entropy(out["logits"].float(), labels)
        w = self.settings.weight
        loss = out["loss"] + w * (head_ce - ce)  # (1 - w) ce + w ce_head + the method's other terms
        terms = {**out.get("terms", {}), "ce": ce.detach(), "head_ce": head_ce.detach()}
        # what the method predicts on its (base) classes, as logits() does: the fused logits
        image_logits = head_logits[len(labels):]
        logits = (1 - w) * out["logits"].float() + w * image_logits if self.settings.fusion else image_logits
        return {"logits": logits, "loss": loss, "terms": terms}


def _register_composition(base: str) -> type:
    """``dept_<base>``: DePT over one method, a name of its own for sweeps and reports."""
    hint = Literal[(base,)]
    config = dataclasses.make_dataclass(
        f"DePT{base.title()}Config",
        [("base", hint, option(base, "the prompt method DePT wraps (fixed by the method's name)"))],
        bases=(DePTConfig,))
    config.__module__ = __name__
    cls = type(f"DePT{base.title()}", (DePT,), {
        "Config": config, "label": f"{_LABELS.get(base, base)} + DePT",
        "report_order": get_method_class(base).report_order + 0.5, "__module__": __name__,
        "published_presets": _PRESETS.get(base, {}), "__doc__": f"DePT over {base} (see the module docstring)."})
    return register_method(f"dept_{base}")(cls)


#: the authors' configs (configs/trainers/ExtrasLinearProbe*) for their four methods; the other
#: compositions take the wrapped method's published recipe with DePT's options (no authors' config)
_PRESETS = {"coop": "dept_coop/vit_b16_ep10_bs4_lr35", "cocoop": "dept_cocoop/vit_b16_c4_ep10_batch1_ctxv1",
            "kgcoop": "dept_kgcoop/vit_b16_ep10_ctxv1_bs4_lr35", "maple": "dept_maple/vit_b16_c2_ep10_batch4_2ctx",
            "promptsrc": "dept_promptsrc/vit_b16_c2_ep20_batch4_4+4ctx", "mudpt": "dept_mudpt/vit_b16_ep5"}
COMPOSITIONS = {base: _register_composition(base) for base in _PRESETS}
