"""Weight Plasticity Loss (Benyahia, Yu et al., ICML 2019) on the shared quadratic store.

WPL protects shared weights that mattered to previously trained models. Its importance is a
diagonal Fisher ``F`` built online from squared mini-batch gradients, its anchor ``theta*`` the
weights after the last model (or task) trained, and it penalises

    (s / 2) * sum_i F_i * (theta_i - theta*_i)^2

for the groups a model uses. Two arithmetics exist (``mode``):

* ``"loss"`` -- the textbook form: ``F`` is a clipped moving average of ``g^2`` and ``s = alpha``.
* ``"compound"`` -- the arithmetic of the code behind the paper's figures: after the same moving
  average and clip, the *stored* Fisher is multiplied by ``alpha`` on every update and ``s = 1``.
  With ``(1 - lambda) * alpha > 1`` the stored Fisher therefore grows geometrically until the clip
  holds it at norm ``clip * alpha``.

``consolidate`` says when the Fisher being built becomes the one penalised: ``"step"`` (the
search, as in the paper: one table, updated after every backward pass) or ``"task"`` (a task
sequence: the Fisher is built in a running table during a task and replaces the penalised one at
``end_task``, so a task's own gradients never weight the pull back to the previous anchor).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from regularizers.base import Regularizer, TaskData

# Per-scenario alpha in a task sequence (modes/continual.py reads it when --wpl_alpha is not given): neither
# published protocol runs WPL, and alpha has not been tuned on either; 1e5 is the project's earlier default.
SCENARIO_STRENGTHS: dict[str, dict[str, dict[str, float]]] = {
    protocol: {scenario: {"strength": 1e5} for scenario in ("task", "domain", "class")}
    for protocol in ("vandeven2019", "hsu2018")
}
# Chosen on the validation split (experiments/continual/tune.py, its rule; report results/continual/tune_<protocol>.md),
# read with --cl_strengths=tuned (the default) where a protocol and scenario are here, else the published value above.
TUNED_STRENGTHS: dict[str, dict[str, dict[str, float]]] = {  # no alpha in 1e3-1e7 (1e3-1e11 in task, domain) beats 1e5
    "vandeven2019": {"class": {"strength": 1e5}, "domain": {"strength": 1e5}, "task": {"strength": 1e5}}}

Mode = Literal["compound", "loss"]
MODES: tuple[str, ...] = ("compound", "loss")
CONSOLIDATE: tuple[str, ...] = ("step", "task")


def alpha_schedule(epoch: int, alpha: float, decay: float, decay_after: float, decay_mode: int, floor: float) -> float:
    """WPL strength for ``epoch`` (0-based).

    ``k = max(0, floor(epoch - decay_after + 1))`` decay steps have happened; mode 1 is linear
    (``alpha - decay * k``), mode 2 geometric (``alpha * decay ** k``). Once decay has started the
    value never drops below ``floor``.
    """
    k = max(0, math.floor(epoch - decay_after + 1))
    if k == 0:
        return alpha
    if decay_mode == 1:
        value = alpha - decay * k
    elif decay_mode == 2:
        value = alpha * decay**k
    else:
        raise ValueError(f"alpha_decay_mode must be 1 (linear) or 2 (geometric), got {decay_mode}")
    return max(value, floor)


class WPL(Regularizer):
    """Fisher and anchor state for named parameter groups, with the WPL penalty.

    Life cycle in a search: ``penalty``/``add_penalty_grad_`` while a sampled architecture trains,
    ``update_fisher`` from that architecture's gradients after its step, ``refresh_anchors`` after
    every step, ``reset`` at scheduled epochs. Methods that take ``alpha`` use ``self.strength``
    when it is not given (the regulariser hooks).
    """

    importance_key = "fisher"  # checkpoint keys fisher/<group>/<i>, as before the store existed

    def __init__(
        self,
        groups: Mapping[str, Sequence[nn.Parameter]],
        *,
        lambda_fisher: float = 0.9,
        clip_by_norm: float = 0.0,
        momentum: bool = True,
        mode: Mode = "compound",
        alpha: float = 1.0,
        consolidate: str = "step",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"WPL mode must be one of {MODES}, got {mode!r}")
        if consolidate not in CONSOLIDATE:
            raise ValueError(f"WPL consolidate must be one of {CONSOLIDATE}, got {consolidate!r}")
        if not groups:
            raise ValueError("WPL needs at least one parameter group")
        super().__init__(groups, alpha)
        self.lambda_fisher = lambda_fisher
        self.clip_by_norm = clip_by_norm
        self.momentum = momentum
        self.mode: Mode = mode
        self.consolidate = consolidate
        self.fisher = self.importance
        self.running = ({k: [torch.zeros_like(f) for f in v] for k, v in self.fisher.items()}
                        if consolidate == "task" else self.fisher)

    def _alpha(self, alpha: float | None) -> float:
        return self.strength if alpha is None else alpha

    def penalty_scale(self, alpha: float | None = None) -> float:  # type: ignore[override]
        """Factor in front of ``1/2 sum F (theta - theta*)^2``: alpha in loss mode, 1 in compound mode."""
        return self._alpha(alpha) if self.mode == "loss" else 1.0

    def penalty(self, names: Iterable[str], alpha: float | None = None) -> Tensor:  # type: ignore[override]
        """Differentiable penalty for ``names`` (use ``add_penalty_grad_`` on hot paths)."""
        return self.quadratic(names, self.penalty_scale(alpha))

    def add_penalty_grad_(self, names: Iterable[str], alpha: float | None = None) -> Tensor:  # type: ignore[override]
        """Add the penalty's gradient ``s * F * (theta - theta*)`` into ``.grad``; return its value."""
        return self.add_quadratic_grad_(names, self.penalty_scale(alpha))

    @torch.no_grad()
    def update_fisher(self, names: Iterable[str], alpha: float | None = None) -> None:
        """Fold the current ``.grad`` of the groups ``names`` into the Fisher being built.

        ``F <- (1 - lambda) F + lambda g^2`` (momentum) or ``F <- F + lambda g^2``; each tensor whose
        norm exceeds ``clip_by_norm`` (when > 0) is rescaled to that norm; in compound mode the
        result is then multiplied by ``alpha``. A parameter without a gradient counts as ``g = 0``.
        """
        names = list(dict.fromkeys(names))
        params, _, _ = self.gather(names)
        fisher = [f for name in names for f in self.running[name]]
        if not params:
            return
        if self.momentum:
            torch._foreach_mul_(fisher, 1.0 - self.lambda_fisher)
        with_grad = [(f, p.grad) for f, p in zip(fisher, params) if p.grad is not None]  # g = 0 adds nothing
        if with_grad:
            torch._foreach_addcmul_([f for f, _ in with_grad], [g for _, g in with_grad], [g for _, g in with_grad],
                                    value=self.lambda_fisher)
        self._clip_and_scale(fisher, alpha)

    @torch.no_grad()
    def fold_importance(self, names: Iterable[str], values: Sequence[Tensor], alpha: float | None = None) -> None:
        """``update_fisher`` with another importance estimate ``values`` (one tensor per parameter of
        ``names``, in order) in place of ``g^2``: ``F <- (1 - lambda) F + lambda v`` (or ``F + lambda v``),
        then the same clip and compound ``alpha``."""
        names = list(dict.fromkeys(names))
        fisher = [f for name in names for f in self.running[name]]
        if len(values) != len(fisher):
            raise ValueError(f"fold_importance needs {len(fisher)} tensors, got {len(values)}")
        if not fisher:
            return
        if self.momentum:
            torch._foreach_mul_(fisher, 1.0 - self.lambda_fisher)
        torch._foreach_add_(fisher, list(values), alpha=self.lambda_fisher)
        self._clip_and_scale(fisher, alpha)

    def _clip_and_scale(self, fisher: list[Tensor], alpha: float | None) -> None:
        factor = self._alpha(alpha) if self.mode == "compound" else 1.0
        if self.clip_by_norm > 0:
            # Per-tensor clip, then (compound) alpha: one multiplication by clip_scale * alpha per tensor.
            norms = torch.stack(torch._foreach_norm(fisher))
            scales = (self.clip_by_norm / norms).clamp(max=1.0) * factor  # norm 0 gives inf, clamped to 1
            torch._foreach_mul_(fisher, list(scales.unbind()))
        elif factor != 1.0:
            torch._foreach_mul_(fisher, factor)

    @torch.no_grad()
    def reset(self) -> None:
        """Zero every Fisher tensor (the paper's periodic reset)."""
        self.zero_importance()
        if self.running is not self.fisher:
            torch._foreach_zero_(self.flat(self.running))

    def fisher_stats(self, names: Iterable[str]) -> tuple[float, float]:
        """Mean per-tensor norm and largest entry of the stored Fisher of ``names``."""
        return self.importance_stats(names)

    # ------------------------------------------------------------------------ regulariser hooks
    def after_backward(self, names: Iterable[str]) -> None:
        self.update_fisher(names)

    @torch.no_grad()
    def end_task(self, task: TaskData) -> None:
        """The running Fisher becomes the penalised one (``consolidate="task"``); anchors move here."""
        if self.running is not self.fisher:
            torch._foreach_copy_(self.flat(self.fisher), self.flat(self.running))
        self.refresh_anchors()

    def tables(self) -> dict[str, dict[str, list[Tensor]]]:
        tables = super().tables()
        if self.running is not self.fisher:
            tables["running"] = self.running
        return tables


def for_tasks(groups: Mapping[str, Sequence[nn.Parameter]], strength: float, **options: Any) -> WPL:
    """WPL on a task sequence, with its strength as ``alpha`` (the search builds its own, :mod:`wpl_search`)."""
    return WPL(groups, alpha=strength, **options)
