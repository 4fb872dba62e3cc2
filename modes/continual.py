"""``--mode=continual``: task sequences compared over paired seeds (docs/continual.md).

The options become one typed :class:`experiments.continual.run.ContinualConfig`; the protocol, its run directory
and its report live in ``experiments/continual/``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import TYPE_CHECKING, Any

import torch

from engine.lifecycle import run_path
from utils import UserError

if TYPE_CHECKING:
    from experiments.continual.run import ContinualConfig

MAX_WIDTH = 1 << 16  # a hidden width past this is a typo that would ask for gigabytes
MAX_PERMUTED_TASKS = 50
# Each strategy's strength option and the table beside its regulariser that holds the protocol's per-scenario
# value, read when the option is not given on the command line.
STRENGTH_TABLES = {"ewc": ("ewc_lambda", "regularizers.ewc:SCENARIO_STRENGTHS"),
                   "online_ewc": ("online_ewc_lambda", "regularizers.ewc:ONLINE_SCENARIO_STRENGTHS"),
                   "si": ("si_c", "regularizers.si:SCENARIO_STRENGTHS"),
                   "mas": ("mas_lambda", "regularizers.mas:SCENARIO_STRENGTHS"),
                   "l2": ("l2_lambda", "regularizers.mas:L2_SCENARIO_STRENGTHS"),
                   "wpl": ("wpl_alpha", "regularizers.wpl:SCENARIO_STRENGTHS")}
# Benchmarks whose heads fix the scenario whatever --scenario says (data/tasks.py).
FIXED_SCENARIO = {"seq_mnist_0-2_3-5": "class", "permuted_mnist": "domain"}


def scenario_values(strategy: str, protocol: str, scenario: str) -> dict[str, float]:
    """The protocol's values for ``strategy`` in ``scenario`` (``strength``, and ``gamma`` for online EWC)."""
    module, name = STRENGTH_TABLES[strategy][1].split(":")
    table: dict[str, dict[str, dict[str, float]]] = getattr(importlib.import_module(module), name)
    return table[protocol][scenario]


def resolved_strengths(args: argparse.Namespace) -> tuple[dict[str, float], float]:
    """Every strategy's strength and online EWC's gamma: the option where given, else the protocol's for the scenario."""
    scenario = FIXED_SCENARIO.get(args.benchmark, args.scenario)
    strengths = {}
    for strategy, (option, _) in STRENGTH_TABLES.items():
        given = getattr(args, option)
        strengths[strategy] = float(given if given is not None
                                    else scenario_values(strategy, args.cl_protocol, scenario)["strength"])
    gamma = args.online_ewc_gamma
    if gamma is None:
        gamma = scenario_values("online_ewc", args.cl_protocol, scenario)["gamma"]
    return strengths, float(gamma)


def build_config(args: argparse.Namespace, explicit: set[str]) -> ContinualConfig:
    """The typed configuration of a run, with the protocol's per-scenario strengths; a bad option is one line."""
    from experiments.continual.run import STRATEGIES, ContinualConfig

    strengths, gamma = resolved_strengths(args)
    options: dict[str, dict[str, Any]] = {
        "ewc": {"fisher": args.ewc_fisher, "per_task": args.ewc_per_task},
        "online_ewc": {"gamma": gamma, "fisher": args.ewc_fisher},
        "si": {"xi": args.si_xi},
        "wpl": {"mode": args.wpl_mode, "lambda_fisher": args.lambda_fisher, "momentum": args.momentum,
                "clip_by_norm": args.fisher_clip_by_norm, "consolidate": "task"}}
    try:
        hidden = [int(w) for w in args.cl_hidden.split(",")]
    except ValueError as err:
        raise UserError(f"--cl_hidden={args.cl_hidden}: expected comma-separated widths such as 400,400") from err
    if not all(1 <= w <= MAX_WIDTH for w in hidden):
        raise UserError(f"--cl_hidden={args.cl_hidden}: every width must be between 1 and {MAX_WIDTH}")
    unknown = sorted(set(args.strategies) - set(STRATEGIES))
    if unknown:
        raise UserError(f"--strategies: unknown {', '.join(unknown)} ({', '.join(STRATEGIES)})")
    if len(set(args.strategies)) != len(args.strategies):
        raise UserError(f"--strategies={','.join(args.strategies)}: a strategy is repeated")
    if "num_tasks" in explicit and args.benchmark != "permuted_mnist":
        raise UserError(f"--num_tasks is read only with --benchmark=permuted_mnist (--benchmark={args.benchmark} "
                        f"has its own tasks)")
    if args.num_tasks > MAX_PERMUTED_TASKS:  # each task holds its own permuted copy of MNIST, about 190 MB
        raise UserError(f"--num_tasks={args.num_tasks}: at most {MAX_PERMUTED_TASKS} (each task holds a permuted copy "
                        f"of MNIST, about 190 MB)")
    if args.task_split and args.benchmark != "folder":
        raise UserError(f"--task_split is read only with --benchmark=folder (got --benchmark={args.benchmark})")
    if args.seeds < 1 or args.cl_iters < 1 or args.num_tasks < 2:
        raise UserError("--seeds and --cl_iters must be >= 1 and --num_tasks >= 2")
    return ContinualConfig(args.strategies, args.seeds, args.random_seed, args.cl_iters, args.cl_batch_size, args.cl_lr,
                           (0.9, 0.999), hidden, args.cl_eval_every, args.importance_samples, strengths, options,
                           protocol=args.cl_protocol)


def mode_continual(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    from experiments.continual.main import run_continual

    cfg = build_config(args, explicit)
    run_continual(run_path(args.log_dir, args.benchmark, args.comment), args.benchmark, args.scenario, args.data_dir,
                  cfg, num_tasks=args.num_tasks, task_split=args.task_split, resume=args.resume,
                  use_tensorboard=args.use_tensorboard)
