"""Synaptic Intelligence (Zenke, Poole & Ganguli, ICML 2017).

During a task every update's contribution to the loss change is integrated along the path:
``w += -g * delta_theta`` with ``g`` the task loss's gradient before the step (the surrogate of
the paper, without the penalty's gradient). At the end of the task
``Omega += w / ((theta_end - theta_start)^2 + xi)``, ``w`` restarts at zero and the anchor moves to
the task's final weights. The penalty is the paper's ``c * sum Omega (theta - theta*)^2`` (no 1/2).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from regularizers.base import Regularizer, TaskData

# Per-scenario c on split MNIST: protocol -> scenario -> values (modes/continual.py reads them when --si_c is
# not given). The penalty c * sum Omega d^2 and Omega = w / (Delta^2 + xi), xi = 0.1, are those of both codes:
# vandeven2019: GMvandeVen/continual-learning, param_values.py at f0b1461e (si_c per scenario);
# hsu2018: GT-RIPL/Continual-Learning-Benchmark, scripts/split_MNIST_incremental_*.sh at dff5200c (SI --reg_coef).
SCENARIO_STRENGTHS: dict[str, dict[str, dict[str, float]]] = {
    "vandeven2019": {"task": {"strength": 50.0}, "domain": {"strength": 500.0}, "class": {"strength": 0.5}},
    "hsu2018": {"task": {"strength": 300.0}, "domain": {"strength": 3000.0}, "class": {"strength": 600.0}},
}
# Chosen on the validation split (experiments/continual/tune.py, its rule; report results/continual/tune_<protocol>.md),
# read with --cl_strengths=tuned (the default) where a protocol and scenario are here, else the published value above.
TUNED_STRENGTHS: dict[str, dict[str, dict[str, float]]] = {  # domain: 5000, +9.4 [+4.9, +13.8] validation points
    "vandeven2019": {"class": {"strength": 0.5}, "domain": {"strength": 5000.0}, "task": {"strength": 50.0}}}


@torch.no_grad()
def record_gradients(grads: Sequence[Tensor], params: Sequence[Tensor]) -> None:
    """``g`` of the coming step: each parameter's task-loss gradient (zero without one)."""
    for g, p in zip(grads, params):
        g.copy_(p.grad) if p.grad is not None else g.zero_()


@torch.no_grad()
def integrate_step(path: Sequence[Tensor], grads: Sequence[Tensor], previous: Sequence[Tensor],
                   params: Sequence[Tensor]) -> None:
    """One update's share of the path integral, ``w += -g * delta_theta``; ``previous`` moves on."""
    for w, g, prev, p in zip(path, grads, previous, params):
        delta = p.detach() - prev
        w.addcmul_(g, delta, value=-1.0)
        prev.copy_(p.detach())


@torch.no_grad()
def path_importance(path: Sequence[Tensor], start: Sequence[Tensor], params: Sequence[Tensor],
                    xi: float) -> list[Tensor]:
    """``w / ((theta - theta_start)^2 + xi)``: the path integral normalised by the total move."""
    return [w / ((p.detach() - s).square() + xi) for w, s, p in zip(path, start, params)]


class SI(Regularizer):
    def __init__(self, groups: Mapping[str, Sequence[nn.Parameter]], strength: float, *, xi: float = 0.1) -> None:
        super().__init__(groups, strength)
        self.xi = xi
        zeros = lambda: {k: [torch.zeros_like(f) for f in v] for k, v in self.importance.items()}
        self.path = zeros()  # w: the running path integral of this task
        self.grad = zeros()  # g of the current step
        self.previous = {k: [p.detach().clone() for p in v] for k, v in self.params.items()}  # theta before the step

    def penalty_scale(self) -> float:
        return 2.0 * self.strength

    def _tables(self, names: Iterable[str], table: Mapping[str, Sequence[Tensor]]) -> list[Tensor]:
        return [t for name in dict.fromkeys(names) for t in table[name]]

    def after_backward(self, names: Iterable[str]) -> None:
        names = list(names)
        record_gradients(self._tables(names, self.grad), self._tables(names, self.params))

    def after_step(self, names: Iterable[str]) -> None:
        names = list(names)
        integrate_step(self._tables(names, self.path), self._tables(names, self.grad),
                       self._tables(names, self.previous), self._tables(names, self.params))

    @torch.no_grad()
    def end_task(self, task: TaskData) -> None:
        # The anchor still holds the weights at the task's start.
        new = path_importance(self.flat(self.path), self.flat(self.anchor), self.flat(self.params), self.xi)
        torch._foreach_add_(self.flat(self.importance), new)
        torch._foreach_zero_(self.flat(self.path))
        self.refresh_anchors()
        torch._foreach_copy_(self.flat(self.previous), [p.detach() for p in self.flat(self.params)])

    def tables(self) -> dict[str, dict[str, list[Tensor]]]:
        return {**super().tables(), "path": self.path, "previous": self.previous}
