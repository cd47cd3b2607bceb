"""Shared machinery of every prompt-tuning method, and the extension points for new ones.

A method is an ``nn.Module`` built on a frozen :class:`~mudpt.core.backbones.ClipBackbone`. The
backbone is *not* a registered sub-module: it never appears in ``state_dict()`` or
``parameters()`` (so it is neither saved with the learned state nor handed to an optimizer, nor
broadcast by DDP), but ``.to(device)`` / ``.cuda()`` / ``.half()`` still move it (see
:meth:`PromptMethod._apply`) and ``.train()`` never takes it out of eval mode.

A new method subclasses :class:`PromptMethod` and defines

* ``Config`` — its typed config, a :class:`~mudpt.methods.config.MethodConfig` dataclass
  (defaults, types and checks declared once; ``resolve(clip)`` derives backbone-dependent
  defaults). The method reads the resolved values from ``self.settings``; ``self.config`` is
  what the user gave (what is saved);
* ``build()`` — create the learned tensors and set ``self.prompt_prefix`` (the words of the
  class prompt ``"{prefix} {class}."`` whose first tokens the learned context replaces);
* ``compute_prompts()`` — the per-depth prompts of both towers for one forward pass;

and optionally ``text_learned_tensors()`` (the learned tensors the class text features depend
on; ``[]`` lets them be cached in training too), ``prompt_texts(classnames)``,
``encode_class_text`` / ``encode_images`` / ``forward``, ``check_classnames`` and
``on_classnames_changed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mudpt.core import towers
from mudpt.core.backbones import ClipBackbone
from mudpt.core.errors import ConfigError
from mudpt.methods.config import MethodConfig

__all__ = ["MethodConfig", "PromptMethod", "Prompts", "classname_text", "phrase_token_ids", "resolve_depth"]


def classname_text(name: str) -> str:
    """Class names as they enter prompts: underscores become spaces."""
    return name.replace("_", " ")


def phrase_token_ids(clip: ClipBackbone, phrase: str) -> torch.Tensor:
    """Token ids of ``phrase`` without SOT/EOT."""
    tokens = torch.as_tensor(clip.tokenizer([phrase])).long()
    end = int(towers.pool_positions(clip.model, tokens)[0])
    return tokens[0, 1:end]


def resolve_depth(value: Optional[int], paper_default: int, layers: int, key: str, method: str,
                  backbone: str, tower: str) -> int:
    """A prompt depth: the paper default capped at the tower's blocks when ``None``; an explicit
    depth larger than the tower is a :class:`ConfigError`."""
    if value is None:
        return min(paper_default, layers)
    if value > layers:
        raise ConfigError(
            f"option {key}={value} of method {method!r} exceeds the {layers} blocks of the {tower} tower "
            f"of backbone {backbone!r}; use {key} <= {layers}", field=f"method_options.{key}")
    return value


@dataclass
class Prompts:
    """Per-depth prompts of both towers for one forward pass (``None`` = nothing there)."""

    text: list
    vision: list


# --------------------------------------------------------------------------------------------
# The base class
# --------------------------------------------------------------------------------------------
class PromptMethod(nn.Module):
    """Base class of all methods: class-name prompts, cached text features, CLIP logits.

    Class attributes set by subclasses / the registry:
        method_name: registry name.
        Config: the method's :class:`MethodConfig` dataclass.
        uses_vision_prompts: needs a ViT image tower.
        text_depends_on_image: text features are per image (CoCoOp); disables caching.
        learns: has an optimisation (False: nothing is trained, e.g. zero-shot CLIP; the
            training settings are then no part of a run's identity).
    """

    method_name: str = "base"
    Config: type = MethodConfig
    uses_vision_prompts: bool = False
    text_depends_on_image: bool = False
    learns: bool = True

    def __init__(self, clip: ClipBackbone, classnames: Sequence[str], config: Optional[MethodConfig] = None):
        super().__init__()
        if not isinstance(clip, ClipBackbone):
            raise TypeError(f"clip must be a mudpt ClipBackbone (from mudpt.load_clip), got {type(clip).__name__}")
        config = self.Config() if config is None else config
        if type(config) is not self.Config:
            raise TypeError(f"method {self.method_name!r} takes a {self.Config.__name__}, got {type(config).__name__}")
        if self.requires_vit(config) and not clip.is_vit:
            raise ConfigError(
                f"method {self.method_name!r} puts prompts into the image tower, which needs a ViT image "
                f"tower; backbone {clip.name!r} has a {type(clip.model.visual).__name__}. Use a ViT "
                "backbone, or a text-only method with ResNet backbones.", field="method")
        # Stored outside nn.Module's registries on purpose (see the module docstring).
        object.__setattr__(self, "clip", clip)
        self.config = config
        self.settings = config.resolve(clip)
        self.prompt_prefix = ""
        self._text_cache: Optional[tuple] = None
        self.text_encoder_calls = 0  # how often the text tower ran (for tests and profiling)
        # Exact speed-ups of the towers; switch them off to measure the naive computation.
        self.truncate_text = True  # text: run max_eot+1 positions, shared prefix computed once
        self.cls_only_last_block = True  # vision: last block for the pooled CLS token only
        self.classnames: list = self._validate_classnames(classnames)
        self.build()
        for parameter in self.parameters():
            if parameter.device != clip.device:
                parameter.data = parameter.data.to(clip.device)
        self.set_classnames(classnames)

    @classmethod
    def requires_vit(cls, config: MethodConfig) -> bool:
        """Whether this config puts prompts into the image tower (default: ``uses_vision_prompts``)."""
        return cls.uses_vision_prompts

    @property
    def options(self) -> dict:
        """The resolved option values (``self.settings`` as a dict; for inspection, not saved)."""
        return self.settings.to_dict()

    # -- building blocks for subclasses ---------------------------------------------------------
    def build(self) -> None:
        """Create the learned tensors. Default: none."""

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.clip.tokenizer(list(texts))
        if not isinstance(tokens, torch.Tensor):
            tokens = torch.as_tensor(tokens)
        return tokens.long()

    def phrase_embeddings(self, phrase: str) -> torch.Tensor:
        """Frozen word embeddings (k, d_t) of ``phrase``'s tokens, as float32."""
        ids = phrase_token_ids(self.clip, phrase).to(self.clip.device)
        with torch.no_grad():
            return self.clip.model.token_embedding(ids).detach().float().cpu()

    def context_init(self, n_ctx: int, ctx_init: Optional[str]) -> tuple[torch.Tensor, str]:
        """Initial context (n_ctx, d_t) and the prompt prefix whose first n_ctx tokens it fills.

        With a phrase, the first ``n_ctx`` tokens' embeddings initialise the context and the
        prefix is the whole phrase (extra tokens stay fixed); if the phrase is shorter than
        ``n_ctx``, ``X`` placeholders complete it and the rest is drawn from N(0, 0.02).
        Without a phrase: N(0, 0.02) and the prefix ``"X X ... X"``.
        """
        ctx = torch.empty(n_ctx, self.clip.text_width)
        nn.init.normal_(ctx, std=0.02)
        if not ctx_init:
            return ctx, " ".join(["X"] * n_ctx)
        phrase = classname_text(ctx_init).strip()
        embeddings = self.phrase_embeddings(phrase)
        k = min(n_ctx, embeddings.shape[0])
        ctx[:k] = embeddings[:k]
        prefix = phrase if embeddings.shape[0] >= n_ctx else " ".join([phrase] + ["X"] * (n_ctx - embeddings.shape[0]))
        return ctx, prefix

    def deep_text_prompts(self, n_ctx: int, ctx_init: Optional[str], depth: int) -> tuple[nn.ParameterList, str]:
        """Text prompts for depths ``0 .. depth-1`` and the prompt prefix: the shallow one from
        :meth:`context_init`, the deeper ones from N(0, 0.02)."""
        shallow, prefix = self.context_init(n_ctx, ctx_init)
        prompts = nn.ParameterList(
            [nn.Parameter(shallow)] + [self.normal_parameter(n_ctx, self.clip.text_width) for _ in range(depth - 1)])
        return prompts, prefix

    @staticmethod
    def normal_parameter(*shape: int, std: float = 0.02) -> nn.Parameter:
        tensor = torch.empty(*shape)
        nn.init.normal_(tensor, std=std)
        return nn.Parameter(tensor)

    # -- class names --------------------------------------------------------------------------
    def prompt_texts(self, classnames: Sequence[str]) -> list:
        """The per-class prompt strings to tokenize (default ``"{prefix} {c}."``)."""
        prefix = self.prompt_prefix
        return [f"{prefix} {classname_text(c)}.".strip() for c in classnames]

    @staticmethod
    def _validate_classnames(classnames: Sequence[str]) -> list:
        if isinstance(classnames, str) or not hasattr(classnames, "__iter__"):
            raise ConfigError(f"classnames must be a list of strings, got {type(classnames).__name__}")
        classnames = list(classnames)
        bad = [c for c in classnames if not isinstance(c, str) or not c.strip()]
        if not classnames or bad:
            raise ConfigError(f"classnames must be a non-empty list of non-empty strings (bad entries: {bad[:5]})")
        seen, duplicates = set(), []
        for name in classnames:
            key = classname_text(name).strip().lower()
            if key in seen and name not in duplicates:
                duplicates.append(name)
            seen.add(key)
        if duplicates:
            raise ConfigError(
                f"class names must be distinct: {duplicates[:5]} occur more than once (after turning "
                "underscores into spaces, ignoring case); two classes with the same name get the same text "
                "features and can never be told apart")
        return classnames

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Switch the class list; learned tensors are kept."""
        classnames = self._validate_classnames(classnames)
        self.check_classnames(classnames)
        texts = self.prompt_texts(classnames)
        tokens = self.tokenize(texts)
        self._check_fits_context(texts, tokens)
        tokens = tokens.to(self.clip.device)
        self.register_buffer("class_tokens", tokens, persistent=False)
        self.classnames = classnames
        self.on_classnames_changed()
        self._text_cache = None

    def _check_fits_context(self, texts: list, tokens: torch.Tensor) -> None:
        """A prompt the tokenizer had to cut loses its end (the EOT lands on the last position):
        long class names would all end in the same truncated tokens."""
        cut = [text for text, row in zip(texts, tokens) if int(row[-1]) != 0]
        if cut:
            raise ConfigError(
                f"{len(cut)} class prompt(s) do not fit the text tower's context of {tokens.shape[1]} tokens "
                f"and would be truncated, e.g. {cut[0][:120]!r}; shorten those class names")

    def use_dataset(self, dataset: str) -> None:
        """Hook: the method is about to be evaluated on ``dataset`` (another dataset than it was
        trained on, for cross-dataset transfer). Default: nothing changes."""

    def check_classnames(self, classnames: list) -> None:
        """Hook: reject class lists the method cannot handle (e.g. CSC with another count)."""

    def on_classnames_changed(self) -> None:
        """Hook: rebuild per-class frozen inputs."""

    # -- prompts & features ---------------------------------------------------------------------
    def compute_prompts(self) -> Prompts:
        """Per-depth prompts of both towers for this forward pass."""
        return Prompts(text=[], vision=[])

    def encode_class_text(self, prompts: Prompts) -> torch.Tensor:
        """Unnormalised text features (n_classes, D) of the current classes."""
        self.text_encoder_calls += 1
        return towers.encode_text(self.clip.model, self.class_tokens, prompts.text, truncate=self.truncate_text)

    def encode_images(self, images: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        """Unnormalised image features (B, D)."""
        return towers.encode_image(self.clip.model, images, prompts.vision,
                                   cls_only_last_block=self.cls_only_last_block)

    def text_learned_tensors(self) -> list:
        """Learned tensors the class text features depend on (default: all trainable ones)."""
        return [p for p in self.parameters() if p.requires_grad]

    def _text_cache_key(self, device: torch.device) -> tuple:
        autocast = torch.is_autocast_enabled(device.type)
        dtype = torch.get_autocast_dtype(device.type) if autocast else None
        return (
            tuple(self.classnames),
            tuple((id(p), p.data_ptr(), p._version) for p in self.text_learned_tensors()),
            str(device),
            autocast,
            dtype,
            self.truncate_text,
        )

    def class_text_features(self, prompts: Prompts, device: Optional[torch.device] = None) -> torch.Tensor:
        """L2-normalised class text features (n_classes, D), cached when allowed.

        The cache is used in eval mode with grad disabled, or whenever no learned tensor
        requires grad (nothing can change them). It is keyed on the class names and on the
        identity and version counter of every learned tensor, so an optimizer step, a
        ``load_learned_state_dict`` or a class change invalidates it.
        """
        device = device or self.clip.device
        text_tensors = self.text_learned_tensors()
        cacheable = (not self.training and not torch.is_grad_enabled()) or not text_tensors
        if cacheable:
            key = self._text_cache_key(device)
            if self._text_cache is not None and self._text_cache[0] == key:
                return self._text_cache[1]
            with torch.no_grad():
                features = F.normalize(self.encode_class_text(prompts).float(), dim=-1)
            self._text_cache = (key, features)
            return features
        return F.normalize(self.encode_class_text(prompts).float(), dim=-1)

    def clear_text_cache(self) -> None:
        self._text_cache = None

    # -- forward --------------------------------------------------------------------------------
    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.model.logit_scale.exp().float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes) = logit_scale.exp() * cos-sim(image, class text)."""
        prompts = self.compute_prompts()
        image_features = self.encode_images(images, prompts)
        text_features = self.class_text_features(prompts, images.device)
        return self.clip_logits(image_features, text_features)

    def clip_logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """``logit_scale.exp() * cos-sim`` in float32, also under autocast.

        ``text_features`` is (C, D) shared by the batch or (B, C, D) per image.
        """
        with torch.autocast(image_features.device.type, enabled=False):
            image_features = F.normalize(image_features.float(), dim=-1)
            text_features = F.normalize(text_features.float(), dim=-1)
            if text_features.dim() == 3:
                similarity = torch.einsum("bd,bcd->bc", image_features, text_features)
            else:
                similarity = image_features @ text_features.t()
            return self.logit_scale * similarity

    # -- learned state --------------------------------------------------------------------------
    def trainable_parameters(self) -> list:
        """``[(name, parameter)]`` of the method's own tensors that require grad."""
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]

    def learned_state_dict(self) -> dict:
        """``{name: tensor}`` of exactly the trainable tensors (detached, on their device)."""
        return {name: p.detach() for name, p in self.trainable_parameters()}

    def load_learned_state_dict(self, state_dict: dict) -> None:
        """Copy learned tensors in; a clear error naming both shapes on any mismatch."""
        own = dict(self.trainable_parameters())
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        if missing or unexpected:
            raise ConfigError(
                f"learned state does not match method {self.method_name!r} on backbone {self.clip.name!r}: "
                f"missing {missing[:6]}{'...' if len(missing) > 6 else ''}, unexpected "
                f"{unexpected[:6]}{'...' if len(unexpected) > 6 else ''}. Expected tensors: {sorted(own)}"
            )
        for name, parameter in own.items():
            value = state_dict[name]
            if tuple(value.shape) != tuple(parameter.shape):
                raise ConfigError(
                    f"learned tensor {name!r} has shape {tuple(value.shape)} in the learned state but "
                    f"{tuple(parameter.shape)} in method {self.method_name!r} on backbone {self.clip.name!r} "
                    f"(text width {self.clip.text_width}, vision width {self.clip.vision_width}); the learned "
                    "state was made for another backbone or other options."
                )
        with torch.no_grad():
            for name, parameter in own.items():
                parameter.copy_(state_dict[name].to(device=parameter.device, dtype=parameter.dtype))
        self._text_cache = None

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for _, p in self.trainable_parameters())

    # -- nn.Module plumbing ---------------------------------------------------------------------
    def _apply(self, fn, *args, **kwargs):
        # Move/cast the (unregistered) frozen backbone together with the method.
        super()._apply(fn, *args, **kwargs)
        self.clip.model._apply(fn, *args, **kwargs)
        self._text_cache = None
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.model.eval()  # the backbone stays in eval mode (frozen statistics, no dropout)
        return self

    def extra_repr(self) -> str:
        return (f"method={self.method_name!r}, backbone={self.clip.name!r}, classes={len(self.classnames)}, "
                f"trainable={self.num_trainable_parameters():,}")

