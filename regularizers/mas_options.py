"""MAS's and the L2 baseline's options for ``--strategies``, declared beside ``mas.py`` (collected through
``regularizers.REGULARIZERS``).

Free of heavy imports (``--help``); the per-scenario strengths are ``mas.py``'s tables, named here as text.
"""

from __future__ import annotations

from options.domains import NON_NEGATIVE
from options.parsing import StrictParser
from options.plugin import Strength, StrategyOptions


def add_mas(p: StrictParser) -> None:
    p.group("continual").add_argument(
        "--mas_lambda", type=float, default=None,
        help="MAS strength lambda (lambda sum Omega (theta - theta*)^2); default: the protocol's")


def add_l2(p: StrictParser) -> None:
    p.group("continual").add_argument("--l2_lambda", type=float, default=None, help="L2 baseline strength; default: the protocol's")


MAS = StrategyOptions(add_mas, {"mas_lambda": NON_NEGATIVE},
                      strength=Strength("mas_lambda", "regularizers.mas:SCENARIO_STRENGTHS",
                                        tuned="regularizers.mas:TUNED_STRENGTHS"))
L2 = StrategyOptions(add_l2, {"l2_lambda": NON_NEGATIVE},
                     strength=Strength("l2_lambda", "regularizers.mas:L2_SCENARIO_STRENGTHS",
                                       tuned="regularizers.mas:L2_TUNED_STRENGTHS"))
