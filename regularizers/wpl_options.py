"""WPL's options for ``--strategies`` (task sequences), declared beside ``wpl.py`` (collected through
``regularizers.REGULARIZERS``).

Its Fisher update reads the search's WPL options too (``--lambda_fisher``, ``--momentum``,
``--fisher_clip_by_norm``). Free of heavy imports (``--help``); the per-scenario strengths are ``wpl.py``'s
table, named here as text.
"""

from __future__ import annotations

from options.domains import NON_NEGATIVE
from options.parsing import StrictParser, choice
from options.plugin import Strength, StrategyOptions


def add(p: StrictParser) -> None:
    g = p.group("continual")
    g.add_argument("--wpl_alpha", type=float, default=None,
                   help="WPL strength alpha (Fisher: moving average of squared batch gradients); default: the protocol's")
    g.add_argument("--wpl_mode", type=choice("loss", "compound"), default="loss", help="WPL arithmetic (with --lambda_fisher, --momentum, --fisher_clip_by_norm)")


WPL = StrategyOptions(add, {"wpl_alpha": NON_NEGATIVE},
                      strength=Strength("wpl_alpha", "regularizers.wpl:SCENARIO_STRENGTHS",
                                        tuned="regularizers.wpl:TUNED_STRENGTHS"),
                      settings=lambda args: {"mode": args.wpl_mode, "lambda_fisher": args.lambda_fisher,
                                             "momentum": args.momentum, "clip_by_norm": args.fisher_clip_by_norm,
                                             "consolidate": "task"})
