"""Skipping non-finite updates, and stopping a run that keeps producing them.

One diverged batch (an exploding gradient at a high learning rate, a NaN reward) should cost one
update, not the run; ten in a row mean the run has diverged and continuing only wastes time. Each
source of updates (the shared step, the controller step, a retrain step) owns its own guard, so one
source's healthy updates cannot hide another's divergence.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable

import torch

from utils import UserError

log = logging.getLogger("wpl")
MAX_NONFINITE_IN_A_ROW = 10


class NonFiniteLoss(UserError):
    """Too many non-finite losses in a row: the run stops with its last good checkpoint kept."""


class NonFiniteGuard:
    """Counts skipped updates; ``limit`` in a row raise :class:`NonFiniteLoss` with ``advice``.

    ``where`` returns the loop's position for the warning; ``last_checkpoint`` the newest checkpoint
    on disk, named in the stop message (only finite states are ever saved).
    """

    def __init__(self, name: str, advice: str, where: Callable[[], str], last_checkpoint: Callable[[], str],
                 limit: int = MAX_NONFINITE_IN_A_ROW) -> None:
        self.name, self.advice, self.where, self.last_checkpoint, self.limit = name, advice, where, last_checkpoint, limit
        self.in_row = 0
        self.total = 0

    def ok(self) -> None:
        self.in_row = 0

    def skip(self, what: str = "loss") -> None:
        """Count one skipped update; raise once ``limit`` were skipped in a row."""
        self.in_row += 1
        self.total += 1
        log.warning("non-finite %s at %s: update skipped (%d in a row)", what, self.where(), self.in_row)
        if self.in_row >= self.limit:
            raise NonFiniteLoss(f"{self.limit} non-finite {self.name} values in a row at {self.where()}: "
                                f"{self.advice}; last good checkpoint: {self.last_checkpoint()}")

    def check(self, value: torch.Tensor | float, what: str = "loss") -> bool:
        """``True`` when ``value`` is finite (every element); otherwise count a skip and return ``False``."""
        if torch.is_tensor(value):
            # A loss or a penalty is one number: reading it is one operator where isfinite().all() is five.
            finite = math.isfinite(value.item()) if value.numel() == 1 else bool(torch.isfinite(value).all())
        else:
            finite = math.isfinite(value)
        if not finite:
            self.skip(what)
        return finite


def first_nonfinite(sources: Iterable[tuple[str, dict[str, Any]]]) -> str | None:
    """``"<source> <name>"`` of the first floating tensor holding NaN or infinity, if any."""
    for source, state in sources:
        for name, tensor in state.items():
            if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return f"{source} {name}"
    return None
