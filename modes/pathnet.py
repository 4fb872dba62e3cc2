"""``--mode=pathnet``: PathNet (Fernando et al. 2017), binary MNIST transfer (docs/pathnet.md).

The options become the network's and the tournaments' typed configs; the protocol, its run directory and
its report live in ``experiments/pathnet/``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import torch

from engine.lifecycle import run_path

if TYPE_CHECKING:
    from experiments.pathnet.tournament import TournamentConfig
    from experiments.pathnet.transfer import NetConfig


def pathnet_configs(args: argparse.Namespace) -> tuple[NetConfig, TournamentConfig]:
    """The network's and the tournaments' typed configs (also what experiments/pathnet/measure.py runs)."""
    from experiments.pathnet.tournament import TournamentConfig
    from experiments.pathnet.transfer import NetConfig

    net = NetConfig(args.pathnet_layers, args.pathnet_modules, args.pathnet_units, args.pathnet_active,
                    args.pathnet_aggregate, args.pathnet_wpl_alpha, args.pathnet_fisher_batches,
                    args.pathnet_module_kinds, args.pathnet_init, args.pathnet_frozen_active)
    evolution = TournamentConfig(args.pathnet_population, args.pathnet_batches, args.pathnet_batch_size, args.pathnet_lr,
                                args.pathnet_converge, args.pathnet_max_generations, args.noise,
                                args.pathnet_mutation_bound, args.pathnet_converge_window, args.pathnet_mutation,
                                args.pathnet_batch_draw, args.pathnet_count_from, args.pathnet_data)
    return net, evolution


def mode_pathnet(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    from experiments.pathnet.run import run_pathnet

    net, evolution = pathnet_configs(args)
    seeds = list(range(args.random_seed, args.random_seed + args.seeds))
    run_pathnet(run_path(args.log_dir, "pathnet", args.comment), args.data_dir, args.tasks, args.pathnet_variants, seeds,
                net, evolution, args.resume, args.use_tensorboard)
