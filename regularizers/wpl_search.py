"""WPL as the paper's search uses it: the hooks of the search loop on top of :class:`~regularizers.wpl.WPL`.

* strength: ``alpha`` follows :func:`~regularizers.wpl.alpha_schedule` over the search's epochs;
* start: the penalty and the Fisher updates take part from epoch ``start_using_fisher`` on;
* reset: every Fisher tensor is zeroed at each epoch divisible by ``set_fisher_zero_per_iter`` (> 0);
* Fisher source: after each sampled architecture, the gradient of one validation batch
  (``shared_valid_fisher``, the paper's choice), or else the gradient of its last training batch;
  either of the cross-entropy alone (``shared_ce_fisher``) or of the loss with the penalty's gradient;
* anchors: refreshed to the current weights after each sampled architecture. Between two refreshes
  only the architecture being trained moves its groups, so the other groups' anchors *are* their
  weights: the anchors are lazy (``QuadraticStore.lazy_anchors``), copied out for the groups of the
  architecture before its first step. At the paper's size that holds 11 edges' anchors instead of
  66 (88 MiB instead of 504 MiB); the values are the same (tests/test_wpl.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from torch import Tensor, nn

from regularizers.base import HeldOut, fisher_objective
from regularizers.wpl import WPL, alpha_schedule


@dataclass(frozen=True)
class WPLSearchConfig:
    """The search's WPL options (field names are the command line's)."""

    alpha_fisher: float
    alpha_decay: float
    alpha_decay_after: float
    alpha_decay_mode: int
    alpha_small_scale: float
    start_using_fisher: int
    set_fisher_zero_per_iter: int
    shared_valid_fisher: bool
    shared_ce_fisher: bool
    lambda_fisher: float
    fisher_clip_by_norm: float
    momentum: bool
    wpl_alpha_mode: str
    wpl_importance: str = "fisher"  # regularizers/search_importance.py: fisher (the paper's), mas, si
    si_xi: float = 0.1  # SI's damping (--wpl_importance=si)


def scheduled_alpha(cfg: WPLSearchConfig, epoch: int) -> float:
    """WPL's strength in search epoch ``epoch``."""
    return alpha_schedule(epoch, cfg.alpha_fisher, cfg.alpha_decay, cfg.alpha_decay_after, cfg.alpha_decay_mode,
                          cfg.alpha_small_scale)


class SearchWPL(WPL):
    label = "WPL"
    lazy_anchors = True  # every step of the search goes through add_penalty_grad_ first (see above)

    def __init__(self, groups: Mapping[str, Sequence[nn.Parameter]], cfg: WPLSearchConfig) -> None:
        super().__init__(groups, lambda_fisher=cfg.lambda_fisher, clip_by_norm=cfg.fisher_clip_by_norm,
                         momentum=cfg.momentum, mode=cfg.wpl_alpha_mode, alpha=cfg.alpha_fisher)  # type: ignore[arg-type]
        self.cfg = cfg
        self.last = False  # the batch being trained is its architecture's last

    def begin_epoch(self, epoch: int) -> None:
        self.strength = scheduled_alpha(self.cfg, epoch)
        every = self.cfg.set_fisher_zero_per_iter
        if every > 0 and epoch % every == 0:
            self.reset()

    def active(self, epoch: int) -> bool:
        return epoch >= self.cfg.start_using_fisher

    def begin_batch(self, last: bool) -> None:
        self.last = last

    def _fisher_from_train(self, before_penalty: bool) -> bool:
        c = self.cfg
        return self.last and not c.shared_valid_fisher and c.shared_ce_fisher == before_penalty

    def after_backward(self, names: Iterable[str]) -> None:
        names = list(names)
        self.hold_anchors(names)
        if self._fisher_from_train(before_penalty=True):
            self.update_fisher(names)

    def add_penalty_grad_(self, names: Iterable[str], alpha: float | None = None) -> Tensor:  # type: ignore[override]
        names = list(names)
        self.hold_anchors(names)  # before the step moves these groups' weights
        value = super().add_penalty_grad_(names, alpha)
        if self._fisher_from_train(before_penalty=False) and bool(value.isfinite()):
            self.update_fisher(names)  # the gradient of the loss with the penalty (a skipped step adds nothing)
        return value

    def end_model(self, names: Sequence[str], held_out: HeldOut) -> None:
        ce_only = self.cfg.shared_ce_fisher
        if self.cfg.shared_valid_fisher and held_out(fisher_objective(ce_only), "Fisher loss"):
            if not ce_only:
                super().add_penalty_grad_(names)
            self.update_fisher(names)
        self.refresh_anchors()
