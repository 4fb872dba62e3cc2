"""How much of a WPL search step is the penalty's: the ranking budget's search, one shared batch at a time.

    python -m benchmarks.probe_wpl_step [--importance fisher] [--size small] [--width N] [--steps N]
        [--epochs 1] [--alpha A] [--clip C] [--sampler random] [--seed 12345] [--data_dir DIR] [--dataset ptb]
        [--json FILE]

Trains a ranking search unit's shared weights exactly as ``experiments.ranking.run.search_and_rank`` does
(same options, same trainer; the 32 cells are not scored) and records, at every batch where the penalty
takes part, over the sampled architecture's groups:

* ``loss_grad``: the norm of the loss's gradient; ``penalty_grad``: the norm of the penalty's gradient
  ``s * F * (theta - theta*)`` added to it; ``clipped``: whether the whole model's gradient with it is longer
  than the shared gradient-norm clip (then the step has the clip's length, pointing mostly where the larger
  of the two points);
* ``stiffness``: the largest ``lr * s * F`` over the weights (``s`` the penalty's scale, ``F`` the
  importance) and ``unstable``: the fraction of weights with ``lr * s * F > 2``. Plain SGD on a quadratic
  pull moves a weight from ``d`` to ``(1 - lr * s * F) d``, so past 2 each step overshoots the anchor by
  more than it started from.

It exists because the ranking's WPL searches ended with cells 2-3 times as perplex as without WPL and with
heavy forgetting tails (docs/results.md): this prints the measured cause. The first batch of each
architecture has its weights at their anchor, so its penalty gradient is 0; the medians are over all batches.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor

from experiments.ranking.protocol import IMPORTANCES, SIZES
from experiments.search_unit import build_trainer, search_epoch, unit_args
from trainer import Trainer

FIELDS = ("loss_grad", "penalty_grad", "penalty_to_loss", "clipped", "stiffness", "unstable")


def _norm(tensors: Iterable[Tensor]) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))


def record_steps(trainer: Trainer) -> list[dict[str, float]]:
    """Wrap ``trainer.reg.add_penalty_grad_`` (on this instance only) to append one row per penalised batch."""
    reg = trainer.reg
    if reg is None:
        raise ValueError("the probe needs a regularised search (an importance other than none)")
    rows: list[dict[str, float]] = []
    add = reg.add_penalty_grad_
    clip = trainer.step.grad_clip

    def probed(names: Iterable[str]) -> Tensor:
        names = list(names)
        params, importance, _ = reg.gather(names)
        before = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        value = add(names)
        added = [(p.grad.detach() if p.grad is not None else torch.zeros_like(p)) - b for p, b in zip(params, before)]
        loss_grad, penalty_grad = _norm(before), _norm(added)
        total = _norm(q.grad.detach() for q in trainer.step.params if q.grad is not None)  # what the clip reads
        stiff = torch.cat([f.flatten() for f in importance]).double() * (trainer.step.lr * reg.penalty_scale())
        rows.append({"loss_grad": loss_grad, "penalty_grad": penalty_grad,
                     "penalty_to_loss": penalty_grad / loss_grad if loss_grad > 0 else math.nan,
                     "clipped": float(clip > 0 and total > clip), "stiffness": float(stiff.max()),
                     "unstable": float((stiff > 2).double().mean())})
        return value

    reg.add_penalty_grad_ = probed  # type: ignore[method-assign]
    return rows


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median, 90th percentile, maximum and mean of each field over the rows (NaNs left out)."""
    out: dict[str, dict[str, float]] = {}
    for field in FIELDS:
        v = np.array([r[field] for r in rows], dtype=float)
        v = v[np.isfinite(v)]
        out[field] = ({"median": float(np.median(v)), "p90": float(np.quantile(v, 0.9)), "max": float(v.max()),
                       "mean": float(v.mean())} if v.size else {k: math.nan for k in ("median", "p90", "max", "mean")})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--importance", default="fisher", choices=[i for i in IMPORTANCES if i != "none"])
    p.add_argument("--size", default="small", choices=sorted(SIZES))
    p.add_argument("--width", type=int, default=0, help="embedding and hidden size (0: the size's)")
    p.add_argument("--steps", type=int, default=0, help="shared steps (architectures) per epoch (0: the size's)")
    p.add_argument("--epochs", type=int, default=1, help="epochs to train, of the size's schedule")
    p.add_argument("--alpha", type=float, default=0.0, help="--alpha_fisher (0: the size's, 60)")
    p.add_argument("--clip", type=float, default=0.0, help="--fisher_clip_by_norm (0: the size's, 10)")
    p.add_argument("--sampler", default="random", help="the search's sampler (random, reinforce)")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--data_dir", default="../shared/data")
    p.add_argument("--dataset", default="ptb")
    p.add_argument("--json", default="", help="also write the rows and the summary to this file")
    a = p.parse_args(argv)
    options = {**SIZES[a.size], "dataset": a.dataset, "data_dir": a.data_dir, "sampler": a.sampler}
    if a.width > 0:
        options.update(shared_embed=a.width, shared_hid=a.width)
    if a.steps > 0:
        options["shared_max_step"] = a.steps
    if a.alpha > 0:
        options["alpha_fisher"] = a.alpha
    if a.clip > 0:
        options["fisher_clip_by_norm"] = a.clip
    args = unit_args(options, a.seed)
    trainer = build_trainer(args, True, a.importance)
    rows = record_steps(trainer)
    ce = []
    for epoch in range(min(a.epochs, args.max_epoch)):
        ce.append(search_epoch(trainer, epoch, args.max_epoch, measure_forgetting=False).get("shared_ce", math.nan))
    summary = summarise(rows)
    print(f"{a.importance} width {args.shared_hid}, {len(rows)} penalised batches, lr {args.shared_lr:g}, "
          f"gradient clip {trainer.step.grad_clip:g}, alpha {args.alpha_fisher:g}, Fisher clip {args.fisher_clip_by_norm:g}; "
          "training ce per epoch "
          + ", ".join(f"{c:.3f}" for c in ce))
    for field, s in summary.items():
        print(f"{field:>16}: median {s['median']:.4g}  p90 {s['p90']:.4g}  max {s['max']:.4g}  mean {s['mean']:.4g}")
    result = {"options": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))},
              "importance": a.importance, "shared_ce": ce, "summary": summary, "rows": rows}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f)
    return result


if __name__ == "__main__":
    main()
