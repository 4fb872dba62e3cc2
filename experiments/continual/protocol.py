"""A published split-MNIST protocol run as independent units: strategies x seeds of one scenario, resumable.

    python -m experiments.continual.protocol --scenario=task [--protocol=vandeven2019] [--seeds=5]
        [--strategies=none,ewc,online_ewc,si,mas,wpl] [--data_dir=../shared/data] [--ledger=FILE] [--out=DIR]
        [--report_only] [-- OPTIONS, e.g. --cl_task_order=shuffled]

One unit is (strategy, seed): the whole task sequence trained with that strategy, exactly as
``python main.py --mode=continual --cl_protocol=<protocol> --scenario=<scenario> --strategies=<strategy>
--random_seed=<seed> --seeds=1`` trains it (the same initial weights and batches for every strategy of a seed,
so the comparison stays paired). Units go through :func:`experiments.workers.run_units`: one JSON line per
finished unit in the ledger, so a killed run continues where it stopped, and a ledger whose units were run
with other settings is refused. Units run seed by seed, every strategy of a seed before the next seed, so
a run cut short still gives paired seeds. The report is :mod:`experiments.continual.published`.

The unit's settings (iterations, strengths, EWC's Fisher, ...) are resolved here, from the same option
table and per-scenario strengths as ``--mode=continual`` (:func:`modes.continual.build_config`), and stored
in full in the unit's keyword arguments: the ledger says what each line was run with. ``--cl_task_order=shuffled`` (after
``--``) draws each seed's split-MNIST digit pairs from the unit's seed, so every strategy of a seed sees the same
tasks; it is stored in the unit's keyword arguments (only when not ``fixed``: the committed fixed-order ledgers'
lines predate it and must still match) and its ledger's default name ends in ``_shuffled``. ``--cl_eval_split=valid``
(after ``--``) measures every unit on a held-out part of each task's training data, for tuning strengths; it is stored
the same way (with ``--cl_valid_fraction``) and its ledger's default name ends in ``_valid``, so validation ledgers
never mix with the test ledgers. A strategy whose tuned strength (``--cl_strengths=tuned``, the default) differs
from the paper's makes the default name end in ``_tuned``: the committed ledgers ran the papers' strengths
(``-- --cl_strengths=published`` resumes them).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from experiments.workers import Unit, add_ledger_options, protocol_cli, run_units

if TYPE_CHECKING:
    from data.tasks import TaskSequence

BASE_SEED = 12345  # --random_seed's default: seed k of the protocol is BASE_SEED + k
DEFAULT_STRATEGIES = "none,ewc,online_ewc,si,mas,wpl"  # the protocol's --strategies (run.strategies(): every one known)


def protocol_config(protocol: str, scenario: str, extra: Sequence[str] = ()) -> tuple[str, Any]:
    """The benchmark and the :class:`ContinualConfig` that ``--mode=continual`` would build for this protocol."""
    import config
    from modes.continual import build_config

    argv = ["--mode=continual", f"--cl_protocol={protocol}", f"--scenario={scenario}", *extra]
    args = config.parse_args(argv)
    return args.benchmark, build_config(args, config.explicit_options(argv))


def sequence_settings(extra: Sequence[str]) -> dict[str, Any]:
    """The task sequence's settings the options after ``--`` change from the committed ledgers' (fixed digit pairs,
    measured on the test split): ``task_order``, ``eval_split`` and its ``valid_fraction``, only where they differ,
    so the units of the committed ledgers keep their keyword arguments."""
    import config
    from modes.continual import eval_split

    args = config.parse_args(["--mode=continual", *extra])
    held = eval_split(args)
    return ({} if args.cl_task_order == "fixed" else {"task_order": str(args.cl_task_order)}) | (
        {} if held["eval_split"] == "test" else held)


def ledger_suffix(extra: Sequence[str]) -> str:
    """The default ledger's name ends in ``_shuffled`` and/or ``_valid`` where the units differ from the committed
    fixed-order test ledgers: never mixed with them."""
    changed = sequence_settings(extra)
    return "".join(f"_{changed[key]}" for key in ("task_order", "eval_split") if key in changed)


def tuned_suffix(protocol: str, scenario: str, strategies: Sequence[str], extra: Sequence[str] = ()) -> str:
    """``_tuned`` where a strategy's resolved strength (``--cl_strengths=tuned``, the default) differs from the
    paper's: the committed test ledgers ran the papers' strengths, so units with others never join them."""
    chosen = [f"--strategies={','.join(strategies)}", *extra]
    _, cfg = protocol_config(protocol, scenario, chosen)
    _, paper = protocol_config(protocol, scenario, [*chosen, "--cl_strengths=published"])
    ran = [(c.strengths.get(s), c.options.get(s)) for c in (cfg, paper) for s in strategies]
    return "" if ran[:len(strategies)] == ran[len(strategies):] else "_tuned"


def units(protocol: str, scenario: str, strategies: Sequence[str], seeds: int, data_dir: str,
          extra: Sequence[str] = ()) -> list[Unit]:
    """Every (seed, strategy) of the protocol, seed-major; each unit carries only its own strategy's settings."""
    benchmark, cfg = protocol_config(protocol, scenario, [f"--strategies={','.join(strategies)}", *extra])
    changed = sequence_settings(extra)
    out = []
    for k in range(seeds):
        for strategy in strategies:
            one = replace(cfg, strategies=[strategy], seeds=1, first_seed=BASE_SEED + k,
                          strengths={s: v for s, v in cfg.strengths.items() if s == strategy},
                          options={s: v for s, v in cfg.options.items() if s == strategy})
            out.append(Unit(f"{scenario}/{strategy}/s{k}", "experiments.continual.protocol:run_unit",
                            {"benchmark": benchmark, "scenario": scenario, "data_dir": data_dir,
                             "sequence_seed": BASE_SEED, "config": asdict(one), **changed}))
    return out


def unit_sequence(benchmark: str, scenario: str, data_dir: str, seed: int, sequence_seed: int, task_order: str = "fixed",
                  eval_split: str = "test", valid_fraction: float = 0.1) -> TaskSequence:
    """A unit's task sequence: the fixed digit pairs drawn from ``sequence_seed``, or a shuffled order from the unit's
    own ``seed``."""
    from data.tasks import build_sequence

    return build_sequence(benchmark, scenario, data_dir, seed=seed if task_order == "shuffled" else sequence_seed,
                          task_order=task_order, eval_split=eval_split, valid_fraction=valid_fraction)


def run_unit(benchmark: str, scenario: str, data_dir: str, sequence_seed: int, config: dict[str, Any],
             task_order: str = "fixed", eval_split: str = "test", valid_fraction: float = 0.1) -> dict[str, Any]:
    """One strategy on one seed over the whole sequence: its accuracy matrix, curve, time and metrics; ``tasks``
    names the digit pairs in the order trained (a shuffled order draws them from the unit's seed); ``eval_split``
    says what the metrics measure (``data.tasks.holdout``)."""
    from experiments.continual.run import ContinualConfig, run_experiment
    from experiments.continual.report import run_metrics

    cfg = ContinualConfig(**{**config, "betas": tuple(config["betas"])})
    seq = unit_sequence(benchmark, scenario, data_dir, cfg.first_seed, sequence_seed, task_order, eval_split,
                        valid_fraction)
    runs = run_experiment(lambda _: seq, cfg, None, lambda _: None, lambda _: None)["runs"]
    (strategy,), seed = cfg.strategies, cfg.first_seed
    run = runs[f"{strategy}/{seed}"]
    return {"strategy": strategy, "seed": seed, "scenario": seq.scenario, "tasks": [t.name for t in seq.tasks],
            "R": run["R"], "curve": run["curve"], "seconds": run["seconds"], "metrics": run_metrics(run["R"], run["curve"]),
            **({"eval_split": eval_split, "valid_fraction": valid_fraction} if eval_split == "valid" else {})}


def main(argv: Sequence[str] | None = None) -> int:
    from experiments.continual.published import report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", default="vandeven2019")
    p.add_argument("--scenario", default="task", choices=("task", "domain", "class"))
    p.add_argument("--strategies", default=DEFAULT_STRATEGIES)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--data_dir", default="../shared/data")
    add_ledger_options(p, ledger="", ledger_help="default: results/continual/<protocol>_<scenario>.jsonl "
                                                  "(ending _shuffled with --cl_task_order=shuffled, _valid with "
                                                  "--cl_eval_split=valid, _tuned where a tuned strength differs "
                                                  "from the paper's)",
                       out="results/continual",
                       extra_help="options added to every unit's --mode=continual command line (after --)")
    args = p.parse_args(argv)

    def body() -> str:
        strategies = args.strategies.split(",")  # never mixed with the committed fixed-order test ledgers:
        suffix = ledger_suffix(args.extra) + tuned_suffix(args.protocol, args.scenario, strategies, args.extra)
        ledger = Path(args.ledger or f"{args.out}/{args.protocol}_{args.scenario}{suffix}.jsonl")
        if not args.report_only:
            run_units(units(args.protocol, args.scenario, strategies, args.seeds, args.data_dir,
                            args.extra), ledger, workers=args.workers, desc="continual units")
        return report(ledger, Path(args.out), args.protocol, args.extra)

    return protocol_cli(body)


if __name__ == "__main__":
    sys.exit(main())
