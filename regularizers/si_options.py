"""SI's options for ``--strategies``, declared beside ``si.py`` (collected through ``regularizers.REGULARIZERS``).

``--si_xi`` is also the search's damping (``--wpl_importance=si``). Free of heavy imports (``--help``); the
per-scenario strengths are ``si.py``'s table, named here as text.
"""

from __future__ import annotations

from options.domains import NON_NEGATIVE, POSITIVE
from options.parsing import StrictParser
from options.plugin import Strength, StrategyOptions


def add(p: StrictParser) -> None:
    g = p.group("continual")
    g.add_argument("--si_c", type=float, default=None, help="SI strength c (c sum Omega (theta - theta*)^2); default: the protocol's")
    g.add_argument("--si_xi", type=float, default=0.1, help="SI damping xi (also the search's, --wpl_importance=si)")


SI = StrategyOptions(add, {"si_c": NON_NEGATIVE, "si_xi": POSITIVE},
                     strength=Strength("si_c", "regularizers.si:SCENARIO_STRENGTHS", tuned="regularizers.si:TUNED_STRENGTHS"),
                     settings=lambda args: {"xi": args.si_xi})
