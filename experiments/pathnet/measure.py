"""PathNet's two styles measured: generations to the threshold, from scratch and with transfer, paired.

    python -m experiments.pathnet.measure --data_dir=../shared/data [--styles=tf,paper] [--seeds=10]
        [--pairs=1v3,1v2+1v2,1v3+4v5,6v7+6v7,4v5] [--ledger=FILE] [--out=DIR] [--workers=1] [--report_only]
        [-- OPTIONS]

One unit is (style, pair, seed): task A evolved, then B evolved twice on the same batches, from a
fresh network (``scratch``) and with A's path frozen (``pathnet``), exactly as ``--mode=pathnet
--pathnet_style=<style> --pathnet_variants=scratch,pathnet`` runs that seed (options after ``--`` are
added to every unit's command line, e.g. ``--pathnet_max_generations=1000``). Units run through
:func:`experiments.workers.run_units`: one JSON line per finished unit in the ledger, so a killed
measurement continues where it stopped. They run in priority order: every style on the first pair,
then the next pair. The report (``pathnet_measure.json``, ``.md`` and ``.png`` in ``--out``) gives,
per style and pair, generations on B (mean, 95 % t interval), how many converged, and the speed-up
``mean(scratch) / mean(pathnet)`` with a paired bootstrap 95 % interval, beside the TF code's figures.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from analysis import plots
from analysis.stats import interval_text, mean_ci, ratio_bootstrap
from experiments.workers import Unit, add_ledger_options, protocol_cli, read_ledger, run_units
from utils import save_json

log = logging.getLogger("wpl")
PAIRS = "1v3,1v2+1v2,1v3+4v5,6v7+6v7,4v5"
BASE_SEED = 12345  # --random_seed's default: unit seed k is BASE_SEED + k, as --seeds=10 runs them
EXTRA_HELP = "options added to every unit's command line (after --)"

# The TF code's README ("Results") and its logs binary_mnist_res/<A>_<B>.log (1000 runs each, "TASK1:g,TASK2:g"):
# scratch on B is the mean TASK1 of the log whose first task is B; transfer is the mean TASK2 of the A_B log
# (two independent sets of runs: the TF code never runs both on the same batches). Generations are its loop index.
TF_REPORTED: dict[str, tuple[float, float]] = {
    "1v3->1v2": (196.59, 118.32), "1v2->1v3": (168.25, 82.64),
    "4v5->6v7": (93.69, 55.91), "6v7->4v5": (270.68, 149.31),
}


def measure_unit(style: str, pair: str, seed: int, data_dir: str, extra: Sequence[str] = (),
                 variants: Sequence[str] = ("scratch", "pathnet")) -> dict[str, Any]:
    """One (style, pair, seed): A, then B from scratch and with A's path frozen (histories left out);
    the ablation (experiments/pathnet/ablation.py) asks for more ``variants`` of the same seed."""
    import config
    from experiments.pathnet.transfer import binary_tasks, parse_pairs, run_pair
    from modes.pathnet import pathnet_configs

    args = config.parse_args(["--mode=pathnet", f"--pathnet_style={style}", f"--tasks={pair}", f"--data_dir={data_dir}",
                              *extra])
    net, evolution = pathnet_configs(args)
    (a, b), = parse_pairs(pair)
    tasks = binary_tasks(data_dir, [a, b], raw=evolution.data == "tf")
    result = run_pair(tasks, (a, b), seed, list(variants), net, evolution)
    for evo in [result["A"], *result["variants"].values()]:
        evo.pop("history")
    return {"style": style, **result}


def units(styles: Sequence[str], pairs: Sequence[str], seeds: int, data_dir: str, extra: Sequence[str]) -> list[Unit]:
    return [Unit(f"{style}/{pair.replace(',', '->')}/s{k}", "experiments.pathnet.measure:measure_unit",
                 {"style": style, "pair": pair, "seed": BASE_SEED + k, "data_dir": data_dir, "extra": list(extra)})
            for pair in pairs for style in styles for k in range(seeds)]


def summarise(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (style, pair) in the order first seen: generations on A and B, convergence, speed-up."""
    rows = []
    for style, pair in dict.fromkeys((r["style"], r["pair"]) for r in records):
        runs = [r for r in records if r["style"] == style and r["pair"] == pair]
        scratch = [r["variants"]["scratch"]["generations"] for r in runs]
        frozen = [r["variants"]["pathnet"]["generations"] for r in runs]
        rows.append({"style": style, "pair": pair, "seeds": len(runs),
                     "A_generations": mean_ci([r["A"]["generations"] for r in runs]),
                     "A_converged": sum(r["A"]["converged"] for r in runs),
                     "scratch": mean_ci(scratch), "pathnet": mean_ci(frozen),
                     "scratch_converged": sum(r["variants"]["scratch"]["converged"] for r in runs),
                     "pathnet_converged": sum(r["variants"]["pathnet"]["converged"] for r in runs),
                     "speedup": ratio_bootstrap(scratch, frozen),
                     "transfer_faster": sum(f < s for s, f in zip(scratch, frozen)),
                     "seconds_per_unit": mean_ci([r["A"]["seconds"] + sum(v["seconds"] for v in r["variants"].values())
                                                  for r in runs])["mean"],
                     "tf_reported": TF_REPORTED.get(pair)})
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    def ci(e: dict[str, float]) -> str:
        return f"{e['mean']:.1f} [{e['lo']:.1f}, {e['hi']:.1f}]" if e["n"] > 1 else f"{e['mean']:.1f}"

    lines = ["| style | A -> B | seeds | A: generations | B scratch: generations | B PathNet: generations | "
             "converged (A / scratch / PathNet) | speed-up (95 % CI) | seeds faster | TF code: scratch, PathNet "
             "(speed-up) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n, tf = r["seeds"], r["tf_reported"]
        reported = f"{tf[0]:.1f}, {tf[1]:.1f} ({tf[0] / tf[1]:.2f})" if tf else "—"
        lines.append(f"| {r['style']} | {r['pair']} | {n} | {ci(r['A_generations'])} | {ci(r['scratch'])} | "
                     f"{ci(r['pathnet'])} | {r['A_converged']}/{n}, {r['scratch_converged']}/{n}, "
                     f"{r['pathnet_converged']}/{n} | {interval_text(r['speedup'], 'ratio', '.2f')} | "
                     f"{r['transfer_faster']}/{n} | {reported} |")
    return "\n".join(lines)


def plot(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Per pair: each seed's generations on B, scratch then PathNet (a line joins a seed's pair), per style."""
    pairs = list(dict.fromkeys(r["pair"] for r in records))
    styles = list(dict.fromkeys(r["style"] for r in records))
    fig, axes = plots.panels(1, len(pairs), figsize=(4.2 * len(pairs), 3.8))
    for ax, pair in zip(axes[0], pairs):
        for k, style in enumerate(styles):
            runs = [r for r in records if r["pair"] == pair and r["style"] == style]
            for i, r in enumerate(runs):
                ys = [r["variants"][v]["generations"] for v in ("scratch", "pathnet")]
                ax.plot([3 * k, 3 * k + 1], ys, "o-", color=f"C{k}", alpha=0.45, ms=3, lw=0.8,
                        label=f"{style} ({len(runs)} seeds)" if i == 0 else None)
            tf = TF_REPORTED.get(pair)
            if style == "tf" and tf:
                ax.plot([3 * k, 3 * k + 1], tf, "k*--", ms=9, lw=1, label="TF code's means (1000 runs)")
        ax.set_xticks([t for k in range(len(styles)) for t in (3 * k, 3 * k + 1)],
                      [f"{s}\n{v}" for s in styles for v in ("scratch", "PathNet")], fontsize=8)
        ax.set_yscale("log")
        ax.set_title(f"task B of {pair}")
        ax.set_ylabel("generations to the threshold on B")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    plots.save(fig, path, dpi=110)
    return path


def report(ledger: Path, out: Path) -> str:
    records = [entry["record"] for entry in read_ledger(ledger).values()]
    rows = summarise(records)
    text = markdown(rows)
    save_json(out / "pathnet_measure.json", {"ledger": str(ledger), "summary": rows})
    (out / "pathnet_measure.md").write_text(text + "\n")
    plot(records, out / "pathnet_measure.png")
    return text


def measurement_parser(doc: str, plan: str, plan_default: str, pairs: str, seeds: int, ledger: str,
                       extra_help: str = EXTRA_HELP) -> argparse.ArgumentParser:
    """The command line of a PathNet measurement (this one and the ablation: the same options in the same order);
    ``plan`` names the option that picks what is measured (``styles`` or ``arms``)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--data_dir", default="../shared/data")
    p.add_argument(f"--{plan}", default=plan_default)
    p.add_argument("--pairs", default=pairs)
    p.add_argument("--seeds", type=int, default=seeds)
    return add_ledger_options(p, ledger=ledger, out="results/pathnet", extra_help=extra_help)


def main(argv: Sequence[str] | None = None) -> int:
    p = measurement_parser(__doc__, "styles", "tf,paper", PAIRS, 10, "logs/pathnet_measure/ledger.jsonl")
    args = p.parse_args(argv)

    def body() -> str:
        ledger, out = Path(args.ledger), Path(args.out)
        if not args.report_only:
            run_units(units(args.styles.split(","), args.pairs.split("+"), args.seeds, args.data_dir, args.extra),
                      ledger, workers=args.workers, desc="pathnet units")
        return report(ledger, out)

    return protocol_cli(body)


if __name__ == "__main__":
    sys.exit(main())
