"""``--mode=ranking``: the ground truth, the searches and the report of the ranking benchmark, in one run folder.

``<log_dir>/ranking_<comment>/`` holds ``ranking.json`` (the protocol: options, variants, seeds),
``truth.jsonl`` and ``search.jsonl`` (the ledgers of finished units, :mod:`experiments.workers`),
``ground_truth.json`` (the whole seeds of the ground truth, the file to commit), and after the report
``ranking_results.json``, ``ranking.md`` and ``ranking.png``. ``--ranking_stage`` picks what runs:
``truth``, ``search``, ``report``, or ``all`` of them in that order. Any stage continues with
``--resume=True`` (same protocol), losing at most the units that were running.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from experiments.protocol_files import bind_plan
from experiments.ranking import protocol, report
from experiments.workers import default_workers, run_units, settings, unit_devices
from engine import lifecycle
from engine.lifecycle import Opening
from engine.runlog import RunDir
from utils import UserError, save_json

log = logging.getLogger("wpl")
LEDGERS = ("truth.jsonl", "search.jsonl")
GROWABLE = ("variants", "seeds", "truth_seeds")  # a resume may add to these: every unit stands alone


def describe(args: argparse.Namespace) -> dict[str, Any]:
    """The protocol a run folder is bound to: a resume must ask for the same."""
    options = protocol.options_for(args.ranking_size, args)
    return {"mode": "ranking", "size": args.ranking_size, "options": settings(options),
            "variants": list(args.ranking_variants), "seeds": list(range(args.random_seed, args.random_seed + args.ranking_seeds)),
            "truth_seeds": list(range(args.random_seed, args.random_seed + args.truth_seeds))}


def open_run(args: argparse.Namespace, plan: dict[str, Any]) -> Opening:
    """A new folder, or the same protocol's folder with ``--resume=True`` (every mode's lifecycle, its ledgers
    standing for a checkpoint); anything else one line."""
    with lifecycle.open_run(lifecycle.run_path(args.log_dir, "ranking", args.comment), "ranking", args.resume,
                            prefix="ranking", results=(*LEDGERS, "ranking.json"), use_tensorboard=False,
                            checkpointed=False) as opening:
        bind_plan(opening.run, "ranking.json", plan, GROWABLE, "variants or seeds", LEDGERS)
        opening.commit()
    return opening


def run_ranking(args: argparse.Namespace) -> dict[str, Any] | None:
    variants = protocol.parse_variants(args.ranking_variants)
    if args.ranking_seeds < 1 or args.truth_seeds < 1 or args.workers < 0:
        raise UserError("--ranking_seeds and --truth_seeds must be >= 1 and --workers >= 0 (0: one per core)")
    plan = describe(args)
    options = protocol.options_for(args.ranking_size, args)
    opening = open_run(args, plan)
    return opening.run_loop(lambda: run_stages(args, opening.run, plan, variants, options), lambda: "",
                            nothing="no unit finished")


def run_stages(args: argparse.Namespace, run: RunDir, plan: dict[str, Any], variants: Any,
               options: dict[str, Any]) -> dict[str, Any] | None:
    """The ``--ranking_stage`` stages in order; each unit's line goes to its ledger as it finishes."""
    devices = unit_devices(args.num_gpu)
    workers = args.workers or (len(devices) if devices else default_workers())
    command = "python main.py " + shlex.join(sys.argv[1:])
    stages = ("truth", "search", "report") if args.ranking_stage == "all" else (args.ranking_stage,)
    log.info("ranking benchmark in %s: stages %s, %d worker(s) on %s", run.path, ", ".join(stages), workers,
             ", ".join(devices) or "the CPU")
    if "truth" in stages:
        units = protocol.truth_units(options, plan["truth_seeds"])
        entries = run_units(units, run.path / "truth.jsonl", workers, desc="ground truth (cell, seed)",
                            devices=devices)
        save_json(run.path / "ground_truth.json", protocol.truth_document(entries, options, command))
        log.info("ground truth: %s", run.path / "ground_truth.json")
    if "search" in stages:
        units = protocol.search_units(options, variants, plan["seeds"])
        run_units(units, run.path / "search.jsonl", workers, desc="searches (variant, seed)", devices=devices)
    if "report" not in stages:
        return None
    truth_path = Path(args.ranking_truth) if args.ranking_truth else run.path / "ground_truth.json"
    if not truth_path.is_file():
        raise UserError(f"no ground truth at {truth_path}: run --ranking_stage=truth first or pass --ranking_truth=FILE")
    truth = protocol.load_truth(truth_path, options)
    from experiments.workers import read_ledger

    searches = [entry["record"] for entry in read_ledger(run.path / "search.jsonl").values()]
    results = report.summarise(truth, searches, variants)
    results["truth_file"] = str(truth_path)
    return report.write(run.path, results)
