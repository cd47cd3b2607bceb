"""The base class of every method, :class:`PromptMethod`, and what a new method defines.

A method is an ``nn.Module`` built on a frozen :class:`~mudpt.core.backbones.ClipBackbone`. The
backbone is *not* a registered sub-module: it never appears in ``state_dict()`` or
``parameters()`` (so it is neither saved with the learned state nor handed to an optimizer, nor
broadcast by DDP), but ``.to(device)`` / ``.cuda()`` / ``.half()`` still move it (see
:meth:`PromptMethod._apply`) and ``.train()`` never takes it out of eval mode.

**The backbone is shared.** Methods built on the same ``clip`` object share its weights (that
is what lets several methods be compared in one process without loading CLIP twice), so
moving or casting one of them moves or casts the backbone under all of them. Build each method
on its own ``mudpt.load_clip(...)`` to place them on different devices or dtypes.

A new method subclasses :class:`PromptMethod` and defines

* ``Config`` — its typed config, a :class:`~mudpt.methods.config.MethodConfig` dataclass
  (defaults, types and checks declared once; ``resolve(clip)`` derives backbone-dependent
  defaults). The method reads the resolved values from ``self.settings``; ``self.config`` is
  what the user gave (what is saved);
* its facts (``label``, ``report_order``, ``published_presets``, ... : see the class);
* ``build()`` — create the learned tensors and set ``self.prompt_prefix`` (the words of the
  class prompt ``"{prefix} {class}."`` whose first tokens the learned context replaces);
* ``compute_prompts()`` — the per-depth prompts of both towers for one forward pass;

and optionally ``text_learned_tensors()`` (the learned tensors the class text features depend
on; ``[]`` lets them be cached in training too), ``prompt_texts(classnames)``,
``encode_class_text`` / ``encode_images`` / ``logits``, ``check_classnames`` and
``on_classnames_changed``, and the training hooks of :class:`~mudpt.methods.hooks.TrainingHooks`
(its own objective, gradient treatment, closed-form fit, state across epochs).

The pieces around it, one module each: the class names, their tokens and the cached text
features (:class:`~mudpt.methods.class_text.ClassText`, ``method.class_text``); the
bookkeeping of methods that score only the classes they were fitted on
(:class:`~mudpt.methods.closed_set.ClosedSet`, a mixin); the training hooks and their contexts
(:mod:`mudpt.methods.hooks`). ``frozen_text_features`` / ``frozen_image_features`` give frozen
CLIP's features from one cached path.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mudpt.core import towers
from mudpt.core.backbones import ClipBackbone
from mudpt.core.errors import ConfigError
from mudpt.core.vocabulary import PROTOCOLS
from mudpt.methods.class_text import ClassText, check_fits_context, classname_text, revision, validate_classnames
from mudpt.methods.config import MethodConfig
from mudpt.methods.hooks import FitContext, StepContext, TrainingHooks  # noqa: F401

__all__ = ["FitContext", "MethodConfig", "PromptMethod", "Prompts", "StepContext", "TrainingHooks", "classname_text",
           "phrase_token_ids", "resolve_depth"]


def phrase_token_ids(clip: ClipBackbone, phrase: str) -> torch.Tensor:
    """Token ids of ``phrase`` without the tokenizer's special tokens (CLIP's SOT/EOT)."""
    return clip.text_layout.text_ids(torch.as_tensor(clip.tokenizer([phrase])).long())


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

    Facts about a method live on its class (as timm keeps ``default_cfgs`` beside each model);
    the engine reads them and names no method:

        method_name: registry name (set by ``register_method``).
        Config: the method's :class:`MethodConfig` dataclass.
        label: its name in tables and plots (default: the registry name).
        report_order: rank of its rows in reports (the field's usual order; lower first).
        learns_from_data: False for a method that uses no training images at all (zero-shot
            CLIP): a sweep runs it once per dataset, without shots or seeds.
        optimized: whether the training loop's optimiser trains it (False: zero-shot CLIP, and
            methods fitted in closed form or without training in :meth:`fit`; the optimisation
            settings are then no part of a run's identity).
        closed_set: the learned state scores the classes it was fitted on (set by the
            :class:`~mudpt.methods.closed_set.ClosedSet` mixin); such a method supports the
            few-shot and domain-generalisation protocols only (:meth:`protocols`).
        published_presets: the preset of each protocol in the ``published`` profile (the
            reference repositories' ViT-B/16 configs): one preset name for every protocol, or
            ``{protocol: name or {max shots: name}}`` (``None``: no shot count given;
            domain generalisation defaults to the cross-dataset preset). See
            :meth:`published_preset`.
        uses_vision_prompts: needs a ViT image tower.
    """

    method_name: str = "base"
    Config: type = MethodConfig
    label: str = ""
    report_order: float = 1000
    learns_from_data: bool = True
    published_presets: object = {}
    uses_vision_prompts: bool = False
    optimized: bool = True
    #: the training transform's random-crop range for this method (None: the reference
    #: recipe's, or what the backbone declares)
    train_crop_scale: Optional[tuple] = None
    #: the training transform's augmentation instead of crop and flip (``"randaugment"``:
    #: CoPrompt's), and how many augmented views of each image a training batch holds (> 1:
    #: ``training_step`` gets (B, views, 3, S, S))
    train_augment: Optional[str] = None
    train_views: int = 1
    closed_set: bool = False
    #: Memory saver, off with None: the text tower runs over this many prompt sequences at a
    #: time, under activation checkpointing while autograd records (the same features and
    #: gradients; the backward pass recomputes one chunk at a time). The engine sets it from
    #: ``TrainConfig.text_chunk``.
    text_chunk: Optional[int] = None
    #: prompts per no-grad text-tower forward of :meth:`frozen_text_features` (exact: without
    #: autograd a chunk's activations are freed before the next chunk runs)
    frozen_text_chunk: int = 1024

    def __init__(self, clip: ClipBackbone, classnames: Sequence[str], config: Optional[MethodConfig] = None):
        super().__init__()
        if not isinstance(clip, ClipBackbone):
            raise TypeError(f"clip must be a mudpt ClipBackbone (from mudpt.load_clip), got {type(clip).__name__}")
        config = self.Config() if config is None else config
        if type(config) is not self.Config:
            raise TypeError(f"method {self.method_name!r} takes a {self.Config.__name__}, got {type(config).__name__}")
        if self.requires_vit(config) and not clip.is_vit:
            raise ConfigError(
                f"method {self.method_name!r} changes the image tower's transformer blocks (prompts or "
                f"adapters), which needs a ViT image tower; backbone {clip.name!r} has a "
                f"{type(clip.model.visual).__name__}. Use a ViT backbone, or a text-only method with this "
                "backbone.", field="method")
        # Stored outside nn.Module's registries on purpose (see the module docstring).
        object.__setattr__(self, "clip", clip)
        self.config = config
        self.settings = config.resolve(clip)
        self.prompt_prefix = ""
        self.class_text = ClassText()
        self.text_encoder_calls = 0  # how often the text tower ran (for tests and profiling)
        # Exact speed-ups of the towers; switch them off to measure the naive computation.
        self.truncate_text = True  # text: run max_eot+1 positions, shared prefix computed once
        self.cls_only_last_block = True  # vision: last block for the pooled CLS token only
        self.class_text.set(validate_classnames(classnames))
        self.build()
        for parameter in self.parameters():
            if parameter.device != clip.device:
                parameter.data = parameter.data.to(clip.device)
        self.set_classnames(classnames)

    @classmethod
    def protocols(cls) -> tuple[str, ...]:
        """The protocols this method supports: all of them, or for a closed-set method the two
        that evaluate on its training classes only."""
        return ("fewshot", "dg") if cls.closed_set else PROTOCOLS

    @classmethod
    def published_preset(cls, protocol: str, shots: Optional[int] = None) -> Optional[str]:
        """The ``published`` profile's preset of this method under ``protocol`` with ``shots``
        shots per class (``None`` when it has none; see ``published_presets``)."""
        spec = cls.published_presets
        if isinstance(spec, str):
            return spec
        choice = spec.get(protocol, spec.get("xd") if protocol == "dg" else None)
        if not isinstance(choice, dict):
            return choice
        if not shots:
            return choice.get(None)
        bounds = sorted(k for k in choice if k is not None)
        return choice[next((k for k in bounds if shots <= k), bounds[-1])]

    @classmethod
    def requires_vit(cls, config: MethodConfig) -> bool:
        """Whether this config changes the image tower's blocks: prompts or adapters (default:
        ``uses_vision_prompts``)."""
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
            return towers.text_token_embeddings(self.clip.model, ids).detach().float().cpu()

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

    @property
    def classnames(self) -> list:
        """The classes the method scores now (label order)."""
        return self.class_text.names

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Switch the class list; learned tensors are kept."""
        classnames = validate_classnames(classnames)
        self.check_classnames(classnames)
        texts = self.prompt_texts(classnames)
        tokens = self.tokenize(texts)
        pad = self.clip.text_layout.pad_id
        if int(tokens[:, -1].ne(pad).any()):  # something was cut: say whether the context or the names are long
            prefix = self.prompt_prefix.strip()
            # the tokenizer cuts a prefix longer than the context: count its words too
            count = max(len(phrase_token_ids(self.clip, prefix)), len(prefix.split())) if prefix else 0
            check_fits_context(texts, tokens, prefix, count, pad_id=pad)
        self.register_buffer("class_tokens", tokens.to(self.clip.device), persistent=False)
        self.class_text.set(classnames)
        self.on_classnames_changed()

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

    def text_context(self) -> list:
        """The learned text context per depth as the text tower receives it ((n, d) or, class-
        specific, (classes, n, d); depth 0 in the token-embedding space), for
        :func:`mudpt.methods.interpret.interpret_prompts`. Default: ``compute_prompts().text``."""
        with torch.no_grad():
            return list(self.compute_prompts().text)

    def text_tower(self, tokens: torch.Tensor, prompts: Sequence = (), embeddings: Optional[torch.Tensor] = None,
                   **options):
        """The text tower on ``tokens`` with per-depth ``prompts`` (``towers.encode_text``), with
        this method's exact speed-ups and, when ``text_chunk`` is set, in checkpointed chunks;
        ``options`` go to ``towers.encode_text`` (``adapters``, ``share_prefix``)."""
        if self.text_chunk:
            return towers.encode_text_in_chunks(self.clip.model, tokens, prompts, embeddings=embeddings,
                                                chunk=self.text_chunk, truncate=self.truncate_text,
                                                layout=self.clip.text_layout, **options)
        return towers.encode_text(self.clip.model, tokens, prompts, embeddings=embeddings, truncate=self.truncate_text,
                                  layout=self.clip.text_layout, **options)

    def encode_class_text(self, prompts: Prompts) -> torch.Tensor:
        """Unnormalised text features (n_classes, D) of the current classes."""
        self.text_encoder_calls += 1
        return self.text_tower(self.class_tokens, prompts.text)

    def encode_images(self, images: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        """Unnormalised image features (B, D)."""
        return towers.encode_image(self.clip.model, images, prompts.vision,
                                   cls_only_last_block=self.cls_only_last_block)

    def text_learned_tensors(self) -> list:
        """Learned tensors the class text features depend on (default: all trainable ones)."""
        return [p for p in self.parameters() if p.requires_grad]

    def class_text_features(self, prompts: Prompts, device: Optional[torch.device] = None) -> torch.Tensor:
        """L2-normalised class text features (n_classes, D), cached when allowed (see
        :meth:`_class_text_features`); under :meth:`constant_class_text`, the constant computed
        on entry."""
        if self._pinned_text is not None:
            return self._pinned_text
        features = self._class_text_features(prompts, device)
        if self._pinning:
            self._pinned_text = features
        return features

    def _class_text_features(self, prompts: Prompts, device: Optional[torch.device] = None) -> torch.Tensor:
        """L2-normalised class text features (n_classes, D), cached when allowed.

        The cache (``self.class_text``) is used in eval mode with grad disabled, or whenever no
        learned tensor requires grad (nothing can change them); it is keyed on the classes, the
        learned tensors' :func:`~mudpt.methods.class_text.revision`, the device, the autocast
        dtype and the truncation switch, and dropped by ``train()`` / ``eval()``,
        :meth:`load_learned_state_dict`, a class change and a device move.
        """
        device = device or self.clip.device
        text_tensors = self.text_learned_tensors()
        if (self.training or torch.is_grad_enabled()) and text_tensors:
            raw = self.encode_class_text(prompts)
            self.tap_features("text", raw)
            return F.normalize(raw.float(), dim=-1)
        autocast = torch.is_autocast_enabled(device.type)
        key = (revision(text_tensors), str(device), autocast,
               torch.get_autocast_dtype(device.type) if autocast else None, self.truncate_text)

        def compute():
            with torch.no_grad():
                return F.normalize(self.encode_class_text(prompts).float(), dim=-1)

        return self.class_text.features(key, compute)

    # -- deployment: the image-to-logits graph ---------------------------------------------------
    _pinned_text: Optional[torch.Tensor] = None
    _pinning: bool = False
    #: True while :meth:`constant_class_text` is active: a method that loops over the batch in
    #: Python (CoCoOp's memory chunks) computes it in one piece, so the batch size stays symbolic
    tracing: bool = False

    @contextlib.contextmanager
    def constant_class_text(self, example_images: torch.Tensor):
        """While active, :meth:`logits` is a function of the images alone, ready to be traced
        (``torch.export``, ONNX): every class text feature this method (and a method it wraps)
        uses is computed once on entry, by a forward pass of ``example_images``, and served as a
        constant; frozen CLIP's text features come from their cache. Where the text depends on
        the image (CoCoOp) the text tower stays in the graph, then on all positions (the
        truncation at the last end token depends on the token values)."""
        methods = [m for m in self.modules() if isinstance(m, PromptMethod)]
        saved = [(m, m.truncate_text) for m in methods]
        try:
            for m in methods:
                m._pinning = True
            with torch.no_grad():
                self.logits(example_images)
            for m in methods:
                m._pinning = False
            for m in methods:
                m.truncate_text, m.tracing = False, True
            yield self
        finally:
            for m, truncate in saved:
                m._pinning, m._pinned_text, m.tracing = False, None, False
                m.truncate_text = truncate

    @classmethod
    def deploy_formats(cls, config: MethodConfig) -> tuple:
        """The export formats this config of the method allows (docs/DEPLOY.md): ``onnx`` and
        ``torch`` always; ``head`` (the class-embedding matrix for frozen open_clip) when the
        logits are ``scale * cos(frozen CLIP image feature, class text feature)``
        (:meth:`uses_frozen_image_tower`); ``open_clip`` (a merged state dict) when the method
        changes the backbone's weights by an additive update (:meth:`merged_backbone_state`)."""
        formats = ["onnx", "torch"]
        if cls.uses_frozen_image_tower(config):
            formats.append("head")
        if cls.merges_into_backbone(config):
            formats.append("open_clip")
        return tuple(formats)

    #: the logits are scale * cos(frozen CLIP's image feature, the class text features): the
    #: method changes the text side only (deployable as a class-embedding head)
    frozen_image_tower: bool = False

    @classmethod
    def uses_frozen_image_tower(cls, config: MethodConfig) -> bool:
        """Whether this config leaves the image tower and the logits' form alone (default:
        ``frozen_image_tower``)."""
        return cls.frozen_image_tower

    @classmethod
    def merges_into_backbone(cls, config: MethodConfig) -> bool:
        """Whether the learned state is an additive update of the backbone's weights that can be
        folded into them (:meth:`merged_backbone_state`). Default: no."""
        return False

    def merged_backbone_state(self) -> dict:
        """The backbone's state dict with the learned update folded in (open_clip's keys)."""
        raise ConfigError(f"method {self.method_name!r} does not change the backbone's weights by an additive "
                          "update, so there is no merged state dict to export", field="format")

    def clear_text_cache(self) -> None:
        """Drop the cached class text features (after editing learned tensors in place in eval mode)."""
        self.class_text.clear()

    # -- forward --------------------------------------------------------------------------------
    @property
    def logit_scale(self) -> torch.Tensor:
        """The backbone's ``exp(logit_scale)``, or the constant a method's config fixes in a
        ``logit_scale`` option (the authors' 100 of CLIP-LoRA and GDA; ``None`` there: the
        backbone's)."""
        fixed = getattr(self.settings, "logit_scale", None)
        if fixed is not None:
            return torch.tensor(float(fixed), device=self.clip.device)
        return self.clip.model.logit_scale.exp().float()

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image features (B, D) unnormalised, class text features (C, D) normalised)``."""
        prompts = self.compute_prompts()
        image_features = self.encode_images(images, prompts)
        self.tap_features("image", image_features)
        return image_features, self.class_text_features(prompts, images.device)

    #: ``{}`` while a wrapper (DePT) records this method's unnormalised features of a forward
    #: pass: ``"image"`` (B, D) and, when computed with autograd, ``"text"`` ((C, D) or per image
    #: (B, C, D)); ``None`` otherwise. Every place that computes features reports them.
    feature_tap: Optional[dict] = None

    def tap_features(self, name: str, features: torch.Tensor) -> None:
        """Report unnormalised features to :attr:`feature_tap` (nothing when nobody listens)."""
        if self.feature_tap is not None:
            self.feature_tap[name] = features

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes) = logit_scale.exp() * cos-sim(image, class text)."""
        return self.clip_logits(*self.features(images))

    def forward(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None):
        """Logits of ``images``; with ``labels``, the training step's outputs
        (:meth:`training_step`). One entry point, so DistributedDataParallel sees every pass."""
        multi_view = labels is not None and self.train_views > 1 and getattr(images, "dim", lambda: 0)() == 5
        self.check_images(images[:, 0] if multi_view else images)
        if labels is None:
            return self.logits(images)
        return self.training_step(images, labels)

    def check_images(self, images) -> None:
        """A batch the image tower can take: a float tensor (B, 3, S, S) at the backbone's size S,
        else a :class:`ConfigError` saying what was given and how to make one."""
        size = self.clip.image_size
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else None
        if (shape is not None and len(shape) == 4 and shape[1] == 3 and shape[2:] == (size, size)
                and images.is_floating_point()):
            return
        given = (f"a {images.dtype} tensor of shape {shape}" if shape is not None else
                 f"a {type(images).__name__}")
        raise ConfigError(
            f"{self.method_name} takes a batch of preprocessed images, a float tensor (batch, 3, {size}, {size}); "
            f"got {given}. Make one with the backbone's transform (mudpt.data.build_transform(clip)), which "
            "resizes, crops and converts grey or RGBA images to 3 channels; a single image needs a batch "
            "dimension (image.unsqueeze(0))", field="images")

    # -- training: fitting, the objective, the gradient, the epochs --------------------------------
    def fit(self, context: FitContext) -> None:
        """Hook: before the first epoch (not when resuming), fit what is fitted from the data
        rather than by the optimiser: a closed-form classifier, a cache of training features.
        Tensors it creates as persistent buffers are learned state (saved, loaded). Default:
        nothing."""

    def require_every_class(self, labels) -> None:
        """For a fit that estimates something per class (a mean, a prototype, a multiplier): a
        :class:`ConfigError` naming the classes of :attr:`classnames` without a training image."""
        present = set(int(label) for label in labels)
        missing = [i for i in range(len(self.classnames)) if i not in present]
        if missing:
            raise ConfigError(f"{self.method_name} needs training images of every class; {len(missing)} class(es) have "
                              f"none, e.g. {self.classnames[missing[0]]!r}: give every class at least one training "
                              "image (a few-shot sample of shots >= 1 has one per class)", field="dataset")

    def training_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        """The objective of one batch: ``{"logits", "loss", "terms"}``. ``terms`` maps names to
        the scalar parts of the loss (logged per step beside the total). Default: cross-entropy."""
        logits = self.logits(images)
        return {"logits": logits, "loss": F.cross_entropy(logits.float(), labels), "terms": {}}

    def lr_multiplier(self, name: str) -> float:
        """The learning rate of trainable tensor ``name`` over the run's ``lr`` (default 1: one
        rate for all; DePT's head trains faster). The warm-up's constant rate is the same for
        every tensor, as Dassl's."""
        return 1.0

    def backward(self, outputs: dict, context: "StepContext") -> None:
        """Fill the trainable tensors' ``.grad`` for the optimiser step (the optimiser has zeroed
        them). Default: back-propagate the (scaled) loss. ``context.average`` averages tensors
        over DDP processes, so a method that treats gradients works on all-reduced ones."""
        context.scale(outputs["loss"]).backward()

    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        """Hook: after each training epoch (0-based ``epoch`` of ``epochs``), before its checkpoint."""

    def on_train_end(self, context: Optional[FitContext] = None) -> None:
        """Hook: after the last epoch (or after :meth:`fit` for a method without epochs), before
        the learned state is saved; ``context`` gives the training data's features again."""

    def training_state(self) -> dict:
        """Extra state the hooks keep across epochs (tensors or plain data), saved in checkpoints
        so that a resumed run continues exactly. Default: none."""
        return {}

    def load_training_state(self, state: dict) -> None:
        """Restore :meth:`training_state`."""

    # -- frozen CLIP features (shared, cached) ------------------------------------------------------
    def frozen_text_features(self, templates: Sequence[str], average: str = "normalized",
                             normalize: bool = True) -> torch.Tensor:
        """Frozen CLIP's normalised text features (C, D) of the current classes for a template
        set, computed once per class list (not per step, never saved). Several templates are
        averaged as zero-shot ensembles do (``"normalized"``: mean of normalised features) or
        as PromptSRC does (``"raw"``: mean of the raw features); then normalised, unless
        ``normalize=False`` (CLAP's prototypes: the raw mean of the raw features)."""
        if average not in ("normalized", "raw"):
            raise ValueError(f"average must be 'normalized' or 'raw', got {average!r}")
        device = self.clip.device
        return self.class_text.frozen((tuple(templates), average, normalize, str(device)),
                                      lambda: self._frozen_text_features(templates, average, device, normalize))

    def _frozen_text_features(self, templates: Sequence[str], average: str, device: torch.device,
                              normalize: bool = True) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            texts = [t.format(classname_text(c)) for t in templates for c in self.classnames]
            tokens = self.tokenize(texts).to(device)
            # templates x classes prompts (PromptSRC: 60 x 1,000 at ImageNet) would hold tens of GB
            # of activations in one forward; without autograd, chunks are exact and cost nothing
            features = towers.encode_text_in_chunks(self.clip.model, tokens, chunk=self.frozen_text_chunk,
                                                    checkpoint=False, truncate=self.truncate_text).float()
            features = features.reshape(len(templates), len(self.classnames), -1)
            if average == "normalized":
                features = F.normalize(features, dim=-1)
            mean = features.mean(dim=0)
            return F.normalize(mean, dim=-1) if normalize else mean

    def frozen_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen CLIP's normalised image features (B, D) of a batch (no prompts, no gradient):
        one image-tower forward."""
        with torch.no_grad():
            features = towers.encode_image(self.clip.model, images, cls_only_last_block=self.cls_only_last_block)
        return F.normalize(features.float(), dim=-1)

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

    def fitted_buffers(self) -> list:
        """``[(name, buffer)]`` of the persistent buffers: state fitted from data (:meth:`fit`)."""
        persistent = set(self.state_dict(keep_vars=True))
        return [(name, b) for name, b in self.named_buffers() if name in persistent]

    def learned_state_dict(self) -> dict:
        """``{name: tensor}`` of exactly the learned tensors: the trainable ones and the fitted
        buffers (detached, on their device)."""
        state = {name: p.detach() for name, p in self.trainable_parameters()}
        state.update((name, b.detach()) for name, b in self.fitted_buffers())
        return state

    def prepare_learned_state(self, state_dict: dict) -> None:
        """Hook: before loading, create tensors whose shape depends on the training data (a
        cache of N training images) with the shapes ``state_dict`` has. Default: nothing."""

    def load_learned_state_dict(self, state_dict: dict) -> None:
        """Copy learned tensors in; a clear error naming both shapes on any mismatch."""
        self.prepare_learned_state(state_dict)
        own = dict(self.trainable_parameters())
        own.update(self.fitted_buffers())
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
        self.class_text.clear()

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for _, p in self.trainable_parameters())

    def num_learned_values(self) -> int:
        """Values of the learned state (trainable tensors and fitted buffers)."""
        return sum(t.numel() for t in self.learned_state_dict().values())

    # -- nn.Module plumbing ---------------------------------------------------------------------
    def _apply(self, fn, *args, **kwargs):
        # Move/cast the (unregistered) frozen backbone together with the method.
        super()._apply(fn, *args, **kwargs)
        self.clip.model._apply(fn, *args, **kwargs)
        self.class_text.clear()
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.model.eval()  # the backbone stays in eval mode (frozen statistics, no dropout)
        self.class_text.clear()  # the learned tensors may change (or have changed) in training
        return self

    def extra_repr(self) -> str:
        return (f"method={self.method_name!r}, backbone={self.clip.name!r}, classes={len(self.classnames)}, "
                f"trainable={self.num_trainable_parameters():,}")

