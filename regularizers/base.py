"""The hook points a training loop calls on a regulariser, and the quadratic regulariser base.

A loop that trains a model (one sampled architecture in the search, one task in a sequence)
calls, for the names of the parameter groups the model uses::

    loss.backward()
    reg.after_backward(names)         # .grad holds the task loss's gradient (WPL, SI read it)
    reg.add_penalty_grad_(names)      # or: (loss + reg.penalty(names)).backward()
    optimiser.step()
    reg.after_step(names)             # the weights have moved (SI's path integral)
    ...
    reg.end_task(task)                # importance at the end of a task (EWC, MAS), anchors refreshed
    reg.reset()                       # a scheduled reset (WPL's periodic zeroing)

The search loop (trainer.py) trains one sampled architecture (a "model") at a time on shared
weights and adds the points around it::

    reg.begin_epoch(epoch)            # strength schedules, scheduled resets
    if reg.active(epoch):             # else the epoch trains without the regulariser
        for each sampled architecture, names = the groups it uses:
            for each of its batches:
                reg.begin_batch(last)       # ``last``: the architecture's final batch
                loss.backward(); reg.after_backward(names); reg.add_penalty_grad_(names)
                optimiser.step(); reg.after_step(names)
            reg.end_model(names, held_out)  # e.g. an importance from one validation batch, anchors moved
            reg.stats(names)                # figures for the metrics

Every hook has a no-op default, so a regulariser implements only the points it needs and no loop
branches on which regulariser it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from torch import Tensor, nn

from regularizers.store import QuadraticStore


@dataclass
class TaskData:
    """What an end-of-task importance needs: the model, how to call it for this task, some of its data.

    ``model(inputs, **kwargs)`` gives the logits of the task's head (``kwargs`` picks the head a
    scenario uses); ``batches`` yields ``(inputs, labels)``; labels may be ignored (MAS needs none).
    """

    model: nn.Module
    batches: Iterable[tuple[Tensor, Tensor]]
    kwargs: dict[str, Any] = field(default_factory=dict)


# ``held_out(objective, what)``: zero the gradients and back-propagate ``objective(loss)`` of one
# held-out batch of the model (``loss`` a spaces.base.Loss: its cross-entropy, its whole loss, its
# logits); ``False`` when that value was not finite (nothing back-propagated; counted as a skipped
# update named ``what``).
Objective = Callable[[Any], Tensor]
HeldOut = Callable[[Objective, str], bool]


def fisher_objective(ce_only: bool) -> Objective:
    """What a Fisher reads off a held-out batch: its cross-entropy alone or its whole loss."""
    return (lambda out: out.ce) if ce_only else (lambda out: out.total)


class Regularizer(QuadraticStore):
    """A quadratic regulariser ``strength/2 * sum Omega (theta - theta*)^2`` with the loop's hooks.

    Subclasses decide how ``Omega`` and ``theta*`` evolve by overriding hooks. ``label`` names the
    regulariser in messages and checks (a non-finite "WPL penalty").
    """

    label = "regulariser"

    def __init__(self, groups: Mapping[str, Sequence[nn.Parameter]], strength: float) -> None:
        super().__init__(groups)
        self.strength = strength

    def penalty_scale(self) -> float:
        """Factor in front of ``1/2 sum Omega (theta - theta*)^2``."""
        return self.strength

    def penalty(self, names: Iterable[str]) -> Tensor:
        """Differentiable penalty over ``names`` (use ``add_penalty_grad_`` on hot paths)."""
        return self.quadratic(names, self.penalty_scale())

    def add_penalty_grad_(self, names: Iterable[str]) -> Tensor:
        """Add the penalty's gradient into ``.grad``; return its value (detached)."""
        return self.add_quadratic_grad_(names, self.penalty_scale())

    def after_backward(self, names: Iterable[str]) -> None:
        """``.grad`` holds the gradient of the task loss alone (before any penalty gradient)."""

    def after_step(self, names: Iterable[str]) -> None:
        """The optimiser has just updated the weights."""

    def end_task(self, task: TaskData) -> None:
        """A task (or a model) is finished: fold its importance in and move the anchors."""

    def reset(self) -> None:
        """A scheduled reset: forget every importance."""
        self.zero_importance()

    # ------------------------------------------------------------------ the search loop's hooks
    def begin_epoch(self, epoch: int) -> None:
        """A search epoch starts (0-based): a strength schedule or a scheduled reset acts here."""

    def active(self, epoch: int) -> bool:
        """Whether the penalty and the importance updates take part in ``epoch``'s training."""
        return True

    def begin_batch(self, last: bool) -> None:
        """A batch of the current model is about to be trained; ``last``: it is the model's final one."""

    def end_model(self, names: Sequence[str], held_out: HeldOut) -> None:
        """A model of the search (one sampled architecture on ``names``) finished its batches."""

    def stats(self, names: Iterable[str]) -> dict[str, float]:
        """Figures of the importance of ``names`` after a model: ``importance_norm`` (mean per-tensor
        norm) and ``importance_max`` (largest entry); the loop records them with ``strength``."""
        norm, peak = self.importance_stats(names)
        return {"importance_norm": norm, "importance_max": peak}
