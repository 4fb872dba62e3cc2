"""``--mode=nao_wpl``: NAO vs NAO + WPL's units and report, in one run folder.

``<log_dir>/nao_wpl_<comment>/`` holds ``nao_wpl.json`` (the protocol: options, dropouts, seeds),
``units.jsonl`` (the ledger of finished units, :mod:`experiments.workers`) and, once the units ran,
``nao_wpl_results.json``, ``nao_wpl.md`` and ``nao_wpl.png``. ``--resume=True`` with the same options
continues a stopped run, losing at most the unit that was running; dropouts and seeds may be added
(only the new units run). A folder holding a run is never started afresh.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from engine import lifecycle
from engine.lifecycle import Opening
from experiments.nao_wpl import protocol, report
from experiments.protocol_files import bind_plan
from experiments.workers import default_workers, read_ledger, run_units, settings, unit_devices
from utils import UserError

log = logging.getLogger("wpl")
LEDGER = "units.jsonl"
PLAN = "nao_wpl.json"
GROWABLE = ("dropouts", "seeds")  # a resume may add to these: every unit stands alone


def describe(args: argparse.Namespace) -> dict[str, Any]:
    """The protocol a run folder is bound to: a resume must ask for the same (more dropouts or seeds allowed)."""
    options = protocol.options_for(args.nao_wpl_size, args)
    return {"mode": "nao_wpl", "size": args.nao_wpl_size, "options": settings(options),
            "dropouts": protocol.parse_dropouts(args.nao_wpl_dropouts), "seeds": protocol.seeds_of(args)}


def open_run(args: argparse.Namespace, plan: dict[str, Any]) -> tuple[Opening, dict[str, Any]]:
    """A new folder, or this protocol's folder with ``--resume=True`` (the ledger stands for a checkpoint);
    anything else one line. Returns the opening and the plan with what a resume adds merged in."""
    with lifecycle.open_run(lifecycle.run_path(args.log_dir, "nao_wpl", args.comment), "nao_wpl", args.resume,
                            prefix="nao_wpl", results=(LEDGER, PLAN), use_tensorboard=False,
                            checkpointed=False) as opening:
        plan = bind_plan(opening.run, PLAN, plan, GROWABLE, "dropouts or seeds", (LEDGER,))
        opening.commit()
    return opening, plan


def run_nao_wpl(args: argparse.Namespace) -> dict[str, Any]:
    if args.workers < 0:
        raise UserError("--workers must be >= 0 (0: one per core)")
    opening, plan = open_run(args, describe(args))
    return opening.run_loop(lambda: run_and_report(args, opening.run.path, plan), lambda: "", nothing="no unit finished")


def run_and_report(args: argparse.Namespace, folder: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """Every unit not yet in the ledger (seed-major: whole pairs first), then the report of all of them."""
    devices = unit_devices(args.num_gpu)
    workers = args.workers or (len(devices) if devices else default_workers())
    options = protocol.options_for(args.nao_wpl_size, args)
    units = protocol.units(options, plan["dropouts"], plan["seeds"])
    log.info("NAO vs NAO + WPL in %s: %d units, %d worker(s) on %s", folder, len(units), workers,
             ", ".join(devices) or "the CPU")
    run_units(units, folder / LEDGER, workers, desc="searches (variant, dropout, seed)", devices=devices)
    records = [entry["record"] for entry in read_ledger(folder / LEDGER).values()]
    results = report.summarise(records, plan["dropouts"], int(options["start_using_fisher"]))
    results.update({"size": plan["size"], "options": plan["options"], "seeds": plan["seeds"],
                    "unit_seconds": {key: entry["seconds"] for key, entry in read_ledger(folder / LEDGER).items()}})
    return report.write(folder, results)
