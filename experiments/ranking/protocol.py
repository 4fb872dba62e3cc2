"""The ranking benchmark's protocol: its budgets, its variants, its units and its ground-truth file.

The budget (``--ranking_size``) is one table of search options shared by the ground truth and the
searches, so both train the same model on the same data for the same number of batches:

* ``small`` (the committed results): embedding and hidden size 64, batch 64 x 35 tokens, 2 epochs of
  40 shared steps x 10 batches (800 batches, about 1.9 passes over PTB's training split). Measured on
  one core of this project's 2-core machine: about 0.4 s per batch (75-80 % of it the 10,000-word
  decoder and its softmax) and 5 s to score one cell on the whole validation split, so one cell trained
  alone costs about 5.5 minutes and the 32 x 3 ground truth about 9 CPU-hours, the budget the issue
  allows; a search unit costs about 11 minutes, half of it scoring all 32 cells after each epoch
  (docs/benchmarks.md).
* ``tiny``: a few batches at width 8, for the tests and a first look on any corpus.

WPL runs at the strength and clip of the paper's README command (alpha 60, Fisher clip 10) from the
first epoch (the command's 5-epoch delay would leave no WPL epoch at this budget). REINFORCE's
controller phase is shortened in proportion (100 steps per epoch instead of the paper's
1,500 per 50 shared steps, i.e. 2.5 per shared step instead of 30): at this budget the paper's ratio
would triple the cost of a REINFORCE unit (docs/fidelity.md).
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.workers import Unit, settings
from options.safe_io import read_json
from utils import UserError

SIZES: dict[str, dict[str, Any]] = {
    "small": {"shared_embed": 64, "shared_hid": 64, "batch_size": 64, "test_batch_size": 64, "shared_rnn_max_length": 35,
              "shared_max_step": 40, "num_batch_per_iter": 10, "max_epoch": 2, "forgetting_eval_batches": 1,
              "train_controller": True, "controller_max_step": 100, "log_step": 0,
              "alpha_fisher": 60.0, "fisher_clip_by_norm": 10.0, "shared_lr_anneal": 0.5},
    "tiny": {"shared_embed": 8, "shared_hid": 8, "batch_size": 4, "test_batch_size": 4, "shared_rnn_max_length": 5,
             "shared_max_step": 2, "num_batch_per_iter": 2, "max_epoch": 2, "forgetting_eval_batches": 1,
             "train_controller": True, "controller_max_step": 2, "log_step": 0,
             "alpha_fisher": 60.0, "fisher_clip_by_norm": 10.0, "shared_lr_anneal": 0.5},
}
# The searches' own options (WPL at the paper's README command's strength and clip, the controller phase, the
# forgetting metric): a cell trained alone reads none of them, so they are not part of its unit.
SEARCH_ONLY = ("alpha_fisher", "fisher_clip_by_norm", "train_controller", "controller_max_step", "forgetting_eval_batches")
# A sampler's own options in this space, added to its units only. NAO: NAO-WS's pool ratios (1000 : 100 : 300 : 50)
# scaled to a space of 32 cells, and a controller round after every epoch (2 epochs leave no room for NAO-WS's 200).
SAMPLER_OPTIONS: dict[str, dict[str, Any]] = {
    "nao": {"nao_pool": 8, "nao_top_k": 2, "nao_new": 4, "nao_random": 1, "nao_round_every": 1, "nao_controller_epochs": 100},
}
# What a ground truth must share with a search scored against it: the model, the data and the budget.
TRUTH_KEYS = ("dataset", "shared_embed", "shared_hid", "batch_size", "shared_rnn_max_length", "shared_max_step",
              "num_batch_per_iter", "max_epoch", "shared_lr", "shared_lr_anneal", "shared_dropout", "preset")
IMPORTANCES = ("none", "fisher", "mas", "si", "l2")
TRUTH_KIND = "wpl-ranking-ground-truth"
NUM_CELLS = 32


def options_for(size: str, args: Any) -> dict[str, Any]:
    """The searches' options: the size's table plus the data and the model choices of this command line, and
    ``--ranking_fisher_clip`` in place of the size's Fisher clip when given (a search-only option: the ground truth
    of the size still applies, through ``--ranking_truth``)."""
    options = {**SIZES[size], "dataset": args.dataset, "data_dir": args.data_dir, "shared_lr": args.shared_lr,
               "shared_dropout": args.shared_dropout, "preset": args.preset}
    if getattr(args, "ranking_fisher_clip", 0.0) > 0:
        options["fisher_clip_by_norm"] = args.ranking_fisher_clip
    return options


def parse_variants(texts: Sequence[str]) -> list[tuple[str, str]]:
    """``sampler:importance`` pairs, checked (``random:none``, ``reinforce:fisher``, ...)."""
    from samplers import SAMPLERS

    variants = []
    for text in texts:
        sampler, _, importance = text.partition(":")
        if sampler not in SAMPLERS or importance not in IMPORTANCES:
            raise UserError(f"--ranking_variants: {text!r} is not sampler:importance (samplers: {', '.join(SAMPLERS)}; "
                            f"importances: {', '.join(IMPORTANCES)})")
        variants.append((sampler, importance))
    if len(set(variants)) != len(variants):
        raise UserError("--ranking_variants: a variant is repeated")
    return variants


def truth_units(options: dict[str, Any], seeds: Sequence[int]) -> list[Unit]:
    alone = {k: v for k, v in options.items() if k not in SEARCH_ONLY}
    return [Unit(f"truth/c{c:02d}/s{seed}", "experiments.ranking.run:train_alone",
                 {"cell": f"c{c:02d}", "seed": seed, "options": alone})
            for seed in seeds for c in range(NUM_CELLS)]  # seed-major: a stopped run has whole seeds first


def search_units(options: dict[str, Any], variants: Sequence[tuple[str, str]], seeds: Sequence[int]) -> list[Unit]:
    return [Unit(f"search/{sampler}:{importance}/s{seed}", "experiments.ranking.run:search_and_rank",
                 {"sampler": sampler, "importance": importance, "seed": seed,
                  "options": {**options, **SAMPLER_OPTIONS.get(sampler, {})}})
            for seed in seeds for sampler, importance in variants]  # seed-major: paired variants finish together


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def truth_document(entries: dict[str, dict[str, Any]], options: dict[str, Any], command: str) -> dict[str, Any]:
    """The ground-truth file: per cell its architecture and one run per seed (with timings). Only seeds
    finished for all 32 cells are written (a stopped run's partial seed stays in its ledger)."""
    from spaces.rnn32 import all_cells

    cells: dict[str, Any] = {f"c{i:02d}": {"arch": a.to_dict(), "runs": []} for i, a in enumerate(all_cells())}
    counts: dict[int, int] = {}
    for entry in entries.values():
        counts[entry["record"]["seed"]] = counts.get(entry["record"]["seed"], 0) + 1
    for entry in entries.values():
        r = entry["record"]
        if counts[r["seed"]] < NUM_CELLS:
            continue
        cells[r["cell"]]["runs"].append({"seed": r["seed"], "valid_ppl": r["valid_ppl"], "test_ppl": r["test_ppl"],
                                         "train_ce": r["train_ce"], "seconds": entry["seconds"]})
    for cell in cells.values():
        cell["runs"].sort(key=lambda run: run["seed"])
    return {"kind": TRUTH_KIND, "format": 1, "space": "rnn32", "command": command, "commit": commit(),
            "options": settings(options), "cells": cells}


def load_truth(path: Path, options: dict[str, Any] | None = None, min_seeds: int = 1) -> dict[str, Any]:
    """A ground-truth file, validated: 32 cells of this space, the same seeds each, finite perplexities, and
    (given ``options``) the same model, data and budget as the searches it will score. One line otherwise."""
    from spaces.rnn32 import all_cells

    doc = read_json(path, "ground-truth file")
    where = f"{path}: not a ground truth of this benchmark"
    if not isinstance(doc, dict) or doc.get("kind") != TRUTH_KIND or not isinstance(doc.get("cells"), dict):
        raise UserError(f"{where} (expected kind {TRUTH_KIND!r})")
    cells = doc["cells"]
    expected = {f"c{i:02d}": a.to_dict() for i, a in enumerate(all_cells())}
    if sorted(cells) != sorted(expected) or any(cells[c].get("arch") != expected[c] for c in expected):
        raise UserError(f"{where} (its cells are not the 32 cells of the rnn32 space, in id order)")
    seeds = None
    for cid, cell in cells.items():
        runs = cell.get("runs")
        if not isinstance(runs, list) or len(runs) < min_seeds:
            raise UserError(f"{path}: cell {cid} has {len(runs) if isinstance(runs, list) else 0} runs, fewer than {min_seeds}")
        these = [r.get("seed") for r in runs]
        if seeds is not None and these != seeds:
            raise UserError(f"{path}: cell {cid} has seeds {these}, others {seeds}: every cell needs the same seeds")
        seeds = these
        for r in runs:
            for key in ("valid_ppl", "test_ppl"):
                value = r.get(key)
                if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                    raise UserError(f"{path}: cell {cid} seed {r.get('seed')}: {key} is {value!r}, not a finite perplexity")
    if options is not None:
        saved = doc.get("options", {})
        differ = [k for k in TRUTH_KEYS if saved.get(k) != options.get(k)]
        if differ:
            k = differ[0]
            raise UserError(f"{path} was trained with {k}={saved.get(k)!r}, this run uses {options.get(k)!r}: a ground "
                            f"truth scores only searches of the same model, data and budget (--ranking_size)")
    return doc


def truth_matrix(doc: dict[str, Any], key: str = "valid_ppl") -> list[list[float]]:
    """``[seed][cell]`` perplexities of a validated ground truth."""
    cells = [doc["cells"][f"c{i:02d}"]["runs"] for i in range(NUM_CELLS)]
    return [[runs[s][key] for runs in cells] for s in range(len(cells[0]))]
