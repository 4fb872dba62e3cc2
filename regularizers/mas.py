"""Memory Aware Synapses (Aljundi et al., ECCV 2018) and the uniform-importance L2 baseline.

MAS needs no labels: ``Omega`` is the mean over samples of ``|d ||f(x)||_2^2 / d theta|`` with ``f``
the logits of the task's head, accumulated over tasks (``Omega <- Omega + Omega_t``) and anchored
at the latest task's weights. The penalty is the paper's ``lambda * sum Omega (theta - theta*)^2``.
L2 is the same quadratic with ``Omega = 1``: ``lambda/2 * ||theta - theta*||^2``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from regularizers.base import Regularizer, TaskData
from regularizers.importance import mean_per_sample, squared_output_norm

# Per-scenario strengths on split MNIST: protocol -> scenario -> values (modes/continual.py reads them when
# --mas_lambda / --l2_lambda are not given). van de Ven & Tolias (2019) run neither MAS nor L2, so both rows
# hold Hsu et al.'s values (GT-RIPL/Continual-Learning-Benchmark, scripts/split_MNIST_incremental_*.sh at
# dff5200c, --reg_coef), untuned for the other protocol. Their L2 penalty has no 1/2 (lambda = 2 * reg_coef);
# their MAS importance is the batch gradient of the mean (not the per-sample sum) of squared outputs, another
# scale, so MAS's reg_coef is taken as it is and is not an equivalent strength here.
SCENARIO_STRENGTHS: dict[str, dict[str, dict[str, float]]] = {
    protocol: {"task": {"strength": 1.0}, "domain": {"strength": 1e4}, "class": {"strength": 1.0}}
    for protocol in ("vandeven2019", "hsu2018")
}
# Chosen on the validation split (experiments/continual/tune.py, its rule; report results/continual/tune_<protocol>.md),
# read with --cl_strengths=tuned (the default) where a protocol and scenario are here, else the published value above.
TUNED_STRENGTHS: dict[str, dict[str, dict[str, float]]] = {  # every scenario at the paper's: no measured gain
    "vandeven2019": {"class": {"strength": 1.0}, "domain": {"strength": 1e4}, "task": {"strength": 1.0}}}
L2_SCENARIO_STRENGTHS: dict[str, dict[str, dict[str, float]]] = {
    protocol: {"task": {"strength": 0.02}, "domain": {"strength": 1.0}, "class": {"strength": 200.0}}
    for protocol in ("vandeven2019", "hsu2018")
}
L2_TUNED_STRENGTHS: dict[str, dict[str, dict[str, float]]] = {  # the same
    "vandeven2019": {"class": {"strength": 200.0}, "domain": {"strength": 1.0}, "task": {"strength": 0.02}}}


class MAS(Regularizer):
    def __init__(self, groups: Mapping[str, Sequence[nn.Parameter]], strength: float, *, samples: int = 1000) -> None:
        super().__init__(groups, strength)
        self.samples = samples

    def penalty_scale(self) -> float:
        return 2.0 * self.strength

    @torch.no_grad()
    def end_task(self, task: TaskData) -> None:
        new = mean_per_sample(task, self.flat(self.params), squared_output_norm, "abs", self.samples)
        torch._foreach_add_(self.flat(self.importance), new)
        self.refresh_anchors()


class L2(Regularizer):
    def __init__(self, groups: Mapping[str, Sequence[nn.Parameter]], strength: float) -> None:
        super().__init__(groups, strength)

    @torch.no_grad()
    def end_task(self, task: TaskData) -> None:
        for omega in self.flat(self.importance):
            omega.fill_(1.0)
        self.refresh_anchors()

    def reset(self) -> None:
        """Uniform importance has nothing to forget."""
