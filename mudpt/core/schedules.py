"""Learning-rate schedules on ``torch.optim.lr_scheduler``, as the reference (Dassl) builds them.

Dassl wraps ``CosineAnnealingLR(T_max=max_epoch)`` in a ``ConstantWarmupScheduler``: the first
``warmup_epochs`` epochs train at ``warmup_lr``; from then on the cosine scheduler steps once
per epoch, so epoch ``e >= warmup`` trains at ``0.5 * lr * (1 + cos(pi * (e - warmup) / epochs))``
(computed by torch's recursive form, as in the reference). The schedule is stepped once per
epoch, after the epoch.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

__all__ = ["ConstantWarmupScheduler", "warmup_cosine"]


class ConstantWarmupScheduler(LRScheduler):
    """A constant learning rate for ``warmup_epochs`` steps, then the ``successor``'s schedule."""

    def __init__(self, optimizer: Optimizer, successor: LRScheduler, warmup_epochs: int, warmup_lr: float,
                 last_epoch: int = -1):
        self.successor = successor
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_lr = float(warmup_lr)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epochs:
            return self.successor.get_last_lr()
        return [self.warmup_lr for _ in self.base_lrs]

    def step(self, epoch=None):  # noqa: D102 - Dassl's semantics, see the module docstring
        if self.last_epoch >= self.warmup_epochs:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)

    def state_dict(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "successor")}
        state["successor"] = self.successor.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        self.successor.load_state_dict(state.pop("successor"))
        self.__dict__.update(state)


def warmup_cosine(optimizer: Optimizer, epochs: int, warmup_epochs: int, warmup_lr: float,
                  min_lr: float = 0.0) -> ConstantWarmupScheduler:
    """Dassl's ``cosine`` schedule with a ``constant`` warm-up (the CoOp family's recipe); the
    cosine ends at ``min_lr`` (``eta_min``: CLIP-LoRA's 1e-6)."""
    cosine = CosineAnnealingLR(optimizer, T_max=float(epochs), eta_min=float(min_lr))
    return ConstantWarmupScheduler(optimizer, cosine, warmup_epochs, warmup_lr)
