"""EWC's lambda on sequential MNIST 0-2 -> 3-5 at a published protocol: is seed noise masking its effect?

    python -m experiments.continual.ewc_lambda [--lambdas=0,1e2,1e4,1e5,1e6,1e7,1e8,1e9] [--seeds=5]
        [--protocol=vandeven2019] [--data_dir=../shared/data] [--ledger=FILE] [--out=DIR] [--report_only] [-- OPTIONS]

The lambda study this project grew from asked whether the integrated loss has a clear minimum in lambda or
whether the run-to-run noise hides it. One unit is (lambda, seed): ``ewc`` over the two tasks (one 10-way
head) exactly as ``python main.py --mode=continual --benchmark=seq_mnist_0-2_3-5 --strategies=ewc
--ewc_lambda=<lambda> --random_seed=<seed> --seeds=1`` trains it. A seed fixes the initial weights and the
batch order whatever lambda is, so the values of a seed are paired across lambdas (the sweep's design) and
a difference between two lambdas at one seed carries none of the seed's noise. Units go through
:func:`experiments.workers.run_units` (a resumable JSON-lines ledger, seed by seed, so a run cut short
still leaves complete paired seeds).

The report reuses the sweep's statistics (:func:`experiments.sweep.report.summarise`: per-lambda t
intervals, paired bootstrap differences to lambda = 0, the noise floor, the smallest effect the seeds
detect at 80 % power, how often each lambda is best) and adds the paired t interval between neighbouring
lambdas, the comparison that decides whether the minimum is resolved.
"""

from __future__ import annotations

import argparse
import math
import sys
from itertools import pairwise
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

from experiments.continual.protocol import BASE_SEED, protocol_config
from experiments.workers import Unit, protocol_cli, read_ledger, run_units

BENCHMARK = "seq_mnist_0-2_3-5"
LAMBDAS = "0,1e2,1e4,1e5,1e6,1e7,1e8,1e9"
MEASURE = "integrated_loss"
EXTRAS = ("average_accuracy", "forgetting")


def canonical(text: str) -> str:
    """One spelling per lambda (``1e4`` and ``10000`` are the same unit): Python's ``%g``."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"lambda must be a finite number >= 0, got {text!r}")
    return f"{value:g}"


def units(protocol: str, lambdas: Sequence[str], seeds: int, data_dir: str, extra: Sequence[str] = ()) -> list[Unit]:
    """Every (seed, lambda), seed-major; each unit holds the whole configuration it runs with."""
    out = []
    for k in range(seeds):
        for lam in lambdas:
            benchmark, cfg = protocol_config(protocol, "class", [f"--benchmark={BENCHMARK}", "--strategies=ewc",
                                                                 f"--ewc_lambda={lam}", *extra])
            one = replace(cfg, seeds=1, first_seed=BASE_SEED + k, strengths={"ewc": cfg.strengths["ewc"]},
                          options={"ewc": cfg.options["ewc"]})
            out.append(Unit(f"lambda/{lam}/s{k}", "experiments.continual.protocol:run_unit",
                            {"benchmark": benchmark, "scenario": "class", "data_dir": data_dir,
                             "sequence_seed": BASE_SEED, "config": asdict(one)}))
    return out


def table(ledger: dict[str, dict[str, Any]], lambdas: Sequence[str], metric: str) -> dict[str, list[float]]:
    """``metric`` per lambda over the seeds every lambda has finished (seed order), so every column is paired."""
    from experiments.sweep.report import paired_columns

    return paired_columns(ledger, "lambda", lambdas, metric)


def neighbours(values: dict[str, list[float]]) -> dict[str, Any]:
    """Each lambda minus the next smaller one at the same seeds (paired t interval), the pooled SD of those
    differences and the smallest step they detect (two-sided 5 %, power 80 %): whether a minimum is resolved."""
    from analysis.stats import detectable_effect, noise_floor, paired_difference

    steps = [{"lower": a, "higher": b, **paired_difference(values[b], values[a])} for a, b in pairwise(values)]
    sd = noise_floor([[y - x for x, y in zip(values[a], values[b])] for a, b in pairwise(values)])
    seeds = len(next(iter(values.values()), []))
    return {"steps": steps, "difference_sd": sd, "detectable_effect": detectable_effect(sd, seeds)}


def summary(ledger: dict[str, dict[str, Any]], lambdas: Sequence[str]) -> dict[str, Any]:
    """The sweep's statistics of the integrated loss over lambda, the neighbours' differences, the extras."""
    from experiments.sweep.report import summarise_columns

    values = table(ledger, lambdas, MEASURE)
    seeds = len(next(iter(values.values()), []))
    extras = {m: table(ledger, lambdas, m) for m in EXTRAS}
    found = summarise_columns("ewc_lambda", values, lambdas[0], True, extras) if seeds else {}
    return {"measure": MEASURE, "lambdas": list(lambdas), "seeds": seeds, "values": values,
            "sweep": found, "neighbours": neighbours(values) if seeds >= 2 else None}


def report(ledger_path: Path, out: Path, lambdas: Sequence[str]) -> str:
    """Write ``<out>/ewc_lambda.{json,md,png}`` from the ledger and return the markdown."""
    from analysis.stats import interval_text
    from experiments.sweep.report import markdown, plot
    from utils import UserError, save_json

    found = summary(read_ledger(ledger_path), lambdas)
    if not found["seeds"]:
        raise UserError(f"{ledger_path}: no seed has finished every lambda yet")
    lines = [f"### EWC lambda on {BENCHMARK}, {found['seeds']} paired seeds (ledger {ledger_path})", "",
             markdown(found["sweep"], MEASURE), ""]
    if (steps := found["neighbours"]) is not None:
        lines += [f"| lambda step | paired difference in {MEASURE} (t 95 %) |", "|---|---|"]
        lines += [f"| {n['lower']} → {n['higher']} | {interval_text(n)} |" for n in steps["steps"]]
        lines += ["", f"SD of the neighbours' paired differences: {steps['difference_sd']:.4g}; smallest step "
                      f"{found['seeds']} paired seeds detect (two-sided 5 %, power 80 %): {steps['detectable_effect']:.4g}"]
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "ewc_lambda.json", found)
    (out / "ewc_lambda.md").write_text(text)
    plot(found["sweep"], [], MEASURE, "ewc_lambda", out / "ewc_lambda.png")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lambdas", default=LAMBDAS, help="comma-separated EWC strengths, the first is the reference")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--protocol", default="vandeven2019")
    p.add_argument("--data_dir", default="../shared/data")
    p.add_argument("--ledger", default="", help="default: <out>/ewc_lambda.jsonl")
    p.add_argument("--out", default="results/continual")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--report_only", action="store_true")
    p.add_argument("extra", nargs="*", help="options added to every unit's --mode=continual command line (after --)")
    args = p.parse_args(argv)
    try:
        lambdas = [canonical(x) for x in args.lambdas.split(",")]
    except ValueError as err:
        p.error(f"--lambdas={args.lambdas}: {err}")
    if len(set(lambdas)) != len(lambdas) or args.seeds < 1:
        p.error("--lambdas must not repeat a value and --seeds must be >= 1")

    def body() -> str:
        ledger = Path(args.ledger or f"{args.out}/ewc_lambda.jsonl")
        if not args.report_only:
            run_units(units(args.protocol, lambdas, args.seeds, args.data_dir, args.extra), ledger,
                      workers=args.workers, desc="EWC lambda units")
        return report(ledger, Path(args.out), lambdas)

    return protocol_cli(body)


if __name__ == "__main__":
    sys.exit(main())
