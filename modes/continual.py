"""``--mode=continual``: task sequences compared over paired seeds (docs/continual.md).

The options become one typed :class:`experiments.continual.run.ContinualConfig`; the protocol, its run directory
and its report live in ``experiments/continual/``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from typing import TYPE_CHECKING, Any

import torch

from engine.lifecycle import run_path
from options.plugin import Strength, StrategyOptions
from regularizers import REGULARIZERS
from utils import UserError

log = logging.getLogger("wpl")

if TYPE_CHECKING:
    from experiments.continual.run import ContinualConfig

MAX_WIDTH = 1 << 16  # a hidden width past this is a typo that would ask for gigabytes
MAX_PERMUTED_TASKS = 50
# Benchmarks whose heads fix the scenario whatever --scenario says (data/tasks.py).
FIXED_SCENARIO = {"seq_mnist_0-2_3-5": "class", "permuted_mnist": "domain"}


def strategy_options() -> dict[str, StrategyOptions]:
    """The ``--strategies`` regularisers that declare options (their strength, their settings), by name."""
    return {name: d for name, d in REGULARIZERS.declarations().items() if isinstance(d, StrategyOptions)}


def strength_table(name: str) -> dict[str, dict[str, dict[str, float]]]:
    """A ``"module:TABLE"`` of per-scenario values (protocol -> scenario -> values)."""
    module, attribute = name.split(":")
    table: dict[str, dict[str, dict[str, float]]] = getattr(importlib.import_module(module), attribute)
    return table


def declared_strength(strategy: str) -> Strength:
    strength = strategy_options()[strategy].strength
    if strength is None:
        raise KeyError(f"--strategies={strategy} declares no strength")
    return strength


def tuned_values(strategy: str, protocol: str, scenario: str) -> dict[str, float] | None:
    """The values chosen on the validation split for ``strategy`` in this protocol and scenario, or ``None`` where
    its declaration's tuned table does not hold them."""
    strength = declared_strength(strategy)
    return strength_table(strength.tuned).get(protocol, {}).get(scenario) if strength.tuned else None


def scenario_values(strategy: str, protocol: str, scenario: str, source: str = "published") -> dict[str, float]:
    """The values for ``strategy`` in ``scenario`` (``strength``, and ``gamma`` for online EWC): the published
    protocol's, or with ``source="tuned"`` the tuned ones where they exist (:func:`tuned_values`)."""
    tuned = tuned_values(strategy, protocol, scenario) if source == "tuned" else None
    return strength_table(declared_strength(strategy).table)[protocol][scenario] if tuned is None else tuned


def resolved_values(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Each strategy's strength (and its other table values, ``Strength.also``): the option where given, else the
    protocol's for the scenario, tuned or published as ``--cl_strengths`` says."""
    scenario = FIXED_SCENARIO.get(args.benchmark, args.scenario)
    resolved = {}
    for strategy, declared in strategy_options().items():
        if declared.strength is None:
            continue
        options = {"strength": declared.strength.option, **declared.strength.also}
        given = {key: getattr(args, option) for key, option in options.items()}
        table = (scenario_values(strategy, args.cl_protocol, scenario, args.cl_strengths) if None in given.values() else {})
        resolved[strategy] = {key: float(table[key] if value is None else value) for key, value in given.items()}
    return resolved


def strength_sources(args: argparse.Namespace, resolved: dict[str, dict[str, float]]) -> str:
    """One line for the log: each requested strategy's strength and where it came from (its option, the values
    tuned on the validation split, or the protocol's untuned table: the papers' values)."""
    scenario = FIXED_SCENARIO.get(args.benchmark, args.scenario)
    parts = []
    for strategy in args.strategies:
        declared = strategy_options().get(strategy)
        if declared is None or declared.strength is None:
            continue
        if getattr(args, declared.strength.option) is not None:
            source = f"--{declared.strength.option}"
        elif args.cl_strengths == "tuned" and tuned_values(strategy, args.cl_protocol, scenario) is not None:
            source = "tuned on validation"
        else:
            source = "untuned: the protocol's table"
        parts.append(f"{strategy} {resolved[strategy]['strength']:g} ({source})")
    return f"strengths ({args.cl_protocol}, {scenario} scenario): " + ("; ".join(parts) or "none")


def regularizer_options(args: argparse.Namespace, resolved: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """The keyword arguments of each strategy that has some: its resolved table values beside its strength, then
    its declared settings."""
    options: dict[str, dict[str, Any]] = {}
    for strategy, declared in strategy_options().items():
        values = {k: v for k, v in resolved.get(strategy, {}).items() if k != "strength"}
        settings = declared.settings(args) if declared.settings else {}
        if values or settings:
            options[strategy] = {**values, **settings}
    return options


def eval_split(args: argparse.Namespace) -> dict[str, Any]:
    """What every metric is measured on, as a run records it (and a protocol unit stores it): ``test`` alone, so the
    records written before the option still match, or ``valid`` with its held-out fraction."""
    if args.cl_eval_split == "test":
        return {"eval_split": "test"}
    return {"eval_split": "valid", "valid_fraction": float(args.cl_valid_fraction)}


def build_config(args: argparse.Namespace, explicit: set[str]) -> ContinualConfig:
    """The typed configuration of a run, with the protocol's per-scenario strengths; a bad option is one line."""
    from experiments.continual.run import ContinualConfig, strategies

    resolved = resolved_values(args)
    strengths = {strategy: values["strength"] for strategy, values in resolved.items()}
    options = regularizer_options(args, resolved)
    try:
        hidden = [int(w) for w in args.cl_hidden.split(",")]
    except ValueError as err:
        raise UserError(f"--cl_hidden={args.cl_hidden}: expected comma-separated widths such as 400,400") from err
    if not all(1 <= w <= MAX_WIDTH for w in hidden):
        raise UserError(f"--cl_hidden={args.cl_hidden}: every width must be between 1 and {MAX_WIDTH}")
    unknown = sorted(set(args.strategies) - set(strategies()))
    if unknown:
        raise UserError(f"--strategies: unknown {', '.join(unknown)} ({', '.join(strategies())})")
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
    if args.cl_task_order != "fixed" and args.benchmark != "split_mnist":
        raise UserError(f"--cl_task_order={args.cl_task_order} is read only with --benchmark=split_mnist "
                        f"(got --benchmark={args.benchmark})")
    if "cl_valid_fraction" in explicit and args.cl_eval_split != "valid":
        raise UserError("--cl_valid_fraction is read only with --cl_eval_split=valid")
    if args.seeds < 1 or args.cl_iters < 1 or args.num_tasks < 2:
        raise UserError("--seeds and --cl_iters must be >= 1 and --num_tasks >= 2")
    return ContinualConfig(args.strategies, args.seeds, args.random_seed, args.cl_iters, args.cl_batch_size, args.cl_lr,
                           (0.9, 0.999), hidden, args.cl_eval_every, args.importance_samples, strengths, options,
                           protocol=args.cl_protocol)


def mode_continual(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    from experiments.continual.main import run_continual

    cfg = build_config(args, explicit)
    log.info(strength_sources(args, resolved_values(args)))
    run_continual(run_path(args.log_dir, args.benchmark, args.comment), args.benchmark, args.scenario, args.data_dir,
                  cfg, num_tasks=args.num_tasks, task_split=args.task_split, task_order=args.cl_task_order, resume=args.resume,
                  use_tensorboard=args.use_tensorboard, **eval_split(args))
