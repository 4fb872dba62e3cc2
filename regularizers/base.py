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

Every hook has a no-op default, so a regulariser implements only the points it needs and no loop
branches on which regulariser it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

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


class Regularizer(QuadraticStore):
    """A quadratic regulariser ``strength/2 * sum Omega (theta - theta*)^2`` with the loop's hooks.

    Subclasses decide how ``Omega`` and ``theta*`` evolve by overriding hooks.
    """

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
