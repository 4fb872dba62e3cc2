"""The search's importance measures (``--wpl_importance``): the paper's Fisher, MAS or SI, one WPL otherwise.

Each is a :class:`~regularizers.wpl_search.SearchWPL` that differs only in the estimate it folds into
the stored importance after each sampled architecture; everything else is WPL's: only the shared
groups the space declares (``wpl_groups``) are penalised, the anchors move to the current weights
after every architecture, the estimate enters through the same moving average (``--lambda_fisher``,
``--momentum``), per-tensor clip (``--fisher_clip_by_norm``) and ``--wpl_alpha_mode`` arithmetic, and
the strength schedule, start epoch and periodic reset apply unchanged.

* ``fisher`` -- the paper's: ``g^2`` of one validation batch (or of the last training batch).
* ``mas`` -- Aljundi et al. 2018, unsupervised: ``|d mean_n ||f(x_n)||^2 / d theta|`` on one validation
  batch's outputs (eval mode), the gradient of the batch mean (like the search's Fisher, which squares
  a batch gradient), not the mean of per-sample absolute gradients that the task-sequence MAS takes.
* ``l2`` -- the control: the Fisher flattened to its mean over each tensor (:class:`SearchL2`).
* ``si`` -- Zenke et al. 2017: ``w += -g * delta_theta`` over the architecture's training batches
  (``g`` the task loss's gradient before the penalty's), normalised at the anchor refresh into
  ``w / ((theta - theta*)^2 + xi)`` (``theta*`` the anchor: the weights before the architecture trained).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from regularizers import SEARCH_IMPORTANCES
from regularizers.base import HeldOut
from regularizers.importance import mean_squared_output_norm
from regularizers.si import integrate_step, path_importance, record_gradients
from regularizers.wpl_search import SearchWPL, WPLSearchConfig


class _ModelImportance(SearchWPL):
    """A SearchWPL whose importance comes only from ``estimate`` at the end of each architecture."""

    def _fisher_from_train(self, before_penalty: bool) -> bool:
        return False

    def estimate(self, names: Sequence[str], held_out: HeldOut) -> list[Tensor] | None:
        """The new importance of ``names``' parameters (in order), or ``None`` when there is none."""
        raise NotImplementedError

    def end_model(self, names: Sequence[str], held_out: HeldOut) -> None:
        names = list(dict.fromkeys(names))
        values = self.estimate(names, held_out)
        if values is not None:
            self.fold_importance(names, values)
        self.refresh_anchors()


def _mas_objective(out: object) -> Tensor:
    logits = getattr(out, "logits", None)
    if logits is None:
        raise ValueError("--wpl_importance=mas needs a search space whose validation loss carries its logits")
    return mean_squared_output_norm(logits)


class SearchMAS(_ModelImportance):
    label = "WPL (MAS)"

    @torch.no_grad()
    def _abs_grads(self, names: Sequence[str]) -> list[Tensor]:
        params, _, _ = self.gather(names)
        return [p.grad.abs() if p.grad is not None else torch.zeros_like(p) for p in params]

    def estimate(self, names: Sequence[str], held_out: HeldOut) -> list[Tensor] | None:
        if not held_out(_mas_objective, "MAS output norm"):
            return None
        return self._abs_grads(names)


class SearchSI(_ModelImportance):
    label = "WPL (SI)"

    def __init__(self, groups: Mapping[str, Sequence[nn.Parameter]], cfg: WPLSearchConfig) -> None:
        super().__init__(groups, cfg)
        zeros = lambda: {k: [torch.zeros_like(f) for f in v] for k, v in self.fisher.items()}
        self.path = zeros()  # w since the last anchor refresh (saved: a checkpoint resumes it)
        self.grad = zeros()  # g of the current step
        self.previous = zeros()  # theta before the current step

    def _tables(self, names: Iterable[str], table: Mapping[str, Sequence[Tensor]]) -> list[Tensor]:
        return [t for name in dict.fromkeys(names) for t in table[name]]

    @torch.no_grad()
    def after_backward(self, names: Iterable[str]) -> None:
        names = list(names)
        params = self._tables(names, self.params)
        record_gradients(self._tables(names, self.grad), params)
        # theta before this step: groups an architecture did not use may have moved since (momentum).
        torch._foreach_copy_(self._tables(names, self.previous), [p.detach() for p in params])

    def after_step(self, names: Iterable[str]) -> None:
        names = list(names)
        integrate_step(self._tables(names, self.path), self._tables(names, self.grad),
                       self._tables(names, self.previous), self._tables(names, self.params))

    @torch.no_grad()
    def estimate(self, names: Sequence[str], held_out: HeldOut) -> list[Tensor] | None:
        path = self._tables(names, self.path)
        values = path_importance(path, self._tables(names, self.anchor), self._tables(names, self.params),
                                 self.cfg.si_xi)
        torch._foreach_zero_(path)
        return values

    def tables(self) -> dict[str, dict[str, list[Tensor]]]:
        return {**super().tables(), "path": self.path}


class SearchL2(SearchWPL):
    """The control for "just a weaker step": an L2 pull to the anchor, matched in strength to the Fisher.

    Everything is the paper's Fisher WPL (same batch, same moving average, clip and alpha) except that
    each tensor's ``g^2`` is replaced by its mean over the tensor before it is folded in: the penalty is
    as strong on average, but no longer says *which* weights mattered. A gain of WPL over this control
    is the importance's, not the slower movement's (the ranking benchmark, docs/results.md)."""

    label = "L2 (Fisher-matched)"

    @torch.no_grad()
    def update_fisher(self, names: Iterable[str], alpha: float | None = None) -> None:
        names = list(dict.fromkeys(names))
        params, _, _ = self.gather(names)
        values = [p.grad.pow(2).mean().expand_as(p) if p.grad is not None else torch.zeros_like(p) for p in params]
        self.fold_importance(names, values, alpha)



def build_search_regularizer(groups: Mapping[str, Sequence[nn.Parameter]], cfg: WPLSearchConfig,
                             options: Any = None) -> SearchWPL:
    """The search's regulariser for ``cfg.wpl_importance``. One with options of its own has, as a sampler, a
    ``Config`` (a dataclass named as its options), filled from ``options`` (the namespace) and passed third."""
    if cfg.wpl_importance not in SEARCH_IMPORTANCES:
        raise ValueError(f"unknown WPL importance {cfg.wpl_importance!r}; known: {', '.join(SEARCH_IMPORTANCES)}")
    built = SEARCH_IMPORTANCES[cfg.wpl_importance]
    own = getattr(built, "Config", None)
    if own is None:
        return built(groups, cfg)
    if options is None:
        raise ValueError(f"--wpl_importance={cfg.wpl_importance} reads options of its own: build it from the options")
    return built(groups, cfg, own(**{f.name: getattr(options, f.name) for f in dataclasses.fields(own)}))
