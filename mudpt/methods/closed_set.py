"""Closed-set bookkeeping, for the methods whose learned state scores the classes it was fitted
on (a linear classifier, a cache of class-labelled features): they score those classes or any
subset of them (ImageNet-A/-R's 200 of ImageNet's 1,000), never other ones."""

from __future__ import annotations

import torch

from mudpt.core.errors import ConfigError

__all__ = ["ClosedSet"]


class ClosedSet:
    """Mix into a :class:`~mudpt.methods.base.PromptMethod` (first in the bases) whose ``fit``
    records ``self.fitted_classnames``: class changes are then checked against them, and
    :meth:`fitted_rows` gives the rows of the fitted state that the current classes use. The
    learned-state files store the fitted classes. Such a method supports the few-shot and
    domain-generalisation protocols only."""

    closed_set = True
    #: the classes of the learned state, in its row order (set by ``fit`` or on loading)
    fitted_classnames: list = []

    def check_classnames(self, classnames: list) -> None:
        super().check_classnames(classnames)
        if not self.fitted_classnames:
            return
        fitted = set(self.fitted_classnames)
        unknown = [name for name in classnames if name not in fitted]
        if unknown:
            raise ConfigError(
                f"{self.method_name} was fitted on {len(self.fitted_classnames)} classes "
                f"({', '.join(self.fitted_classnames[:3])}, ...) and scores only those or a subset of them; "
                f"{len(unknown)} of the {len(classnames)} classes asked for are not among them "
                f"({', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''}): new classes and other datasets "
                "need a method that builds its classifier from text", field="dataset")

    def fitted_rows(self) -> torch.Tensor:
        """The positions of the current classes in ``fitted_classnames`` (the rows of the
        fitted classifier or cache to score)."""
        index = {name: i for i, name in enumerate(self.fitted_classnames)}
        return torch.as_tensor([index[name] for name in self.classnames], dtype=torch.long, device=self.clip.device)
