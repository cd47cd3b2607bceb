"""The training extension points of a method, and what the training loop hands them.

The training loop (``mudpt.engine.trainer``) drives a method only through these hooks, which
:class:`~mudpt.methods.base.PromptMethod` implements with the plain recipe (cross-entropy on
the logits, back-propagation, nothing fitted, no state across epochs). A method with its own
objective, gradient treatment or closed-form fit overrides the ones it needs
(:class:`TrainingHooks` lists them with their contracts), and the loop needs no change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, runtime_checkable

import torch

__all__ = ["FitContext", "StepContext", "TrainingHooks"]


@runtime_checkable
class TrainingHooks(Protocol):
    """What the training loop calls, in this order: ``fit`` once before the first epoch (not
    when resuming); per batch ``forward(images, labels)`` (which calls ``training_step``) then
    ``backward`` before the optimiser step; ``on_epoch_end`` after each epoch, before its
    checkpoint (which saves ``training_state``; a resumed run calls ``load_training_state``);
    ``on_train_end`` after the last epoch (or after ``fit`` for a method without epochs),
    before the learned state is saved."""

    def fit(self, context: "FitContext") -> None:
        """Fit what is fitted from the data rather than by the optimiser (a closed-form
        classifier, a cache of training features); persistent buffers it creates are learned
        state."""

    def training_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        """The objective of one batch: ``{"logits", "loss", "terms"}`` (``terms``: named scalar
        parts of the loss, logged per step as ``loss_<name>``)."""

    def backward(self, outputs: dict, context: "StepContext") -> None:
        """Fill the trainable tensors' ``.grad`` (the optimiser has zeroed them)."""

    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        """After each epoch (0-based ``epoch`` of ``epochs``)."""

    def on_train_end(self, context: Optional["FitContext"] = None) -> None:
        """After the last epoch; ``context`` gives the training data's features again."""

    def training_state(self) -> dict:
        """State the hooks keep across epochs (saved in checkpoints)."""

    def load_training_state(self, state: dict) -> None:
        """Restore :meth:`training_state`."""


@dataclass
class StepContext:
    """What the training loop hands a method's :meth:`PromptMethod.backward`.

    Attributes:
        scale: ``loss -> loss`` as the grad scaler scales it (identity without fp16).
        average: ``[tensor] -> [tensor]`` averaged over the DDP processes (identity in one).
        params: the trainable tensors, in optimiser order.
    """

    scale: Callable[[torch.Tensor], torch.Tensor]
    average: Callable[[list], list]
    params: list


@dataclass
class FitContext:
    """What the training loop hands a method's :meth:`PromptMethod.fit` (before any epoch).

    Attributes:
        train, val: the run's training and validation items (``mudpt.data.Datum``: ``.path``,
            ``.label``); the training items are the few-shot sample.
        image_features: ``(items, augment=False, views=1, crop_scale=None) -> (views, N, D)``
            frozen CLIP image features (float32, not normalised) of the items: with the test
            transform, or ``views`` seeded augmented views (the backbone's training transform,
            with ``crop_scale`` as the random crop's range where the backbone allows a crop).
            Computed once and cached on disk per backbone, weights, items and transform.
        note: ``note(text)``: say something the run should record (printed once, logged).
        seed: the run's seed.
    """

    train: list
    val: list
    image_features: Callable
    note: Callable[[str], None]
    seed: int = 1

    @classmethod
    def from_tensors(cls, method: "PromptMethod", train_images: torch.Tensor, train_labels,
                     val_images: Optional[torch.Tensor] = None, val_labels=None,
                     note: Callable[[str], None] = print, seed: int = 1) -> "FitContext":
        """A context over preprocessed image tensors instead of a dataset, to fit a method from
        Python (``method.fit(FitContext.from_tensors(method, x, y, val_x, val_y))``). The images
        are used as given: every "augmented view" is the same tensor. Without a validation
        split, the training images serve as one."""
        if val_images is None:
            val_images, val_labels = train_images, train_labels
        splits = {"train": (train_images, train_labels), "val": (val_images, val_labels)}
        items = {name: [_TensorItem(f"{name}:{i}", int(label), name) for i, label in enumerate(labels)]
                 for name, (_, labels) in splits.items()}

        def image_features(chosen, augment=False, views=1, crop_scale=None):
            if not chosen:
                return torch.zeros(views, 0, method.clip.embed_dim)
            images = splits[chosen[0].split][0]
            index = torch.as_tensor([int(item.path.split(":")[1]) for item in chosen])
            with torch.no_grad():
                features = method.frozen_image_features(images[index]).float().cpu()
            return features.unsqueeze(0).expand(views, -1, -1).clone()

        return cls(items["train"], items["val"], image_features, note, seed)


@dataclass(frozen=True)
class _TensorItem:
    path: str
    label: int
    split: str
