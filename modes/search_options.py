"""The search's declaration (``--mode=train``, ``forgetting``): no help group of its own (its options are the core
table's), but it reads SI's damping ``--si_xi`` from the continual group when ``--wpl_importance=si``, so that
option is not refused as another mode's. Free of heavy imports (``--help``)."""

from __future__ import annotations

from options.parsing import StrictParser
from options.plugin import ModeOptions


def _no_options(p: StrictParser) -> None:
    """The search's own options are the core table's (config.py)."""


TRAIN = ModeOptions(_no_options, reads=("si_xi",))
FORGETTING = ModeOptions(_no_options, reads=("si_xi",))  # its own declaration: each is collected once
