"""``--sampler=evolution``'s options, declared beside the sampler (config.py collects them through ``samplers.SAMPLERS``).

They sit in the WPL group of ``--help-all``, beside the other options of the search's sampler phase. Free of
heavy imports: ``--help`` builds the option table without importing torch.
"""

from __future__ import annotations

import argparse

from options.domains import Domain
from options.parsing import StrictParser, str2bool
from options.plugin import PluginOptions


def add(p: StrictParser) -> None:
    g = p.group("WPL (weight plasticity loss)")
    g.add_argument("--evolution_population", type=int, default=20, help="--sampler=evolution: architectures in the population")
    g.add_argument("--evolution_sample_size", type=int, default=2,
                   help="--sampler=evolution: members scored per tournament (2: PathNet-style tournament of two)")
    g.add_argument("--evolution_regularized", type=str2bool, default=False,
                   help="--sampler=evolution: the mutated winner replaces the oldest member (regularized evolution) "
                        "instead of the tournament's loser")


def check(args: argparse.Namespace) -> str | None:
    if args.evolution_sample_size > args.evolution_population:
        return (f"--evolution_sample_size={args.evolution_sample_size} is above --evolution_population="
                f"{args.evolution_population}: a tournament draws distinct members")
    return None


# a tournament draws distinct members: at least two in the population and in each tournament
OPTIONS = PluginOptions(add, {"evolution_population": Domain(lo=2, integer=True),
                              "evolution_sample_size": Domain(lo=2, integer=True)}, check=check)
