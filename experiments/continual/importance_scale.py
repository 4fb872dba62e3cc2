"""How hard each regulariser pulls after the first task: its strength times its summed importance.

    python -m experiments.continual.importance_scale [--protocol=vandeven2019] [--scenario=task]
        [--strategies=ewc,online_ewc,si,mas,wpl] [--seed=12345] [--data_dir=../shared/data] [--out=DIR] [-- OPTIONS]

The strategies' strengths differ by orders of magnitude (EWC's lambda 1e7, SI's c 50, WPL's alpha 1e5 in the task
scenario) because their importances do: EWC's Fisher is a mean of per-sample squared gradients, WPL's a moving
average of squared *mini-batch* gradients, which vanish as a task converges. Each penalty is
``s/2 * sum Omega (theta - theta*)^2`` with ``s`` its ``penalty_scale()``, so ``s * sum Omega`` (the trace of the
penalty's Hessian) is a scale every strategy shares; a strategy's strength times ``trace(reference) / trace(it)`` is
the strength at which it would pull as hard in total as the reference (EWC at its protocol value). That is a match of
total curvature, not a prediction of equal protection (where the importance concentrates matters): it compares
like with like for WPL and EWC, both squared gradients, and only gives the order of magnitude for SI and MAS. The
sum runs over the trunk (the groups WPL penalises; the heads are per task in the task scenario).

Every strategy trains the first task from the same initial weights on the same batches (the protocol's paired
design) and takes its importance at the task's end, as in a full run; the task is measured on the validation split.
Output: a markdown table on stdout and ``<out>/importance_scale_<scenario>.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

REFERENCE = "ewc"


def measure(protocol: str, scenario: str, strategies: Sequence[str], seed: int, data_dir: str,
            extra: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Per strategy: strength, penalty scale, summed and largest trunk importance after task 0, and the trace."""
    from tqdm import tqdm

    from experiments.continual.protocol import BASE_SEED, protocol_config, sequence_settings, unit_sequence
    from experiments.continual.run import build_model, fresh_run, train_task
    from utils import UserError

    benchmark, cfg = protocol_config(protocol, scenario, [f"--strategies={','.join(strategies)}", *extra])
    order = {**sequence_settings(extra), "eval_split": "valid"}  # the digit pairs a protocol unit would use
    seq = unit_sequence(benchmark, scenario, data_dir, seed, BASE_SEED, **order)
    init = build_model(seq, cfg, seed).state_dict()
    rows = []
    for strategy in strategies:
        model, optim, reg = fresh_run(seq, cfg, seed, strategy, init)
        if reg is None:
            raise UserError(f"--strategies={strategy} has no importance to measure")
        train_task(model, optim, reg, strategy, seq, 0, cfg, seed, [], 0, tqdm(disable=True))
        trunk = [f for g in model.groups() if g.startswith("trunk.") for f in reg.importance[g]]
        total = float(sum(float(f.double().sum()) for f in trunk))
        scale = float(reg.penalty_scale())
        rows.append({"strategy": strategy, "strength": cfg.strengths[strategy], "penalty_scale": scale,
                     "importance_sum": total, "importance_max": max(float(f.max()) for f in trunk),
                     "trace": scale * total})
    if REFERENCE in strategies:
        ref = next(r for r in rows if r["strategy"] == REFERENCE)
        for r in rows:
            r["strength_matching_reference"] = r["strength"] * ref["trace"] / r["trace"] if r["trace"] > 0 else None
    return rows


def markdown(rows: Sequence[dict[str, Any]], title: str) -> str:
    from analysis.tables import markdown as table

    def g(x: float | None) -> str:
        return "-" if x is None else f"{x:.3g}"

    head = ["strategy", "strength", "sum of trunk importance", "largest", "trace s * sum", f"strength pulling as {REFERENCE}"]
    return table(head, [[r["strategy"], g(r["strength"]), g(r["importance_sum"]), g(r["importance_max"]), g(r["trace"]),
                         g(r.get("strength_matching_reference"))] for r in rows], title)


def main(argv: Sequence[str] | None = None) -> int:
    from experiments.continual.protocol import BASE_SEED
    from experiments.workers import protocol_cli
    from utils import save_json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", default="vandeven2019")
    p.add_argument("--scenario", default="task", choices=("task", "domain", "class"))
    p.add_argument("--strategies", default="ewc,online_ewc,si,mas,wpl")
    p.add_argument("--seed", type=int, default=BASE_SEED)
    p.add_argument("--data_dir", default="../shared/data")
    p.add_argument("--out", default="results/continual")
    p.add_argument("extra", nargs="*", help="options added to the --mode=continual command line (after --)")
    args = p.parse_args(argv)

    def body() -> str:
        rows = measure(args.protocol, args.scenario, args.strategies.split(","), args.seed, args.data_dir, args.extra)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        save_json(out / f"importance_scale_{args.scenario}.json", {"protocol": args.protocol, "scenario": args.scenario,
                                                                   "seed": args.seed, "extra": args.extra, "rows": rows})
        return markdown(rows, f"Importance after task 0 ({args.protocol}, {args.scenario} scenario, seed {args.seed})")

    return protocol_cli(body)


if __name__ == "__main__":
    sys.exit(main())
