"""``--mode=continual``: build the sequence, run every seed x strategy, write the run directory.

Files: ``continual_results.json`` (configuration, per-seed accuracy matrices and curves, every
summary with its intervals), ``continual.png``, ``metrics.jsonl`` (one line per finished task),
TensorBoard scalars, ``checkpoints/latest.pt`` after every task; the markdown table goes to stdout.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from data.tasks import build_sequence
from engine import first_nonfinite, require_kind, stamp
from experiments.continual import ContinualConfig, config_dict, run_experiment
from experiments.continual_report import forgetting_table, markdown, plot, summarise
from engine.runlog import RunDir, discard_on_failure
from engine.stopping import Stopped
from utils import UserError, atomic_write_bytes, save_json

log = logging.getLogger("wpl")


RESULTS = ("continual_results.json",)


def run_continual(run_path: Path, benchmark: str, scenario: str, data_dir: str, cfg: ContinualConfig, *,
                  num_tasks: int = 5, task_split: str = "", resume: bool = False, use_tensorboard: bool = True,
                  forgetting_of: str = "") -> dict[str, Any]:
    seq = build_sequence(benchmark, scenario, data_dir, num_tasks=num_tasks, seed=cfg.first_seed, task_split=task_split)
    run = RunDir(run_path, use_tensorboard)
    wanted = {"benchmark": benchmark, "scenario": scenario, **config_dict(cfg)}
    with discard_on_failure(run):  # a refused or failed start leaves no new folder behind, and rewrites nothing
        run.refuse_unless_resuming(resume, RESULTS, kind="continual")
        found = run.load_latest(torch.device("cpu")) if resume else None
        state = resumable_state(found, wanted) if found is not None else None
        run.remove_stale_temps()
        if state is not None:
            records = state["records"]
            atomic_write_bytes(run.metrics_path,
                               lambda f: f.write("".join(json.dumps(r) + "\n" for r in records).encode()))
            log.info("resuming %s: %d tasks done", run.path, len(records))
        elif run.metrics_path.exists():  # lines of an interrupted first task, with no checkpoint to match
            run.metrics_path.unlink()
    state = state or {"config": wanted, "records": [], "runs": {}, "current": None}

    def on_task(record: dict[str, Any]) -> None:
        run.append_metrics(record)
        run.scalars({f"{record['strategy']}/seed{record['seed']}/acc_task{j}": a for j, a in enumerate(record["accuracy"])},
                    record["task"])
        run.scalars({f"{record['strategy']}/seed{record['seed']}/avg_acc_seen":
                     sum(record["accuracy"][: record["task"] + 1]) / (record["task"] + 1)}, record["task"])

    def on_task_then_save(record: dict[str, Any]) -> None:
        refuse_nonfinite(state, record, run)
        on_task(record)
        state["records"] = run.read_metrics()
        run.save_checkpoint(stamp("continual", {**state, "epoch": len(state["records"]), "model": {}}), 0,
                            numbered=False, keep=0)

    # run_experiment updates ``state`` in place before each on_task call, which then writes the checkpoint
    try:
        with discard_on_failure(run, unless_checkpointed=True):
            progress = run_experiment(seq, cfg, state, lambda _: None, on_task_then_save)
    except Stopped as stop:  # the line main.py prints: what the checkpoint holds (the resume command is added there)
        latest = run.latest_checkpoint()
        stop.saved = (f"{latest} holds {len(state['records'])} finished task(s) of "
                      f"{cfg.seeds * len(cfg.strategies) * len(seq.tasks)}" if latest else "nothing saved yet (no task finished)")
        run.close()
        raise
    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.seeds))
    summary = summarise(progress["runs"], cfg.strategies, seeds)
    names = [t.name for t in seq.tasks]
    results = {"config": state["config"], "tasks": names, "runs": progress["runs"], "summary": summary}
    save_json(run.path / "continual_results.json", results)
    try:
        plot(progress["runs"], cfg.strategies, seeds, names, run.path / "continual.png")
    except OSError as err:  # a full disk while matplotlib writes: the results are already safe
        raise UserError(f"cannot write {run.path / 'continual.png'} ({err.strerror or err}); the results are kept in "
                        f"{run.path / 'continual_results.json'}") from err
    finally:
        run.close()
    title = f"{benchmark} ({seq.scenario} scenario), {cfg.seeds} seeds, {cfg.iters} iterations per task"
    print(markdown(summary, title))
    shown = forgetting_of or next((s for s in cfg.strategies if s not in ("none", "joint")), cfg.strategies[0])
    print("\n" + forgetting_table(summary, shown, names))
    print(f"\nwritten: {run.path / 'continual_results.json'}, {run.path / 'continual.png'}")
    return results


def resumable_state(found: tuple[Path, dict[str, Any]], wanted: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's state when it is a continual one of this configuration, else one line.

    It came through ``runlog.load_checkpoint`` (``weights_only=True``: a planted pickle runs nothing),
    so only its own keys are checked here."""
    path, state = found
    require_kind(state, path, "continual", "use another --comment")
    if not isinstance(state.get("records"), list) or not isinstance(state.get("runs"), dict) or "current" not in state:
        raise UserError(f"checkpoint {path} is incomplete (lacks or mangles records/runs/current)")
    if state["config"] != wanted:
        differ = sorted(k for k in set(wanted) | set(state["config"]) if state["config"].get(k) != wanted.get(k))
        raise UserError(f"{path} was written with another configuration ({', '.join(differ[:4])} differ): "
                        f"use another --comment")
    return {k: state[k] for k in ("config", "records", "runs", "current")}


def refuse_nonfinite(state: dict[str, Any], record: dict[str, Any], run: RunDir) -> None:
    """Never save a state that is not finite: the stop line names the last checkpoint that is."""
    current = state.get("current") or {}
    bad = first_nonfinite([("weight", current.get("model") or {}), ("regulariser", current.get("reg") or {})])
    if bad is None and all(isinstance(a, (int, float)) and math.isfinite(a) for a in record["accuracy"]):
        return
    where = f"{record['strategy']} seed {record['seed']} task {record['task']}"
    kept = run.latest_checkpoint()
    raise UserError(f"{where} ended with non-finite {bad or 'accuracy'}: not saved; "
                    f"{f'{kept} (the last finite state) is kept' if kept else 'no checkpoint was written'}; "
                    f"lower --cl_lr or the strategy's strength")
