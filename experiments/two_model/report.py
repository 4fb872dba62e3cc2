"""Outputs of the two-model example: the text table, the figure, ``toy_results.json``, and the whole run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from analysis import plots
from analysis.tables import aligned, pm
from data.tasks import load_mnist
from experiments.two_model.protocol import ToyConfig, run_protocol

COLUMNS = (("a_baseline", "A before"), ("a_final", "A after"), ("a_drop", "A drop"),
           ("a_worst_drop", "A worst drop"), ("b_final", "B final"))


def format_table(results: dict[str, Any]) -> str:
    """One row per (k, alpha): accuracies in percent, mean ± std over seeds."""
    head = ["k", "alpha", *(title for _, title in COLUMNS)]
    rows = [[row["k"], f"{row['alpha']:g}", *(pm(row[key]["mean"], row[key]["std"], "6.2f", "4.2f") for key, _ in COLUMNS)]
            for row in results["results"]]
    return aligned(head, rows, [2, 8, *[13] * len(COLUMNS)])


def plot(results: dict[str, Any], path: Path) -> None:
    """One panel per k: A's (blue) and B's (orange) test accuracy over B's iterations, ± std shaded.

    Line style tells the alpha apart (dashed: alpha = 0, no penalty). The y axis starts a little below
    A's lowest point, so B's first, near-chance evaluations fall off the bottom.
    """
    ks = sorted({row["k"] for row in results["results"]})
    alphas = sorted({row["alpha"] for row in results["results"] if row["alpha"] != 0})
    styles = ["-", ":", "-."]
    name = results["config"].get("strategy", "wpl").upper()  # the importance measure behind the penalty
    fig, axes = plots.panels(1, len(ks), (4.5 * len(ks), 3.8), sharey=True)
    lowest = min(min(row["curves"]["a_mean"]) for row in results["results"])
    for ax, k in zip(axes[0], ks):
        for row in (r for r in results["results"] if r["k"] == k):
            curves = row["curves"]
            style = "--" if row["alpha"] == 0 else styles[alphas.index(row["alpha"]) % len(styles)]
            for model, color in (("a", "tab:blue"), ("b", "tab:orange")):
                label = f"{model.upper()}, " + (f"no {name}" if row["alpha"] == 0 else f"{name} α={row['alpha']:g}")
                plots.band(ax, curves["iterations"], curves[f"{model}_mean"], curves[f"{model}_std"],
                           color=color, style=style, label=label)
        ax.set_title(f"B shares A's first {k} layer{'s' if k > 1 else ''}")
        ax.set_xlabel("B training iterations")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].set_ylim(max(0.0, lowest - 5.0), 100.0)
    axes[0][-1].legend(loc="lower right", fontsize=8)
    plots.save(fig, path, dpi=120)


def write_outputs(results: dict[str, Any], output_dir: Path) -> None:
    """``toy_results.json`` and ``toy_forgetting.png`` in ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "toy_results.json").write_text(json.dumps(results, indent=1))
    plot(results, output_dir / "toy_forgetting.png")


def run(cfg: ToyConfig, data_dir: Path, output_dir: Path) -> dict[str, Any]:
    """MNIST from ``data_dir`` (see :func:`data.tasks.load_mnist`), the protocol, the files, the table on stdout."""
    results = run_protocol(*load_mnist(data_dir), cfg)
    write_outputs(results, output_dir)
    print(format_table(results))
    seeds = results.get("seeds_finished", cfg.seeds)
    print(f"{seeds} seed(s) in {results['seconds']:.1f} s; results and plot in {output_dir}")
    return results
