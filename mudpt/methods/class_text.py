"""A method's class text: the class names, their prompts' tokens and the cached text features.

:class:`ClassText` is a component of every :class:`~mudpt.methods.base.PromptMethod`
(``method.class_text``): it checks class names, checks that the prompts fit the text tower's
context, and keeps two caches, both dropped whenever the classes, the device or the learned
state change (:meth:`ClassText.clear`):

* the class text features of the method's own prompts, reused while the method is evaluated
  (eval mode, no autograd) or whenever they depend on no learned tensor. Switching between
  train and eval mode, loading a learned state or changing the classes drops them, and the key
  holds the :func:`revision` of the learned tensors, so an in-place edit (an optimiser step,
  ``ctx[1] += ...``) is never served stale features;
* frozen CLIP's text features of a template set (:meth:`PromptMethod.frozen_text_features`),
  one class list at a time.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from mudpt.core.classnames import classname_text, validate_classnames  # noqa: F401 - re-exported
from mudpt.core.errors import ConfigError

__all__ = ["ClassText", "classname_text", "revision", "validate_classnames"]


def revision(tensors: Sequence[torch.Tensor]) -> tuple:
    """Which values ``tensors`` hold, cheaply: each tensor's storage and its version counter.

    The version counter is the one autograd keeps to detect in-place changes (every in-place
    operation bumps it); it is the only exact way to notice that a learned tensor was edited
    without reading its values. It is an underscored attribute of ``torch.Tensor``, so it is
    read here only, and the tests pin what it is used for (tests/test_core_methods.py).
    """
    return tuple((id(t), t.data_ptr(), t._version) for t in tensors)


def check_fits_context(texts: list, tokens: torch.Tensor, prefix: str = "", prefix_tokens: int = 0,
                       pad_id: int = 0) -> None:
    """A prompt the tokenizer had to cut loses its end (the EOT lands on the last position):
    long class names would all end in the same truncated tokens. ``prefix`` is the method's
    learned context (``prefix_tokens`` tokens) before every class name: when it takes most of
    the context, the error says to shorten it rather than the class names."""
    cut = [text for text, row in zip(texts, tokens) if int(row[-1]) != pad_id]
    if not cut:
        return
    length = tokens.shape[1]
    what = f"{len(cut)} class prompt(s) do not fit the text tower's context of {length} tokens and would be truncated"
    if prefix and prefix_tokens >= length // 2:
        raise ConfigError(
            f"{what}: each prompt is the method's {prefix_tokens} context tokens before the class name, which leaves "
            f"{max(length - 2 - prefix_tokens, 0)} tokens for it; use fewer context tokens (the method option n_ctx)",
            field="method_options.n_ctx")
    raise ConfigError(f"{what}, e.g. {cut[0][:120]!r}; shorten those class names", field="classnames")


class ClassText:
    """The class names of a method and the caches derived from them (see the module doc)."""

    def __init__(self) -> None:
        self.names: list = []
        self._features: Optional[tuple] = None
        self._frozen: dict = {}

    def set(self, names: list) -> None:
        self.names = list(names)
        self.clear()

    def clear(self) -> None:
        """Drop every cached feature (classes, device, precision or learned state changed)."""
        self._features = None
        self._frozen = {}

    def features(self, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The cached class text features for ``key`` (the class names are part of it), computed
        by ``compute()`` when missing; one entry at a time."""
        key = (tuple(self.names),) + tuple(key)
        if self._features is None or self._features[0] != key:
            self._features = (key, compute())
        return self._features[1]

    def frozen(self, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Frozen CLIP's features for ``key`` (templates, averaging, device) of the current
        classes; one class list at a time."""
        key = (tuple(self.names),) + tuple(key)
        if key not in self._frozen:
            self._frozen = {key: compute()}
        return self._frozen[key]
