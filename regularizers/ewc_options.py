"""EWC's and online EWC's options for ``--strategies``, declared beside ``ewc.py`` (collected through
``regularizers.REGULARIZERS``; ``modes.continual`` reads each strength and settings from here).

Free of heavy imports: ``--help`` builds the option table without importing torch. The per-scenario values
a strength left out takes are ``ewc.py``'s tables, named here as text and read only when a run is built.
"""

from __future__ import annotations

from options.domains import NON_NEGATIVE, UNIT
from options.parsing import StrictParser, choice, str2bool
from options.plugin import Strength, StrategyOptions


def add_ewc(p: StrictParser) -> None:
    g = p.group("continual")
    g.add_argument("--ewc_lambda", type=float, default=None,
                   help="EWC strength lambda (lambda/2 sum F (theta - theta*)^2); default: the protocol's for the scenario")
    g.add_argument("--ewc_fisher", type=choice("empirical", "true", "predicted"), default="predicted",
                   help="EWC: labels from the data, sampled from the model, or the model's predicted class")
    g.add_argument("--ewc_per_task", type=str2bool, default=True, help="EWC: one penalty per past task (else merged, anchored at the latest weights)")


def add_online_ewc(p: StrictParser) -> None:
    g = p.group("continual")
    g.add_argument("--online_ewc_lambda", type=float, default=None, help="online EWC strength; default: the protocol's")
    g.add_argument("--online_ewc_gamma", type=float, default=None,
                   help="online EWC: decay of the running Fisher; default: the protocol's")


EWC = StrategyOptions(add_ewc, {"ewc_lambda": NON_NEGATIVE},
                      strength=Strength("ewc_lambda", "regularizers.ewc:SCENARIO_STRENGTHS",
                                        tuned="regularizers.ewc:TUNED_STRENGTHS"),
                      settings=lambda args: {"fisher": args.ewc_fisher, "per_task": args.ewc_per_task})
ONLINE_EWC = StrategyOptions(add_online_ewc, {"online_ewc_lambda": NON_NEGATIVE, "online_ewc_gamma": UNIT},
                             strength=Strength("online_ewc_lambda", "regularizers.ewc:ONLINE_SCENARIO_STRENGTHS",
                                               also={"gamma": "online_ewc_gamma"},
                                               tuned="regularizers.ewc:ONLINE_TUNED_STRENGTHS"),
                             settings=lambda args: {"fisher": args.ewc_fisher})  # --ewc_fisher: EWC's, read by both
