"""The ranking benchmark's two kinds of unit, each a plain function a worker process calls.

* :func:`train_alone` -- one cell of the 32 trained from scratch with the search's own shared step, only
  ever that cell (the ground truth), then scored on the whole validation and test splits;
* :func:`search_and_rank` -- one weight-sharing search (a sampler, an importance or none) on the same
  model, data and budget; after every epoch every one of the 32 cells is scored with the shared
  weights on the whole validation split.

Both start from ``seed_everything(seed)`` and build the space before anything else draws, so every
variant of a seed starts from the same weights and reads the same batches: the paired design. A
ground-truth cell differs from a search only in its sampler (always the one cell) and in having no
regulariser, so a difference in ranking comes from the sharing, not from another training recipe.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from modes import builders
from experiments.search_unit import build_trainer, search_epoch, unit_args
from spaces.rnn32 import all_cells, cell_id
from models.rnn_arch import RNNArch
from spaces.base import pick
from samplers.base import best_of
from trainer import Trainer, TrainerConfig
from utils import seed_everything
from experiments.workers import unit_device

log = logging.getLogger("wpl")


class FixedSampler:
    """Proposes one cell, always: training a cell alone through the search's own loop."""

    def __init__(self, arch: RNNArch) -> None:
        self.arch = arch
        self.skipped = 0

    def sample(self, n: int) -> list[RNNArch]:
        return [self.arch] * n

    def active(self, epoch: int) -> bool:
        return False

    def learn(self, epoch: int) -> dict[str, float]:
        return {}

    def derive(self, n: int, score: Callable[[Any], float]) -> tuple[Any, float]:
        return best_of([("cell", self.arch)], score)

    def first_nonfinite(self) -> str | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def train_alone(cell: str, seed: int, options: dict[str, Any]) -> dict[str, Any]:
    """Ground truth: cell ``cell`` (an id ``c00``..``c31``) trained alone; valid and test perplexity."""
    args = unit_args(options, seed)
    seed_everything(seed)
    space = builders.build_space(args, unit_device())
    arch = next(a for a in all_cells() if cell_id(a) == cell)
    trainer = Trainer(space, FixedSampler(arch), None, pick(TrainerConfig, args), None, vars(args))  # type: ignore[arg-type]
    curve = []
    for epoch in range(args.max_epoch):
        curve.append(search_epoch(trainer, epoch, args.max_epoch, measure_forgetting=False).get("shared_ce", math.nan))
    valid, test = space.evaluate(arch, "valid"), space.evaluate(arch, "test")
    return {"cell": cell, "arch": arch.to_dict(), "seed": seed, "valid_ppl": finite_or_none(valid["valid_ppl"]),
            "test_ppl": finite_or_none(test["test_ppl"]), "train_ce": [finite_or_none(c) for c in curve]}


def finite_or_none(value: float) -> float | None:
    """A figure for the ledger (strict JSON): a diverged cell's infinite perplexity, or a NaN, becomes null
    (the report ranks a null search perplexity last and leaves a null figure out of its means; a null
    ground-truth perplexity is refused, in one line, when the ground truth is loaded)."""
    return float(value) if math.isfinite(value) else None


def score_cells(trainer: Trainer) -> list[float]:
    """Every cell's perplexity with the shared weights on the whole validation split, in id order."""
    return [trainer.space.evaluate(arch, "valid")["valid_ppl"] for arch in all_cells()]


def search_and_rank(sampler: str, importance: str, seed: int, options: dict[str, Any]) -> dict[str, Any]:
    """One weight-sharing search of the 32 cells; the shared weights' ranking of all of them after every epoch."""
    args = unit_args({**options, "sampler": sampler}, seed)
    if importance == "none":
        args.alpha_fisher = 0.0
    trainer = build_trainer(args, importance != "none", importance)
    epochs: list[dict[str, Any]] = []
    for epoch in range(args.max_epoch):
        start = time.time()
        record = search_epoch(trainer, epoch, args.max_epoch, measure_forgetting=True)
        trained = time.time()
        ppl = score_cells(trainer)
        epochs.append({"epoch": epoch, "valid_ppl": [finite_or_none(p) for p in ppl], "train_s": trained - start,
                       "eval_s": time.time() - trained,
                       **{k: finite_or_none(record[k]) for k in ("shared_ce", "forgetting_mean_diff", "forgetting_max_diff")
                          if k in record}})
        log.info("%s/%s seed %d epoch %d: best cell %s (%.1f), trained %.0f s, scored 32 cells in %.0f s", sampler,
                 importance, seed, epoch, f"c{int(np.argmin(ppl)):02d}", min(ppl), trained - start, time.time() - trained)
    return {"sampler": sampler, "importance": importance, "seed": seed, "epochs": epochs}
