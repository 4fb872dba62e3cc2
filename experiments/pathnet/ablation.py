"""Why paper-style PathNet transfer is slower than learning from scratch: one change at a time, paired.

    python -m experiments.pathnet.ablation --data_dir=../shared/data [--arms=paper,tf_paper_rule,paper_tf_rule]
        [--pairs=1v3,1v2] [--seeds=5] [--ledger=FILE] [--out=DIR] [--workers=1] [--report_only] [-- OPTIONS]

With the paper's style, B with A's path frozen needs more generations than B from scratch
(docs/pathnet.md), while the TF code's style is faster with transfer. The two styles differ in what
B starts from and in how the stopping rule reads fitness, so each arm changes one of those:

* ``paper``: the paper style's seed runs B as ``scratch``, ``pathnet`` and two one-change variants of
  ``pathnet`` (experiments/pathnet/transfer.py): ``keep`` (the unfrozen modules keep A's trained
  weights instead of being re-initialised) and ``pathnet_active`` (A's frozen path runs beside every
  path of B, the TF code's way);
* ``tf_paper_rule``: the TF style under the paper style's stopping rule (97 % over 5 winners);
* ``paper_tf_rule``: the paper style under the TF style's rule (one winner at 99 %).

A unit is (arm, pair, seed), run by :func:`experiments.pathnet.measure.measure_unit` with the
measurement's protocol (``--pathnet_max_generations=1000``), so the ``paper`` arm's scratch and
``pathnet`` runs repeat the measurement's own seeds exactly (same seeds, same batches). Ledger:
``results/pathnet/ablation_ledger.jsonl``; the report gives every variant's speed-up over scratch of the
same seeds (ratio of means, paired bootstrap 95 % interval from analysis/stats.py).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from analysis import plots
from analysis.stats import interval_text, mean_ci, ratio_bootstrap
from experiments.pathnet.measure import BASE_SEED, measurement_parser
from experiments.workers import Unit, protocol_cli, read_ledger, run_units
from utils import UserError, save_json

log = logging.getLogger("wpl")
PROTOCOL = ("--pathnet_max_generations=1000",)  # the measurement's (results/pathnet/ledger.jsonl)
PAPER_RULE = ("--pathnet_converge=0.97", "--pathnet_converge_window=5")
TF_RULE = ("--pathnet_converge=0.99", "--pathnet_converge_window=1")
# arm -> (style, options beside the protocol, variants of B)
ARMS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "paper": ("paper", (), ("scratch", "pathnet", "keep", "pathnet_active")),
    "tf_paper_rule": ("tf", PAPER_RULE, ("scratch", "pathnet")),
    "paper_tf_rule": ("paper", TF_RULE, ("scratch", "pathnet")),
}


def units(arms: Sequence[str], pairs: Sequence[str], seeds: int, data_dir: str, extra: Sequence[str] = ()) -> list[Unit]:
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise UserError(f"--arms: unknown {', '.join(unknown)} (known: {', '.join(ARMS)})")
    out = []
    for pair in pairs:
        for arm in arms:
            style, options, variants = ARMS[arm]
            out += [Unit(f"{arm}/{pair.replace(',', '->')}/s{k}", "experiments.pathnet.measure:measure_unit",
                         {"style": style, "pair": pair, "seed": BASE_SEED + k, "data_dir": data_dir,
                          "extra": [*PROTOCOL, *options, *extra], "variants": list(variants)})
                    for k in range(seeds)]
    return out


def summarise(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (arm, pair, variant): generations on B, convergence, modules shared with A, speed-up over scratch."""
    rows = []
    by_arm: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for entry in entries:
        by_arm.setdefault((entry["key"].split("/")[0], entry["record"]["pair"]), []).append(entry["record"])
    for (arm, pair), runs in by_arm.items():
        scratch = [r["variants"]["scratch"]["generations"] for r in runs]
        for variant in ARMS[arm][2] if arm in ARMS else runs[0]["variants"]:  # scratch first, as the arm lists them
            gens = [r["variants"][variant]["generations"] for r in runs]
            rows.append({"arm": arm, "pair": pair, "variant": variant, "seeds": len(runs),
                         "generations": mean_ci(gens), "generations_each": gens,
                         "converged": sum(r["variants"][variant]["converged"] for r in runs),
                         "shared_modules_with_A": mean_ci([r["variants"][variant]["shared_modules_with_A"]
                                                           for r in runs])["mean"],
                         "B_test_accuracy": mean_ci([r["variants"][variant]["B_test_accuracy"] for r in runs])["mean"],
                         "speedup": ratio_bootstrap(scratch, gens),
                         "faster_than_scratch": sum(g < s for s, g in zip(scratch, gens))})
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| arm | A -> B | B learned as | seeds | generations on B (95 % CI) | converged | speed-up over scratch "
             "(95 % CI) | seeds faster | modules shared with A | B test acc. (%) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g, n = r["generations"], r["seeds"]
        gens = f"{g['mean']:.1f} [{g['lo']:.1f}, {g['hi']:.1f}]" if n > 1 else f"{g['mean']:.1f}"
        speed = "1 (reference)" if r["variant"] == "scratch" else interval_text(r["speedup"], "ratio", ".2f")
        faster = "—" if r["variant"] == "scratch" else f"{r['faster_than_scratch']}/{n}"
        lines.append(f"| {r['arm']} | {r['pair']} | {r['variant']} | {n} | {gens} | {r['converged']}/{n} | {speed} | "
                     f"{faster} | {r['shared_modules_with_A']:.1f} | {100 * r['B_test_accuracy']:.1f} |")
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Each arm's variants: every seed's generations on B (a line joins a seed), the mean as a bar."""
    groups = list(dict.fromkeys((r["arm"], r["pair"]) for r in rows))
    fig, axes = plots.panels(1, len(groups), figsize=(3.2 + 1.1 * 4 * len(groups), 3.8))
    for ax, (arm, pair) in zip(axes[0], groups):
        mine = [r for r in rows if r["arm"] == arm and r["pair"] == pair]
        ax.bar(range(len(mine)), [r["generations"]["mean"] for r in mine], color="0.85")
        for seed in range(mine[0]["seeds"]):
            ax.plot(range(len(mine)), [r["generations_each"][seed] for r in mine], "o-", alpha=0.5, ms=3, lw=0.8)
        ax.set_xticks(range(len(mine)), [r["variant"] for r in mine], fontsize=8)
        ax.set_title(f"{arm}: {pair}", fontsize=9)
        ax.set_ylabel("generations to the threshold on B")
        ax.grid(alpha=0.3, axis="y")
    plots.save(fig, path, dpi=110)
    return path


def report(ledger: Path, out: Path) -> str:
    rows = summarise(list(read_ledger(ledger).values()))
    text = markdown(rows)
    save_json(out / "pathnet_ablation.json", {"ledger": str(ledger), "summary": rows})
    (out / "pathnet_ablation.md").write_text(text + "\n")
    plot(rows, out / "pathnet_ablation.png")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    p = measurement_parser(__doc__, "arms", ",".join(ARMS), "1v3,1v2", 5, "logs/pathnet_ablation/ablation_ledger.jsonl",
                           "options added to every unit's command line (after --; tests, tiny runs)")
    args = p.parse_args(argv)

    def body() -> str:
        ledger, out = Path(args.ledger), Path(args.out)
        if not args.report_only:
            run_units(units(args.arms.split(","), args.pairs.split("+"), args.seeds, args.data_dir, args.extra), ledger,
                      workers=args.workers, desc="ablation units")
        return report(ledger, out)

    return protocol_cli(body)


if __name__ == "__main__":
    sys.exit(main())
