"""``--mode=continual``: build the sequence, run every seed x strategy, write the run directory.

Files: ``continual_results.json`` (configuration, per-seed accuracy matrices and curves, every
summary with its intervals), ``continual.png``, ``metrics.jsonl`` (one line per finished task),
TensorBoard scalars, ``checkpoints/latest.pt`` after every task; the markdown table goes to stdout.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any


from data.tasks import TaskSequence, build_sequence
from engine import first_nonfinite, stamp
from experiments.continual.run import ContinualConfig, config_dict, run_experiment
from experiments.continual.report import forgetting_table, markdown, plot, summarise
from engine.lifecycle import open_run
from engine.runlog import RunDir
from utils import UserError, save_json

log = logging.getLogger("wpl")


RESULTS = ("continual_results.json",)


def run_continual(run_path: Path, benchmark: str, scenario: str, data_dir: str, cfg: ContinualConfig, *,
                  num_tasks: int = 5, task_split: str = "", task_order: str = "fixed", resume: bool = False,
                  use_tensorboard: bool = True, forgetting_of: str = "", eval_split: str = "test",
                  valid_fraction: float = 0.1) -> dict[str, Any]:
    """``eval_split="valid"``: every metric on a held-out ``valid_fraction`` of each task's training data
    (``data.tasks.holdout``); the configuration records it (a fraction only then), so a resume with another split is
    refused."""
    held = {"eval_split": eval_split, **({"valid_fraction": valid_fraction} if eval_split == "valid" else {})}
    wanted = {"benchmark": benchmark, "scenario": scenario, "task_order": task_order, **held, **config_dict(cfg)}
    with open_run(run_path, "continual", resume, prefix=benchmark, results=RESULTS,
                  use_tensorboard=use_tensorboard) as opening:  # a refused or failed start rewrites nothing
        run = opening.run
        seq = build_sequence(benchmark, scenario, data_dir, num_tasks=num_tasks, seed=cfg.first_seed, task_split=task_split,
                             task_order=task_order, eval_split=eval_split, valid_fraction=valid_fraction)
        state = resumable_state(opening.checkpoint, opening.state, wanted) if opening.state is not None else None
        opening.commit(metrics=state["records"] if state is not None else None)
    state = state or {"config": wanted, "records": [], "runs": {}, "current": None}
    tasks_of: dict[int, list[str]] = {}  # each seed's task names: its digit pairs where the order is shuffled

    def sequence(seed: int) -> TaskSequence:
        """The first seed's sequence serves every seed unless the task order is drawn per seed."""
        one = seq if task_order == "fixed" or seed == cfg.first_seed else build_sequence(
            benchmark, scenario, data_dir, seed=seed, task_order=task_order, eval_split=eval_split,
            valid_fraction=valid_fraction)
        tasks_of[seed] = [t.name for t in one.tasks]
        return one

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
        run.save_checkpoint(to_checkpoint(state), 0, numbered=False, keep=0)

    # run_experiment updates ``state`` in place before each on_task call, which then writes the checkpoint
    total = cfg.seeds * len(cfg.strategies) * len(seq.tasks)
    progress = opening.run_loop(lambda: run_experiment(sequence, cfg, state, lambda _: None, on_task_then_save),
                                lambda: f"{len(state['records'])} finished task(s) of {total}",
                                nothing="no task finished", discard_until_saved=True)
    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.seeds))
    summary = summarise(progress["runs"], cfg.strategies, seeds)
    # the plot's and table's task labels: the digit pairs, or positions where each seed has its own pairs
    names = [t.name for t in seq.tasks] if task_order == "fixed" else [f"task{t}" for t in range(len(seq.tasks))]
    results = {"config": state["config"], "tasks": names, "tasks_by_seed": {str(s): tasks_of[s] for s in seeds},
               "runs": progress["runs"], "summary": summary}
    save_json(run.path / "continual_results.json", results)
    try:
        plot(progress["runs"], cfg.strategies, seeds, names, run.path / "continual.png")
    except OSError as err:  # a full disk while matplotlib writes: the results are already safe
        raise UserError(f"cannot write {run.path / 'continual.png'} ({err.strerror or err}); the results are kept in "
                        f"{run.path / 'continual_results.json'}") from err
    title = f"{benchmark} ({seq.scenario} scenario), {cfg.seeds} seeds, {cfg.iters} iterations per task" + (
        f", measured on a held-out {valid_fraction:g} of each task's training data" if eval_split == "valid" else "")
    print(markdown(summary, title))
    shown = forgetting_of or next((s for s in cfg.strategies if s not in ("none", "joint")), cfg.strategies[0])
    print("\n" + forgetting_table(summary, shown, names))
    print(f"\nwritten: {run.path / 'continual_results.json'}, {run.path / 'continual.png'}")
    return results


def resumable_state(path: Path | None, state: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """The loop's state from a checkpoint of this configuration (the lifecycle checked its kind), else one line.

    It came through ``runlog.load_checkpoint`` (``weights_only=True``: a planted pickle runs nothing),
    so only its own keys are checked here."""
    current = state["current"]
    if (not isinstance(state["records"], list) or not isinstance(state["runs"], dict)
            or not (current is None or isinstance(current, dict))):
        raise UserError(f"checkpoint {path} is incomplete (lacks or mangles records/runs/current)")
    if "protocol" not in state["config"]:  # written before --cl_protocol: untuned strengths, another Fisher
        raise UserError(f"{path} was written before --cl_protocol existed (other default strengths and EWC Fisher): "
                        f"finish that run with the version that wrote it, or start a new one with another --comment")
    # written before --cl_task_order / --cl_eval_split: the fixed pairs, measured on the test split
    saved = {"task_order": "fixed", "eval_split": "test", **state["config"]}
    if saved != wanted:
        differ = sorted(k for k in set(wanted) | set(saved) if saved.get(k) != wanted.get(k))
        hint = (" (a run made before --cl_strengths used the papers' strengths: --cl_strengths=published)"
                if "strengths" in differ or "options" in differ else "")
        raise UserError(f"{path} was written with another configuration ({', '.join(differ[:4])} differ){hint}: "
                        f"use another --comment")
    return {"config": saved, "records": state["records"], "runs": state["runs"],
            "current": None if current is None else {**current, "model": state["model"]}}


def to_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """The schema's form of the loop's state: the network of the run under way under ``model``."""
    current = state["current"] or {}
    return stamp("continual", {"epoch": len(state["records"]), "model": current.get("model", {}),
                               "config": state["config"], "records": state["records"], "runs": state["runs"],
                               "current": {k: v for k, v in current.items() if k != "model"} or None})


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
