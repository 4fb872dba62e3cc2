"""The one optimiser update every training loop of the project makes.

Search (a sampled architecture on the shared weights), retraining (one fixed architecture) and the
experiments all do the same thing per batch: forward under optional bfloat16 autocast, refuse a
non-finite loss, back-propagate, let a regulariser read and extend the gradient, clip, step. Doing it
in one place means one fix reaches every loop.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from engine.guard import NonFiniteGuard


class Step:
    """``update(loss)`` performs one guarded step of ``optimizer`` over ``params``.

    ``amp`` turns on bfloat16 autocast in :meth:`autocast` (use it around the forward and loss);
    ``grad_clip > 0`` clips the global gradient norm of ``params``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter], grad_clip: float,
                 guard: NonFiniteGuard, amp: bool = False) -> None:
        self.optimizer, self.grad_clip, self.guard, self.amp = optimizer, grad_clip, guard, amp
        self.params = list(params)
        self.device_type = self.params[0].device.type if self.params else "cpu"

    def autocast(self) -> torch.autocast:
        """bfloat16 autocast when ``amp`` is on, otherwise a no-op context."""
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.amp)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def update(self, loss: Tensor, before_step: Callable[[], Tensor | None] | None = None, what: str = "penalty") -> bool:
        """Back-propagate ``loss`` and step; ``False`` (nothing changed) when the step was skipped.

        ``before_step`` runs after the backward pass with ``.grad`` holding the loss's gradient (a
        regulariser's hooks: read it, add a penalty's gradient); a non-finite value it returns (named
        ``what``) skips the step like a non-finite loss.
        """
        if not self.guard.check(loss.detach(), "loss"):
            return False
        self.zero_grad()
        loss.backward()
        if before_step is not None:
            extra = before_step()
            if extra is not None and not self.guard.check(extra, what):
                return False
        self.guard.ok()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        return True
