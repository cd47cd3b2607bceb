"""What the methods that learn on frozen image features share (linear probe, Tip-Adapter, GDA,
LP++, CLAP): no learned text prompts (zero-shot CLIP's text, where they use it, comes from
:meth:`~mudpt.methods.base.PromptMethod.frozen_text_features`), state made by ``fit`` rather
than by the training loop, and one error for using that state before it exists."""

from __future__ import annotations

from mudpt.core.errors import ConfigError

__all__ = ["FeatureSpace"]


class FeatureSpace:
    """Mix into a :class:`~mudpt.methods.base.PromptMethod` (before it in the bases)."""

    optimized = False  # fitted (or trained inside fit on cached features), not by the loop

    def prompt_texts(self, classnames):  # no learned text side: tokenised only as the base class does
        return ["" for _ in classnames]

    def text_learned_tensors(self):
        return []

    def check_fitted(self, attribute: str) -> None:
        """A :class:`ConfigError` when the state ``fit`` makes (``attribute``) does not exist yet."""
        if not hasattr(self, attribute):
            raise ConfigError(f"{self.method_name} has not been fitted: train it (mudpt train runs its fit) or load "
                              "a fitted one (mudpt.load_learned)", field="method")
