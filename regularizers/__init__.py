"""Importance-weighted quadratic regularisers behind one interface (:class:`regularizers.base.Regularizer`).

``REGULARIZERS[name](groups, strength, **options)`` builds one for a task sequence (``--strategies``);
``groups`` maps a group name to its parameters. ``SEARCH_IMPORTANCES[name](groups, cfg)`` builds the
search's WPL with that importance measure (``--wpl_importance``). A new regulariser is one file plus one
entry in a table here; one with options of its own (a ``--strategies`` strength) also names their declaration
in ``options=`` (:class:`options.plugin.StrategyOptions`, kept in a light module beside it: ``ewc_options.py``,
...). Entries, declarations and the names below are imported on first use (:mod:`options.registry`), so
config.py reads the tables without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from options.registry import Registry

REGULARIZERS: Registry[Any] = Registry("regulariser", {
    "wpl": "regularizers.wpl:for_tasks",
    "ewc": "regularizers.ewc:EWC",
    "online_ewc": "regularizers.ewc:online_ewc",
    "si": "regularizers.si:SI",
    "mas": "regularizers.mas:MAS",
    "l2": "regularizers.mas:L2",
}, options={
    "wpl": "regularizers.wpl_options:WPL",
    "ewc": "regularizers.ewc_options:EWC",
    "online_ewc": "regularizers.ewc_options:ONLINE_EWC",
    "si": "regularizers.si_options:SI",
    "mas": "regularizers.mas_options:MAS",
    "l2": "regularizers.mas_options:L2",
})

SEARCH_IMPORTANCES: Registry[Any] = Registry("WPL importance", {
    "fisher": "regularizers.wpl_search:SearchWPL",
    "mas": "regularizers.search_importance:SearchMAS",
    "si": "regularizers.search_importance:SearchSI",
    "l2": "regularizers.search_importance:SearchL2",
})

_HOMES = {"Regularizer": "regularizers.base", "TaskData": "regularizers.base", "QuadraticStore": "regularizers.store",
          "EWC": "regularizers.ewc", "online_ewc": "regularizers.ewc", "SI": "regularizers.si",
          "MAS": "regularizers.mas", "L2": "regularizers.mas", "WPL": "regularizers.wpl"}


def __getattr__(name: str) -> Any:
    """The package's classes, imported when first asked for (PEP 562)."""
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'regularizers' has no attribute {name!r}")


if TYPE_CHECKING:
    from regularizers.base import Regularizer, TaskData
    from regularizers.ewc import EWC, online_ewc
    from regularizers.mas import L2, MAS
    from regularizers.si import SI
    from regularizers.store import QuadraticStore
    from regularizers.wpl import WPL

__all__ = ["EWC", "L2", "MAS", "REGULARIZERS", "SEARCH_IMPORTANCES", "SI", "WPL", "QuadraticStore", "Regularizer",
           "TaskData", "online_ewc"]
