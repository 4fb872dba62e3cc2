"""One unit of NAO vs NAO + WPL: one NAO search with or without WPL at one output dropout and one seed.

The record holds one line per epoch: the shared phase's figures, the forgetting Diff (mean increase of
the held-out loss of the architectures trained in the epoch, by its end: the paper's "Diff."), the
controller round's figures, and the **pool's best architecture** (by its loss on the fixed validation
windows, what ``--mode=derive`` picks) with its perplexity on the whole validation split, the curve the
paper's figure plots. A search whose shared weights diverge is recorded, not lost: its later epochs are
marked ``diverged`` and its perplexity is ``None`` (JSON has no infinity).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from engine.guard import NonFiniteLoss
from experiments.nao_wpl.protocol import PROTOCOL_KEYS
from experiments.search_unit import build_trainer, search_epoch, unit_args
from trainer import Trainer

log = logging.getLogger("wpl")
KEPT = ("shared_ce", "shared_wpl", "forgetting_mean_diff", "forgetting_max_diff", "nao_pool_best_loss",
        "nao_pool_median_loss", "nao_predictor_train_pairwise_acc", "nao_predictor_heldout_pairwise_acc", "nao_new_archs")


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def build(variant: str, dropout: float, seed: int, options: dict[str, Any]) -> Trainer:
    """The unit's search, not yet trained (the tests compare the two variants' starting weights)."""
    search_options = {k: v for k, v in options.items() if k not in PROTOCOL_KEYS}
    args = unit_args({**search_options, "shared_dropout": dropout}, seed, network_type="rnn")
    if variant == "nao":
        args.alpha_fisher = 0.0
    return build_trainer(args, regularised=variant == "nao_wpl")


def search(variant: str, dropout: float, seed: int, options: dict[str, Any]) -> dict[str, Any]:
    """Train, and after each epoch's controller round (every ``score_every``-th epoch and the last; every epoch at
    the CPU sizes) score the pool's best on the validation split."""
    trainer = build(variant, dropout, seed, options)
    max_epoch, every = int(options["max_epoch"]), int(options.get("score_every", 1))
    epochs: list[dict[str, Any]] = []
    for epoch in range(max_epoch):
        start = time.time()
        try:
            record = search_epoch(trainer, epoch, max_epoch, measure_forgetting=True)
            if (epoch + 1) % every and epoch + 1 < max_epoch:  # not scored this epoch (the paper size)
                epochs.append({"epoch": epoch, "train_s": round(time.time() - start, 2),
                               **{k: record[k] for k in KEPT if k in record}})
                continue
            arch, error = trainer.derive(1)
        except NonFiniteLoss as err:  # every pool member non-finite: the shared model diverged
            log.warning("%s dropout %g seed %d: diverged at epoch %d (%s)", variant, dropout, seed, epoch, err)
            epochs += [{"epoch": e, "diverged": True, "valid_ppl": None} for e in range(epoch, max_epoch)]
            break
        trained = time.time()
        ppl = trainer.space.evaluate(arch, "valid")["valid_ppl"]
        epochs.append({"epoch": epoch, "valid_ppl": _finite(ppl), "best_arch": arch.to_dict(), "best_loss": _finite(error),
                       "train_s": round(trained - start, 2), "eval_s": round(time.time() - trained, 2),
                       **{k: record[k] for k in KEPT if k in record}})
        log.info("%s dropout %g seed %d epoch %d: best of pool valid ppl %.1f, Diff %.4f (%.0f s)", variant, dropout,
                 seed, epoch, ppl, record.get("forgetting_mean_diff", math.nan), time.time() - start)
    return {"variant": variant, "dropout": dropout, "seed": seed, "epochs": epochs}
