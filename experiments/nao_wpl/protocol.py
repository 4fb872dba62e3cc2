"""NAO vs NAO + WPL's protocol: its budgets, its units and the checks of its options.

A unit is one NAO search (``--sampler=nao``, the RNN cell) at one output dropout (``--shared_dropout``,
the locked dropout on the cell output: the WPL paper's NAO figure has one panel per value) and one seed,
without WPL (``nao``) or with it (``nao_wpl``: Fisher importance, the strength and clip of the paper's
README command, alpha 60 and clip 10, as every other protocol here). Both variants of a seed build the
same space from the same seed before anything else draws: the same initial weights, the same first pool
and the same batches (the paired design); they differ only by the penalty.

* ``small`` (the committed results): the 6-node cell at width 64, batch 64 x 35 tokens, 5 epochs of 8
  shared steps x 2 batches (WPL's penalty acts from an architecture's second batch on, docs/nao.md), WPL
  from epoch 1 (epoch 0 is the warm-up both variants share, identical to the batch), a controller round
  after every epoch with NAO-WS's pool ratios scaled down (pool 16, top 2, 5 new, 1 random; 50
  controller epochs), the pool's best scored on the whole validation split after every epoch. Sized so
  that the 20 units of 5 seeds x 2 dropouts x 2 variants fit about 80 minutes on the share of one core a
  job gets on this project's loaded 2-core machine (a pilot unit at 1.5 x this budget took 5.5 minutes
  there; each unit's time is in its ledger line).
* ``paper``: the paper-size run for a GPU (docs/nao.md has the estimate of its time; not run here).
* ``tiny``: a few batches at width 8, for the tests and a first look on any corpus.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from experiments.workers import Unit
from utils import UserError

VARIANTS = ("nao", "nao_wpl")
COMMON: dict[str, Any] = {"sampler": "nao", "alpha_fisher": 60.0, "fisher_clip_by_norm": 10.0, "start_using_fisher": 1,
                          "nao_round_every": 1, "log_step": 0, "train_controller": True}
SIZES: dict[str, dict[str, Any]] = {
    "small": {**COMMON, "num_blocks": 6, "shared_embed": 64, "shared_hid": 64, "batch_size": 64, "test_batch_size": 64,
              "shared_rnn_max_length": 35, "shared_max_step": 8, "num_batch_per_iter": 2, "max_epoch": 5,
              "forgetting_eval_batches": 2, "nao_pool": 16, "nao_top_k": 2, "nao_new": 5, "nao_random": 1,
              "nao_controller_epochs": 50},
    # The paper-size run (docs/nao.md: a GPU estimate, not run): the paper's RNN search command's model and
    # schedule (width 1000, 12 nodes, 60 shared steps x 7 batches, WPL from epoch 5), 300 epochs as the paper's NAO
    # figure, NAO-WS's pool schedule with its 5 rounds of 1000 epochs spread over 300 (a round every 60), and
    # the pool's best scored every 10 epochs (re-measuring a pool of 1000 costs about a shared epoch).
    "paper": {**COMMON, "start_using_fisher": 5, "num_blocks": 12, "shared_embed": 1000, "shared_hid": 1000,
              "batch_size": 64, "shared_rnn_max_length": 35, "shared_max_step": 60, "num_batch_per_iter": 7,
              "max_epoch": 300, "forgetting_eval_batches": 4, "nao_pool": 1000, "nao_top_k": 100, "nao_new": 300,
              "nao_random": 50, "nao_controller_epochs": 1000, "nao_round_every": 60, "score_every": 10},
    "tiny": {**COMMON, "num_blocks": 3, "shared_embed": 8, "shared_hid": 8, "batch_size": 4, "test_batch_size": 4,
             "shared_rnn_max_length": 5, "shared_max_step": 2, "num_batch_per_iter": 2, "max_epoch": 2,
             "forgetting_eval_batches": 1, "nao_pool": 6, "nao_top_k": 2, "nao_new": 2, "nao_random": 1,
             "nao_controller_epochs": 2, "nao_controller_batch": 4},
}
# The paper's figure (its repository's assets/nao_rnn.png, read off by eye, ../shared/notes/nao-facts.md):
# final valid perplexity after 300 epochs per output dropout.
PAPER_FINAL_PPL = {0.0: {"nao": 265, "nao_wpl": 205}, 0.25: {"nao": 290, "nao_wpl": 195},
                   0.5: {"nao": 300, "nao_wpl": 205}, 0.75: {"nao": 340, "nao_wpl": 230}}


# The protocol's own keys in a size's table (the rest are search options).
PROTOCOL_KEYS = ("score_every",)


def options_for(size: str, args: Any) -> dict[str, Any]:
    """Every unit's options: the size's table plus the data and the learning rate of this command line."""
    return {**SIZES[size], "dataset": args.dataset, "data_dir": args.data_dir, "shared_lr": args.shared_lr}


def parse_dropouts(texts: Sequence[str]) -> list[float]:
    """``--nao_wpl_dropouts``: distinct numbers in [0, 1), checked in one line."""
    values = []
    for text in texts:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0.0 <= value < 1.0:
            raise UserError(f"--nao_wpl_dropouts: {text!r} is not an output dropout in [0, 1) (e.g. 0,0.25,0.5,0.75)")
        values.append(value)
    if len(set(values)) != len(values):
        raise UserError("--nao_wpl_dropouts: a dropout is repeated")
    return values


def seeds_of(args: Any) -> list[int]:
    if args.nao_wpl_seeds < 2:
        raise UserError(f"--nao_wpl_seeds={args.nao_wpl_seeds}: a paired comparison needs at least 2 seeds (the protocol: 5)")
    return list(range(args.random_seed, args.random_seed + args.nao_wpl_seeds))


def unit_key(variant: str, dropout: float, seed: int) -> str:
    return f"{variant}/d{dropout:g}/s{seed}"


def units(options: dict[str, Any], dropouts: Sequence[float], seeds: Sequence[int]) -> list[Unit]:
    """Seed-major, then dropout, then the two variants: a stopped run holds whole pairs at every dropout first."""
    return [Unit(unit_key(variant, dropout, seed), "experiments.nao_wpl.run:search",
                 {"variant": variant, "dropout": dropout, "seed": seed, "options": options})
            for seed in seeds for dropout in dropouts for variant in VARIANTS]
