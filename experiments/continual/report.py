"""Metrics of task sequences (from accuracy matrices and curves), summaries over seeds, table and figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from analysis import plots
from analysis.stats import bootstrap_ci, mean_ci, paired_difference
from analysis.tables import markdown as markdown_table
from analysis.tables import pm

METRICS = ("average_accuracy", "backward_transfer", "forgetting", "integrated_loss")


def task_forgetting(R: Sequence[Sequence[float]]) -> list[float]:
    """Chaudhry et al. (2018): for each task but the last, best earlier accuracy minus the final one."""
    T = len(R)
    return [max(R[l][j] for l in range(j, T - 1)) - R[T - 1][j] for j in range(T - 1)]


def integrated_loss(curve: Sequence[dict[str, Any]], num_tasks: int) -> list[float]:
    """For each task, its test loss averaged over every evaluation from its introduction to the end."""
    return [float(np.mean([c["loss"][j] for c in curve if c["task"] >= j])) for j in range(num_tasks)]


def run_metrics(R: Sequence[Sequence[float]], curve: Sequence[dict[str, Any]]) -> dict[str, Any]:
    T = len(R)
    forget = task_forgetting(R)
    losses = integrated_loss(curve, T)
    return {"average_accuracy": float(np.mean(R[-1])),
            "backward_transfer": float(np.mean([R[-1][j] - R[j][j] for j in range(T - 1)])) if T > 1 else 0.0,
            "forgetting": float(np.mean(forget)) if forget else 0.0, "task_forgetting": forget,
            "integrated_loss": float(np.sum(losses)), "task_integrated_loss": losses}


def summarise(runs: dict[str, dict[str, Any]], strategies: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Mean, 95% t and bootstrap intervals of every metric; paired differences to ``none``."""
    per = {s: [run_metrics(runs[f"{s}/{k}"]["R"], runs[f"{s}/{k}"]["curve"]) for k in seeds] for s in strategies}
    out: dict[str, Any] = {}
    for s in strategies:
        entry: dict[str, Any] = {}
        for m in METRICS:
            values = [r[m] for r in per[s]]
            entry[m] = {**mean_ci(values), "bootstrap95": bootstrap_ci(values)}
            if "none" in per and s != "none":
                entry[m]["paired_vs_none"] = paired_difference(values, [r[m] for r in per["none"]])
        T = len(per[s][0]["task_forgetting"])
        entry["task_forgetting"] = [mean_ci([r["task_forgetting"][j] for r in per[s]]) for j in range(T)]
        entry["seconds_per_run"] = float(np.mean([runs[f"{s}/{k}"]["seconds"] for k in seeds]))
        out[s] = entry
    return out


def fmt(ci: dict[str, float], scale: float = 100.0) -> str:
    """``mean ± half-width`` of a t interval, scaled (to percent by default)."""
    return pm(scale * ci["mean"], scale * (ci["hi"] - ci["mean"]))


def markdown(summary: dict[str, Any], title: str) -> str:
    head = ["strategy", "avg acc (%)", "BWT (pts)", "forgetting (pts)", "integrated loss", "paired acc vs none", "s/run"]
    rows = [[s, fmt(e["average_accuracy"]), fmt(e["backward_transfer"]), fmt(e["forgetting"]),
             fmt(e["integrated_loss"], 1.0),
             fmt(e["average_accuracy"]["paired_vs_none"]) if "paired_vs_none" in e["average_accuracy"] else "-",
             f"{e['seconds_per_run']:.1f}"] for s, e in summary.items()]
    return markdown_table(head, rows, title)


def forgetting_table(summary: dict[str, Any], strategy: str, task_names: Sequence[str]) -> str:
    rows = [[name, fmt(ci)] for name, ci in zip(task_names, summary[strategy]["task_forgetting"])]
    return markdown_table([f"Task ({strategy})", "Forgetting (%)"], rows)


def plot(runs: dict[str, dict[str, Any]], strategies: Sequence[str], seeds: Sequence[int], task_names: Sequence[str],
         path: Path) -> None:
    """Top row: test accuracy of every task over training (mean over seeds), one panel per strategy.
    Bottom row: the mean accuracy matrix R[i][j]."""
    n = len(strategies)
    fig, axes = plots.panels(2, n, (3.2 * n, 6.2))
    for col, s in enumerate(strategies):
        curves = [runs[f"{s}/{k}"]["curve"] for k in seeds]
        steps = [c["step"] for c in curves[0]]
        acc = np.mean([[c["accuracy"] for c in curve] for curve in curves], axis=0)
        ax = axes[0][col]
        for j, name in enumerate(task_names):
            start = next(i for i, c in enumerate(curves[0]) if c["task"] >= j)
            ax.plot(steps[start:], acc[start:, j], label=name)
        ax.set(title=s, xlabel="iteration", ylim=(0, 1.02), ylabel="test accuracy" if col == 0 else None)
        if col == 0:
            ax.legend(fontsize=7)
        R = np.mean([runs[f"{s}/{k}"]["R"] for k in seeds], axis=0)
        plots.heatmap(axes[1][col], R, vmin=0, vmax=1, text=lambda v: f"{100 * v:.0f}", dark_below=0.6)
        axes[1][col].set(xlabel="task tested j", ylabel="after task i" if col == 0 else None)
    plots.save(fig, path, dpi=90)
