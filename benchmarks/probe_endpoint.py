"""How much a cell's score depends on *when* training stops: the ranking budget's end point, measured.

    python -m benchmarks.probe_endpoint --cell c00 --seed 12345 [--anneal 0.5] [--last 10] [--data_dir DIR]

Trains one cell of the 32-cell space alone at the ``--ranking_size`` budget, exactly as a ground-truth
unit does (the search's shared step, a sampler that always proposes the cell), and scores it on the
whole validation split after each of the last ``--last`` shared steps. At ENAS's constant lr 20 those
scores wander by far more than the cells differ, which made the first ground truth noise; with the
second half annealed (``--anneal 0.5``, the budget's value) they settle. Prints one line per scored
step: step, learning rate, the step's training cross-entropy and the validation log-perplexity.
"""

from __future__ import annotations

import argparse
import math

import torch

from experiments.ranking.protocol import SIZES
from experiments.search_unit import unit_args
from experiments.ranking.run import FixedSampler
from engine import scheduled_lr
from modes import builders
from spaces.base import pick
from spaces.rnn32 import all_cells, cell_id
from trainer import Trainer, TrainerConfig
from utils import seed_everything


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cell", default="c00", help="cell id c00..c31")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--anneal", type=float, default=0.5, help="--shared_lr_anneal (0: constant lr)")
    p.add_argument("--last", type=int, default=10, help="score after each of this many last shared steps")
    p.add_argument("--size", default="small", choices=sorted(SIZES))
    p.add_argument("--data_dir", default="../shared/data")
    p.add_argument("--dataset", default="ptb")
    a = p.parse_args(argv)
    args = unit_args({**SIZES[a.size], "shared_lr_anneal": a.anneal, "dataset": a.dataset, "data_dir": a.data_dir},
                     a.seed)
    seed_everything(a.seed)
    space = builders.build_space(args, torch.device("cpu"))
    arch = next(c for c in all_cells() if cell_id(c) == a.cell)
    trainer = Trainer(space, FixedSampler(arch), None, pick(TrainerConfig, args), None, vars(args))
    total = args.max_epoch * args.shared_max_step
    for step in range(total):  # one shared step at a time; the trainer sets each step's lr from its own count
        epoch = step // args.shared_max_step
        if step % args.shared_max_step == 0:
            trainer.step.set_lr(scheduled_lr(trainer.spec, epoch, args.max_epoch))
        record = trainer.shared_phase(epoch, 1, measure_forgetting=False)
        if step >= total - a.last:
            valid = space.evaluate(arch, "valid")["valid_ppl"]
            print(f"{a.cell} seed {a.seed} anneal {a.anneal}: step {step + 1}/{total} lr {trainer.step.lr:.2f} "
                  f"train ce {record['shared_ce']:.3f} valid log-ppl {math.log(valid):.3f}", flush=True)


if __name__ == "__main__":
    main()
