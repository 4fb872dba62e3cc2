"""The training engine every loop of the project runs on.

* :class:`~engine.step.Step`: one guarded optimiser update (autocast, finite check, regulariser hook,
  clip, step);
* :mod:`engine.guard`: skipped non-finite updates and the stop after too many in a row;
* :mod:`engine.schedule`: optimisers and learning-rate schedules from an ``OptimSpec``;
* :mod:`engine.metric`: which way a metric improves;
* :mod:`engine.checkpoint`: the checkpoint schema (format version, kind of loop).
"""

from engine.checkpoint import FORMAT, kind_of, require_kind, stamp, validate
from engine.guard import MAX_NONFINITE_IN_A_ROW, NonFiniteGuard, NonFiniteLoss, first_nonfinite
from engine.metric import higher_is_better, improves
from engine.schedule import build_optimizer, cosine, scheduled_lr
from engine.step import Step

__all__ = ["FORMAT", "MAX_NONFINITE_IN_A_ROW", "NonFiniteGuard", "NonFiniteLoss", "Step", "build_optimizer", "cosine",
           "first_nonfinite", "higher_is_better", "improves", "kind_of", "require_kind", "scheduled_lr",
           "stamp", "validate"]
