"""``--mode=pathnet``: the transfer experiment over task pairs and seeds, resumable, with statistics.

Run directory ``<log_dir>/pathnet_<comment>/``: ``pathnet_results.json`` (configuration, every
seed's evolutions, the summary), ``pathnet.png`` (fitness over generations per variant),
``paths/<pair>_<variant>.png`` (seed 0's final paths: B's filled, A's outlined), ``metrics.jsonl``
(one record per finished seed), TensorBoard scalars and ``checkpoints/latest.pt`` (the finished
seeds: an interrupted experiment resumes after the last finished one with ``--resume=True``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from analysis import plots
from analysis.stats import interval_text, mean_ci, ratio_bootstrap
from engine import stamp
from experiments.pathnet.tournament import TournamentConfig
from experiments.pathnet.transfer import VARIANTS, NetConfig, binary_tasks, parse_pairs, run_pair
from models.pathnet import Path as NetPath
from engine.lifecycle import open_run
from engine.runlog import RunDir
from utils import UserError, save_json

log = logging.getLogger("wpl")
RESULTS = ("pathnet_results.json",)


def summarise(runs: Sequence[dict[str, Any]], variants: Sequence[str]) -> dict[str, Any]:
    """Per pair and variant: generations to converge on B, wall time, accuracies; speed-up over scratch."""
    out: dict[str, Any] = {}
    for pair in dict.fromkeys(r["pair"] for r in runs):
        rows = [r for r in runs if r["pair"] == pair]
        entry: dict[str, Any] = {"seeds": len(rows), "A_generations": mean_ci([r["A"]["generations"] for r in rows])}
        for v in variants:
            gens = [r["variants"][v]["generations"] for r in rows]
            entry[v] = {"generations": mean_ci(gens),
                        "converged": sum(r["variants"][v]["converged"] for r in rows),
                        "seconds": mean_ci([r["variants"][v]["seconds"] for r in rows]),
                        "A_accuracy_after": mean_ci([r["variants"][v]["A_accuracy_after"] for r in rows]),
                        "B_test_accuracy": mean_ci([r["variants"][v]["B_test_accuracy"] for r in rows])}
            if "scratch" in variants and v != "scratch":
                scratch = [r["variants"]["scratch"]["generations"] for r in rows]
                entry[v]["speedup_over_scratch"] = ratio_bootstrap(scratch, gens)
        out[pair] = entry
    return out


def markdown(summary: dict[str, Any], variants: Sequence[str]) -> str:
    lines = ["| pair | variant | seeds | generations on B (mean ± 95% CI) | converged | speed-up over scratch "
             "(bootstrap 95% CI) | A acc. after B (%) | B test acc. (%) | s per B |", "|---|---|---|---|---|---|---|---|---|"]
    for pair, entry in summary.items():
        for v in variants:
            e = entry[v]
            g = e["generations"]
            s = e.get("speedup_over_scratch")
            speed = interval_text(s, "ratio", ".2f") if s else "1 (reference)" if v == "scratch" else "—"
            lines.append(f"| {pair} | {v} | {entry['seeds']} | {g['mean']:.1f} ± {g['hi'] - g['mean']:.1f} | "
                         f"{e['converged']}/{entry['seeds']} | {speed} | {100 * e['A_accuracy_after']['mean']:.1f} | "
                         f"{100 * e['B_test_accuracy']['mean']:.1f} | {e['seconds']['mean']:.1f} |")
    return "\n".join(lines)


def plot(runs: Sequence[dict[str, Any]], variants: Sequence[str], path: Path) -> Path:
    pairs = list(dict.fromkeys(r["pair"] for r in runs))
    fig, axes = plots.panels(1, len(pairs), figsize=(5 * len(pairs), 3.6))
    for ax, pair in zip(axes[0], pairs):
        for k, v in enumerate(variants):
            for i, r in enumerate(r for r in runs if r["pair"] == pair):
                h = r["variants"][v]["history"]
                ax.plot(range(1, len(h) + 1), h, color=f"C{k}", alpha=0.35, lw=0.8, label=v if i == 0 else None)
        ax.set_title(f"task B of {pair}")
        ax.set_xlabel("generation (tournament)")
        ax.set_ylabel("best training accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    plots.save(fig, path, dpi=110)
    return path


def run_pathnet(run_path: Path, data_dir: str, tasks_text: str, variants: Sequence[str], seeds: Sequence[int],
                net_cfg: NetConfig, cfg: TournamentConfig, resume: bool, use_tensorboard: bool) -> dict[str, Any]:
    pairs = parse_pairs(tasks_text)
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        raise UserError(f"--pathnet_variants: unknown {', '.join(unknown) or '(none given)'} ({', '.join(VARIANTS)})")
    config = {"tasks": tasks_text, "variants": list(variants), "seeds": list(seeds), "net": asdict(net_cfg),
              "evolution": asdict(cfg)}
    with open_run(run_path, "pathnet", resume, prefix="pathnet", results=RESULTS,
                  use_tensorboard=use_tensorboard) as opening:  # a refused or failed start rewrites nothing
        run = opening.run
        tasks = binary_tasks(data_dir, sorted({t for p in pairs for t in p}), raw=cfg.data == "tf")
        runs = finished_runs(opening.checkpoint, opening.state, config) if opening.state is not None else []
        opening.commit(len(runs))
    done = {(r["pair"], r["seed"]) for r in runs}
    todo = [(p, s) for p in pairs for s in seeds if (f"{p[0]}->{p[1]}", s) not in done]
    if done:
        log.info("resuming %s: %d of %d (pair, seed) runs done", run.path, len(done), len(done) + len(todo))
    opening.run_loop(lambda: run_all(run, todo, tasks, variants, net_cfg, cfg, config, runs),
                     lambda: f"{len(runs)} finished (pair, seed) run(s) of {len(done) + len(todo)}" if runs else "",
                     nothing="no (pair, seed) run finished", discard_until_saved=True)
    summary = summarise(runs, variants)
    results = {"config": config, "runs": runs, "summary": summary}
    save_json(run.path / "pathnet_results.json", results)
    try:
        draw_all(run, runs, variants, seeds, net_cfg)
    except OSError as err:  # a full disk while Pillow or matplotlib writes: the results are already safe
        raise UserError(f"cannot write the drawings in {run.path} ({err.strerror or err}); the results are kept in "
                        f"{run.path / 'pathnet_results.json'}") from err
    text = markdown(summary, variants)
    print(text)
    print(f"\nwritten: {run.path / 'pathnet_results.json'}, {run.path / 'pathnet.png'}")
    return results


def finished_runs(path: Path | None, state: dict[str, Any], config: dict[str, Any]) -> list[dict[str, Any]]:
    """The finished (pair, seed) runs of a PathNet checkpoint of this configuration (the lifecycle checked its
    kind), else one line."""
    runs = state["runs"]
    if not isinstance(runs, list) or not all(isinstance(r, dict) and "pair" in r and "seed" in r for r in runs):
        raise UserError(f"checkpoint {path} is incomplete (lacks or mangles runs)")
    if state["config"] != config:
        raise UserError(f"{path} was written with another configuration: use another --comment")
    return list(runs)


def run_all(run: RunDir, todo: list[tuple[tuple[str, str], int]], tasks: Any, variants: Sequence[str], net_cfg: NetConfig,
            cfg: TournamentConfig, config: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """Every (pair, seed) still to do; ``runs`` grows, and a checkpoint follows each one."""
    for pair, seed in tqdm(todo, desc="pathnet pairs x seeds", disable=None):
        def scalar(name: str, generation: int, fitness: float, tag: str = f"{pair[0]}-{pair[1]}/seed{seed}") -> None:
            run.scalars({f"{tag}/{name}_fitness": fitness}, generation)

        result = run_pair(tasks, pair, seed, variants, net_cfg, cfg, on_generation=scalar)
        runs.append(result)
        record = {"pair": result["pair"], "seed": seed, "A_generations": result["A"]["generations"],
                  **{f"{v}_generations": result["variants"][v]["generations"] for v in variants},
                  **{f"{v}_A_accuracy_after": result["variants"][v]["A_accuracy_after"] for v in variants}}
        run.append_metrics(record)
        run.save_checkpoint(stamp("pathnet", {"epoch": len(runs), "config": config, "runs": runs}),
                            len(runs) - 1, numbered=False, keep=0)
        log.info("pathnet %s seed %d: A %d generations; B %s", result["pair"], seed, result["A"]["generations"],
                 ", ".join(f"{v} {result['variants'][v]['generations']}" for v in variants))


def draw_all(run: RunDir, runs: list[dict[str, Any]], variants: Sequence[str], seeds: Sequence[int],
             net_cfg: NetConfig) -> None:
    """The fitness figure and the first seed's paths."""
    plot(runs, variants, run.path / "pathnet.png")
    for r in runs:
        if r["seed"] != seeds[0]:
            continue
        a = NetPath.from_dict(r["A"]["best_path"], net_cfg.layers, net_cfg.modules)
        for v in variants:
            b = NetPath.from_dict(r["variants"][v]["best_path"], net_cfg.layers, net_cfg.modules)
            b.draw(net_cfg.modules, run.path / "paths" / f"{r['pair'].replace('->', '_to_')}_{v}.png", frozen=a,
                   title=f"{r['pair']} {v}: B's path (filled), A's (outlined)")

