"""Importance-weighted quadratic regularisers behind one interface (:class:`regularizers.base.Regularizer`).

``REGULARIZERS[name](groups, strength, **options)`` builds one; ``groups`` maps a group name to
its parameters. A new regulariser is one file plus one entry here.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from torch import nn

from regularizers.base import Regularizer, TaskData
from regularizers.ewc import EWC, online_ewc
from regularizers.mas import L2, MAS
from regularizers.si import SI
from regularizers.store import QuadraticStore
from regularizers.wpl import WPL


def wpl(groups: Mapping[str, Sequence[nn.Parameter]], strength: float, **options: Any) -> WPL:
    """WPL with its strength as ``alpha`` (the search builds :class:`WPL` directly)."""
    return WPL(groups, alpha=strength, **options)


REGULARIZERS: dict[str, Callable[..., Regularizer]] = {
    "wpl": wpl, "ewc": EWC, "online_ewc": online_ewc, "si": SI, "mas": MAS, "l2": L2,
}

__all__ = ["EWC", "L2", "MAS", "REGULARIZERS", "SI", "WPL", "QuadraticStore", "Regularizer", "TaskData", "online_ewc"]
