"""Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017) and online EWC (Schwarz et al., ICML 2018).

At the end of task ``t`` a diagonal Fisher ``F_t`` is estimated from per-sample gradients of the
log-likelihood: with the data's labels (``fisher="empirical"``), with labels drawn from the
model's predictive distribution (``fisher="true"``, the Fisher information proper) or with the model's
predicted class (``fisher="predicted"``, what van de Ven & Tolias's and Hsu et al.'s code use).

* ``ewc`` with ``per_task=True`` penalises ``lambda/2 * sum_t sum_i F_t,i (theta_i - theta*_t,i)^2``,
  one term per past task. The sum is kept as one quadratic: with ``F = sum_t F_t`` and
  ``theta_bar = sum_t F_t theta*_t / F`` it equals ``lambda/2 * sum_i F_i (theta_i - theta_bar_i)^2``
  plus a constant, so gradients are exact and memory does not grow with the number of tasks (the
  constant is kept too, so the value is exact). ``per_task=False`` merges: ``F = sum_t F_t``
  anchored at the latest weights.
* ``online_ewc``: one running Fisher ``F <- gamma F + F_t`` anchored at the latest weights.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from regularizers.base import Regularizer, TaskData
from regularizers.importance import log_likelihood, mean_per_sample

FISHERS = ("empirical", "true", "predicted")
FISHER_LABELS = {"empirical": "data", "true": "sampled", "predicted": "predicted"}  # importance.mean_per_sample's

# Per-scenario strengths on split MNIST: protocol -> scenario -> values (modes/continual.py reads them when
# --ewc_lambda / --online_ewc_lambda / --online_ewc_gamma are not given). The penalty here is lambda/2 sum F d^2.
# vandeven2019: the values of van de Ven & Tolias's code for the paper (GMvandeVen/continual-learning,
#   param_values.py at f0b1461e: ewc_lambda, o_lambda, gamma per scenario), whose EWC penalty is also
#   lambda * 1/2 sum F d^2 with a Fisher of mean squared per-sample gradients: taken as they are.
# hsu2018: Hsu et al.'s scripts (GT-RIPL/Continual-Learning-Benchmark, scripts/split_MNIST_incremental_*.sh at
#   dff5200c, --reg_coef of EWC_mnist / EWC_online_mnist); their penalty is reg_coef * sum F d^2 (no 1/2),
#   so lambda = 2 * reg_coef; their online EWC adds Fishers without decay (gamma 1).
SCENARIO_STRENGTHS: dict[str, dict[str, dict[str, float]]] = {
    "vandeven2019": {"task": {"strength": 1e7}, "domain": {"strength": 1e6}, "class": {"strength": 1e8}},
    "hsu2018": {"task": {"strength": 200.0}, "domain": {"strength": 200.0}, "class": {"strength": 1200.0}},
}
ONLINE_SCENARIO_STRENGTHS: dict[str, dict[str, dict[str, float]]] = {
    "vandeven2019": {"task": {"strength": 1e8, "gamma": 0.8}, "domain": {"strength": 1e8, "gamma": 0.7},
                     "class": {"strength": 1e9, "gamma": 0.8}},
    "hsu2018": {"task": {"strength": 800.0, "gamma": 1.0}, "domain": {"strength": 1400.0, "gamma": 1.0},
                "class": {"strength": 200.0, "gamma": 1.0}},
}
# Chosen on the validation split (experiments/continual/tune.py, its rule; report results/continual/tune_<protocol>.md),
# read with --cl_strengths=tuned (the default) where a protocol and scenario are here, else the published value above.
TUNED_STRENGTHS: dict[str, dict[str, dict[str, float]]] = {  # every scenario at the paper's: no measured gain
    "vandeven2019": {"class": {"strength": 1e8}, "domain": {"strength": 1e6}, "task": {"strength": 1e7}}}
ONLINE_TUNED_STRENGTHS: dict[str, dict[str, dict[str, float]]] = {  # lambda and gamma, each swept with the other the paper's
    "vandeven2019": {"class": {"strength": 1e9, "gamma": 0.8}, "domain": {"strength": 1e8, "gamma": 0.7},
                     "task": {"strength": 1e8, "gamma": 0.8}}}


class EWC(Regularizer):
    def __init__(self, groups: Mapping[str, Sequence[nn.Parameter]], strength: float, *, fisher: str = "empirical",
                 per_task: bool = True, gamma: float = 1.0, samples: int = 1000, seed: int = 0) -> None:
        if fisher not in FISHERS:
            raise ValueError(f"EWC fisher must be one of {FISHERS}, got {fisher!r}")
        super().__init__(groups, strength)
        self.fisher_kind, self.per_task, self.gamma, self.samples, self.seed = fisher, per_task, gamma, samples, seed
        # per task: sum_t F_t theta*_t (to re-centre the anchor) and sum_t F_t theta*_t^2 (the constant)
        self.moment = {k: [torch.zeros_like(f) for f in v] for k, v in self.importance.items()}
        self.offset = {k: [torch.zeros((), device=f.device) for f in v] for k, v in self.importance.items()}
        self.tasks_seen = 0

    def task_fisher(self, task: TaskData) -> list[Tensor]:
        params = self.flat(self.params)
        return mean_per_sample(task, params, log_likelihood, "square", self.samples,
                               labels=FISHER_LABELS[self.fisher_kind], seed=self.seed + self.tasks_seen)

    @torch.no_grad()
    def end_task(self, task: TaskData) -> None:
        new = self.task_fisher(task)
        importance, anchor, params = self.flat(self.importance), self.flat(self.anchor), self.flat(self.params)
        if self.per_task:
            for f, m, c, a, p, n in zip(importance, self.flat(self.moment), self.flat(self.offset), anchor, params, new):
                theta = p.detach()
                f += n
                m += n * theta
                c += (n * theta.square()).sum()
                a.copy_(torch.where(f > 0, m / f.clamp(min=1e-30), theta))
        else:
            torch._foreach_mul_(importance, self.gamma)
            torch._foreach_add_(importance, new)
            self.refresh_anchors()
        self.tasks_seen += 1

    def constant(self, names: Iterable[str]) -> Tensor:
        """``lambda/2 * sum (sum_t F_t theta*_t^2 - F theta_bar^2)``: what the one quadratic leaves out."""
        if not self.per_task:
            return torch.zeros(())
        names = list(dict.fromkeys(names))
        # It changes only with the tables (at the end of a task, on a load): cached on their version
        # counters, it costs nothing per step instead of two passes over every importance and anchor.
        tensors = [t for name in names for table in (self.offset, self.importance, self.anchor) for t in table[name]]
        key = (tuple(names), self.strength, tuple((id(t), t._version) for t in tensors))
        cached = getattr(self, "_constant", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        terms = [c - (f * a.square()).sum() for name in names
                 for c, f, a in zip(self.offset[name], self.importance[name], self.anchor[name])]
        value = 0.5 * self.strength * torch.stack(terms).sum() if terms else torch.zeros(())
        self._constant = (key, value)
        return value

    def penalty(self, names: Iterable[str]) -> Tensor:
        names = list(names)
        return super().penalty(names) + self.constant(names)

    def add_penalty_grad_(self, names: Iterable[str]) -> Tensor:
        names = list(names)
        return super().add_penalty_grad_(names) + self.constant(names)

    def tables(self) -> dict[str, dict[str, list[Tensor]]]:
        return {**super().tables(), "moment": self.moment, "offset": self.offset}

    def state_dict(self) -> dict[str, Tensor]:
        return {**super().state_dict(), "tasks_seen": torch.tensor(self.tasks_seen)}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        state = dict(state)
        self.tasks_seen = int(state.pop("tasks_seen"))
        super().load_state_dict(state)


def online_ewc(groups: Mapping[str, Sequence[nn.Parameter]], strength: float, *, gamma: float = 1.0,
               fisher: str = "empirical", samples: int = 1000, seed: int = 0) -> EWC:
    """Online EWC (Schwarz et al. 2018): ``F <- gamma F + F_t``, anchored at the latest task's weights."""
    return EWC(groups, strength, fisher=fisher, per_task=False, gamma=gamma, samples=samples, seed=seed)
