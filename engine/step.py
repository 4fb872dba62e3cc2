"""The one optimiser update every training loop of the project makes.

Search (a sampled architecture on the shared weights), retraining (one fixed architecture) and the
experiments all do the same thing per batch: forward under optional bfloat16 autocast, refuse a
non-finite loss, back-propagate, let a regulariser read and extend the gradient, clip, step. Doing it
in one place means one fix reaches every loop, data-parallel training included: with several ranks
the gradient is averaged over them right after the backward pass (``distributed.comm``), so the
regulariser, the clip and the optimiser all see the whole global batch's gradient on every rank.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from distributed import comm
from distributed.context import world
from engine.guard import NonFiniteGuard

if TYPE_CHECKING:  # the engine knows the hooks' interface only; regularizers never import the engine
    from regularizers.base import Regularizer


class Step:
    """``update(loss)`` performs one guarded step of ``optimizer`` over ``params``.

    ``amp`` turns on bfloat16 autocast in :meth:`autocast` (use it around the forward and loss);
    ``grad_clip > 0`` clips the global gradient norm of ``params``; ``buffers`` (the model's running
    statistics) are kept identical across data-parallel ranks. ``replicated``: every rank computes the
    same loss from the same state (the REINFORCE controller's), so its gradient is not averaged.
    ``loss_name`` names a skipped loss in the guard's warning.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter], grad_clip: float,
                 guard: NonFiniteGuard, amp: bool = False, buffers: Iterable[Tensor] = (), replicated: bool = False,
                 loss_name: str = "loss") -> None:
        self.optimizer, self.grad_clip, self.guard, self.amp = optimizer, grad_clip, guard, amp
        self.params = list(params)
        self.buffers = [b for b in buffers if b.is_floating_point()]  # running statistics, averaged with the gradients
        self.device_type = self.params[0].device.type if self.params else "cpu"
        self.data_parallel = world().active and not replicated
        self.loss_name = loss_name

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

    def backward(self, loss: Tensor, what: str = "loss") -> bool:
        """``.grad`` := the gradient of ``loss`` (averaged over the ranks); ``False`` when the loss is
        not finite (data-parallel: on any rank, so that every rank skips the same steps).

        A single process checks before back-propagating (a skipped step costs no backward); several
        ranks back-propagate first and check the mean loss that travelled with the gradients.
        """
        if not self.data_parallel:
            if not self.guard.check(loss.detach(), what):
                return False
            self.zero_grad()
            loss.backward()
            return True
        self.zero_grad()
        loss.backward()
        return self.guard.check(comm.average_gradients(self.params, loss.detach(), self.buffers), what)

    def update(self, loss: Tensor, before_step: Callable[[], Tensor | None] | None = None, what: str = "penalty") -> bool:
        """Back-propagate ``loss`` and step; ``False`` (nothing changed) when the step was skipped.

        ``before_step`` runs after the backward pass with ``.grad`` holding the loss's gradient (a
        regulariser's hooks: read it, add a penalty's gradient); a non-finite value it returns (named
        ``what``) skips the step like a non-finite loss.
        """
        if not self.backward(loss, self.loss_name):
            return False
        if before_step is not None:
            extra = before_step()
            if extra is not None and not self.guard.check(extra, what):
                return False
        self._clip_and_step()
        return True

    def _clip_and_step(self) -> None:
        self.guard.ok()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()

    def step_scaled(self, loss: Tensor, scale: float) -> bool:
        """Step with ``.grad`` already holding the gradient of ``loss / scale``, back-propagated before
        ``scale`` was known (the REINFORCE controller's log-probabilities, while the device computed the
        reward): ``.grad *= scale``, then as ``update`` (finite check of ``loss``, clip, step)."""
        if self.data_parallel:
            raise RuntimeError("step_scaled: a data-parallel gradient is averaged in its backward pass")
        if not self.guard.check(loss.detach(), self.loss_name):
            return False
        torch._foreach_mul_([p.grad for p in self.params if p.grad is not None], scale)
        self._clip_and_step()
        return True

    def update_regularised(self, loss: Tensor, reg: Regularizer | None, names: Sequence[str]) -> tuple[bool, Tensor | None]:
        """:meth:`update` with a regulariser's per-update hooks, the one place the loops call them: after the
        backward pass ``after_backward`` reads the loss's gradient and ``add_penalty_grad_`` adds the penalty's
        (a non-finite penalty skips the step), after the step ``after_step``. Returns whether the step was
        taken and the penalty added (``None`` without a regulariser)."""
        if reg is None:
            return self.update(loss), None
        penalty: Tensor | None = None

        def hooks() -> Tensor:
            nonlocal penalty
            reg.after_backward(names)
            penalty = reg.add_penalty_grad_(names)
            return penalty

        if not self.update(loss, hooks, f"{reg.label} penalty"):
            return False, penalty
        reg.after_step(names)
        return True, penalty
