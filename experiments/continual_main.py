"""``--mode=continual``: build the sequence, run every seed x strategy, write the run directory.

Files: ``continual_results.json`` (configuration, per-seed accuracy matrices and curves, every
summary with its intervals), ``continual.png``, ``metrics.jsonl`` (one line per finished task),
TensorBoard scalars, ``checkpoints/latest.pt`` after every task; the markdown table goes to stdout.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from data.tasks import build_sequence
from experiments.continual import ContinualConfig, config_dict, run_experiment
from experiments.continual_report import forgetting_table, markdown, plot, summarise
from runlog import RunDir
from utils import UserError, atomic_write_bytes, save_json

log = logging.getLogger("wpl")


def run_continual(run_path: Path, benchmark: str, scenario: str, data_dir: str, cfg: ContinualConfig, *,
                  num_tasks: int = 5, task_split: str = "", resume: bool = False, use_tensorboard: bool = True,
                  forgetting_of: str = "") -> dict[str, Any]:
    seq = build_sequence(benchmark, scenario, data_dir, num_tasks=num_tasks, seed=cfg.first_seed, task_split=task_split)
    run = RunDir(run_path, use_tensorboard)
    checkpoint = run.checkpoints / "latest.pt"
    state = None
    if checkpoint.is_file():
        if not resume:
            raise UserError(f"{run.path} already holds a run: pass --resume=True to continue it, or another --comment")
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state["config"] != {"benchmark": benchmark, "scenario": scenario, **config_dict(cfg)}:
            raise UserError(f"{checkpoint} was written with another configuration: use another --comment")
        records = state["records"]
        atomic_write_bytes(run.metrics_path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in records).encode()))
        log.info("resuming %s: %d tasks done", run.path, len(records))
    elif run.metrics_path.exists():
        run.metrics_path.unlink()
    state = state or {"config": {"benchmark": benchmark, "scenario": scenario, **config_dict(cfg)}, "records": [],
                      "runs": {}, "current": None}

    def on_task(record: dict[str, Any]) -> None:
        run.append_metrics(record)
        run.scalars({f"{record['strategy']}/seed{record['seed']}/acc_task{j}": a for j, a in enumerate(record["accuracy"])},
                    record["task"])
        run.scalars({f"{record['strategy']}/seed{record['seed']}/avg_acc_seen":
                     sum(record["accuracy"][: record["task"] + 1]) / (record["task"] + 1)}, record["task"])

    def on_task_then_save(record: dict[str, Any]) -> None:
        on_task(record)
        state["records"] = run.read_metrics()
        run.save_checkpoint(state, 0, numbered=False, keep=0)

    # run_experiment updates ``state`` in place before each on_task call, which then writes the checkpoint
    progress = run_experiment(seq, cfg, state, lambda _: None, on_task_then_save)
    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.seeds))
    summary = summarise(progress["runs"], cfg.strategies, seeds)
    names = [t.name for t in seq.tasks]
    results = {"config": state["config"], "tasks": names, "runs": progress["runs"], "summary": summary}
    save_json(run.path / "continual_results.json", results)
    plot(progress["runs"], cfg.strategies, seeds, names, run.path / "continual.png")
    run.close()
    title = f"{benchmark} ({seq.scenario} scenario), {cfg.seeds} seeds, {cfg.iters} iterations per task"
    print(markdown(summary, title))
    shown = forgetting_of or next((s for s in cfg.strategies if s not in ("none", "joint")), cfg.strategies[0])
    print("\n" + forgetting_table(summary, shown, names))
    print(f"\nwritten: {run.path / 'continual_results.json'}, {run.path / 'continual.png'}")
    return results
