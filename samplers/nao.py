"""NAO with weight sharing as the search's sampler (Luo et al., NeurIPS 2018, "NAO-WS"): a pool and its rounds.

The shared phase trains architectures drawn uniformly from the current pool (with
``--num_batch_per_iter=1``, one per minibatch, as NAO-WS does). Every ``nao_round_every`` epochs a
controller round (``learn``):

1. measures every pool member with the space's held-out error on its **fixed** validation batches
   (``SearchSpace.error``: the same windows every round; NAO-WS draws one random window);
2. trains the controller (models/nao_controller.py) on the pool, the losses min-max normalised to
   [0, 1]: ``nao_controller_epochs`` shuffled epochs of ``0.8 MSE + 0.2 NLL``, Adam;
3. generates: the ``nao_top_k`` best members' encodings are moved along the predictor's gradient with
   step ``lambda = k * nao_lambda`` on pass ``k`` until ``nao_new`` decoded cells are not in the pool
   (at most ``nao_max_passes`` passes);
4. forms the new pool: the best old members, the new ones and ``nao_random`` unseen random cells,
   ``nao_pool`` in all.

``derive`` re-measures the pool with today's shared weights and returns its best. The predictor's
held-out ranking accuracy is measured each round on the members that joined in the previous round
(the controller never trained on them) before it trains again. The pool with its losses, the
controller, its optimiser, the round counter and the generator are the sampler's state, so a resumed
run is exact. docs/nao.md has the sources and the defaults.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from engine import NonFiniteGuard, NonFiniteLoss, Step, first_nonfinite
from models.nao_codec import TokenCodec, codec_for
from models.nao_controller import NAOController
from spaces.base import SearchSpace
from engine.runlog import RunDir
from samplers.base import arch_key, best_of, last_checkpoint
from engine.stopping import boundary
from utils import UserError

log = logging.getLogger("wpl")
WEIGHTS = ("edge", "activation")  # --nao_weights: one weight per edge (ENAS, this project) or per (edge, activation)


@dataclass(frozen=True)
class NAOConfig:
    nao_pool: int
    nao_top_k: int
    nao_new: int
    nao_random: int
    nao_round_every: int
    nao_controller_epochs: int
    nao_controller_batch: int
    nao_controller_lr: float
    nao_controller_l2: float
    nao_controller_clip: float
    nao_mse_weight: float
    nao_lambda: float
    nao_max_passes: int
    nao_embed: int
    nao_hid: int
    nao_mlp_layers: int
    nao_mlp_hid: int
    nao_weights: str
    random_seed: int


def check_config(cfg: NAOConfig) -> None:
    """One line for a pool schedule that cannot work (also checked at parse time, options_domains.py)."""
    if cfg.nao_top_k > cfg.nao_pool:
        raise UserError(f"--nao_top_k={cfg.nao_top_k} is above --nao_pool={cfg.nao_pool}: generation starts from pool members")
    if cfg.nao_new + cfg.nao_random >= cfg.nao_pool:
        raise UserError(f"--nao_new={cfg.nao_new} + --nao_random={cfg.nao_random} must stay below --nao_pool="
                        f"{cfg.nao_pool}: the new pool keeps at least one measured member")
    if cfg.nao_new < 1 or cfg.nao_max_passes < 1:
        raise UserError("--nao_new and --nao_max_passes must be at least 1: a round that may generate nothing is not NAO")
    if cfg.nao_weights != "edge":
        raise UserError(f"--nao_weights={cfg.nao_weights}: separate weights per (node, predecessor, activation) are not "
                        "built yet; only 'edge' (one weight per edge, shared by the activations) is (docs/fidelity.md)")


def pairwise_accuracy(predicted: Sequence[float], target: Sequence[float]) -> float:
    """The fraction of pairs with different targets that ``predicted`` orders the same way (NaN: no such pair)."""
    right = total = 0
    for i in range(len(target)):
        for j in range(i + 1, len(target)):
            if target[i] == target[j]:
                continue
            total += 1
            right += (predicted[i] - predicted[j]) * (target[i] - target[j]) > 0
    return right / total if total else math.nan


class NAOSampler:
    """A pool of decision-token lists; ``learn`` is NAO's controller round."""

    Config: ClassVar[type] = NAOConfig

    def __init__(self, space: SearchSpace, controller: NAOController, codec: TokenCodec, cfg: NAOConfig,
                 run: RunDir | None) -> None:
        check_config(cfg)
        self.space, self.controller, self.codec, self.cfg, self.run = space, controller, codec, cfg, run
        self.optim = torch.optim.Adam(controller.parameters(), lr=cfg.nao_controller_lr, weight_decay=cfg.nao_controller_l2)
        self.generator = torch.Generator().manual_seed(cfg.random_seed)
        self.pool = self._unseen(cfg.nao_pool, set())
        if len(self.pool) < cfg.nao_pool:
            raise UserError(f"--nao_pool={cfg.nao_pool}: this search space has only {len(self.pool)} distinct "
                            "architectures within reach; pass a smaller pool")
        self.losses: list[float | None] = [None] * cfg.nao_pool  # measured at the last round; None: joined since
        self.rounds = 0
        self.epoch = 0
        # True from a round until the next draw: the kept members' losses are those of today's weights (a cache
        # for derive, not state: re-measuring gives the same numbers)
        self.weights_unchanged = False
        self.guard = NonFiniteGuard("controller loss", "the NAO controller diverged (try a smaller --nao_controller_lr)",
                                    lambda: f"epoch {self.epoch}, NAO round {self.rounds}", lambda: last_checkpoint(run))
        # the engine's guarded update; every rank computes the same loss, so its gradient is not averaged
        self.updater = Step(self.optim, controller.parameters(), cfg.nao_controller_clip, self.guard, replicated=True,
                            loss_name="controller loss")

    @classmethod
    def build(cls, space: SearchSpace, cfg: NAOConfig, device: torch.device, run: RunDir | None) -> NAOSampler:
        check_config(cfg)
        codec = codec_for(space)
        controller = NAOController(codec.vocab_size, codec.length, codec.valid_mask(), cfg.nao_embed, cfg.nao_hid,
                                   cfg.nao_mlp_layers, cfg.nao_mlp_hid)
        return cls(space, controller, codec, cfg, run)

    # ------------------------------------------------------------------------------ the pool
    def _random_tokens(self) -> list[int]:
        return [int(torch.randint(n, (1,), generator=self.generator)) for n in self.space.decision_sizes]

    def _unseen(self, count: int, seen: set[tuple[int, ...]]) -> list[list[int]]:
        """Up to ``count`` uniform random architectures, distinct and not in ``seen`` (bounded tries)."""
        found: list[list[int]] = []
        taken = set(seen)
        for _ in range(100 * count + 100):
            if len(found) == count:
                break
            tokens = self._random_tokens()
            if tuple(tokens) not in taken:
                taken.add(tuple(tokens))
                found.append(tokens)
        return found

    def sample(self, n: int) -> list[Any]:
        self.weights_unchanged = False
        picks = torch.randint(len(self.pool), (n,), generator=self.generator).tolist()
        return [self.space.decode(self.pool[i]) for i in picks]

    def active(self, epoch: int) -> bool:
        return (epoch + 1) % self.cfg.nao_round_every == 0

    def _measure(self) -> list[float]:
        """The held-out error of every member (non-finite: the worst, so that it leaves the pool first)."""
        losses = []
        for tokens in self.pool:
            boundary()
            losses.append(float(self.space.error(self.space.decode(tokens))))
        return [x if math.isfinite(x) else math.inf for x in losses]

    def _sequences(self, pool: Sequence[Sequence[int]]) -> torch.Tensor:
        return torch.tensor([self.codec.to_sequence(t) for t in pool], dtype=torch.long)

    @torch.no_grad()
    def predicted(self, pool: Sequence[Sequence[int]]) -> list[float]:
        self.controller.eval()
        return self.controller.encode(self._sequences(pool)).predicted.tolist()

    # ---------------------------------------------------------------------------- the round
    def train_controller(self, seqs: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """``nao_controller_epochs`` shuffled epochs; the last epoch's mean loss and terms."""
        c = self.cfg
        self.controller.train()
        sums = [0.0, 0.0, 0.0]
        for _ in range(c.nao_controller_epochs):
            boundary()
            sums, batches = [0.0, 0.0, 0.0], 0
            for batch in torch.randperm(len(seqs), generator=self.generator).split(c.nao_controller_batch):
                loss, mse, nll = self.controller.loss(seqs[batch], target[batch], c.nao_mse_weight)
                if not self.updater.update(loss):
                    continue
                sums = [s + float(v) for s, v in zip(sums, (loss.detach(), mse.detach(), nll.detach()))]
                batches += 1
            sums = [s / max(batches, 1) for s in sums]
        return {"nao_controller_loss": sums[0], "nao_controller_mse": sums[1], "nao_controller_nll": sums[2]}

    @torch.no_grad()
    def generate(self, top: Sequence[Sequence[int]]) -> tuple[list[list[int]], float, int]:
        """Unseen architectures from moving ``top``'s encodings: (the new ones, the last step, passes)."""
        c = self.cfg
        self.controller.eval()
        seqs = self._sequences(top)
        known = {tuple(t) for t in self.pool}
        new: list[list[int]] = []
        step, passes = 0.0, 0
        while len(new) < c.nao_new and passes < c.nao_max_passes:
            passes += 1
            step = passes * c.nao_lambda
            for row in self.controller.move(seqs, step).tolist():
                tokens = self.codec.to_decisions(row)
                if tuple(tokens) not in known and len(new) < c.nao_new:
                    known.add(tuple(tokens))
                    new.append(tokens)
        return new, step, passes

    def learn(self, epoch: int) -> dict[str, float]:
        """One controller round: measure, train, generate, form the new pool; returns its ``nao_*`` figures."""
        c = self.cfg
        self.epoch = epoch
        losses = self._measure()
        joined = [i for i, old in enumerate(self.losses) if old is None and math.isfinite(losses[i])]
        held_out = math.nan
        if self.rounds > 0 and len(joined) > 1:
            held_out = pairwise_accuracy(self.predicted([self.pool[i] for i in joined]), [losses[i] for i in joined])
        finite = [x for x in losses if math.isfinite(x)]
        if not finite:
            raise NonFiniteLoss(f"epoch {epoch}: every pool member's validation loss is non-finite; the shared model "
                            f"diverged (try a smaller --shared_lr); last good checkpoint: {last_checkpoint(self.run)}")
        lo, hi = min(finite), max(finite)
        target = torch.tensor([(min(x, hi) - lo) / (hi - lo) if hi > lo else 0.0 for x in losses])
        seqs = self._sequences(self.pool)
        record = self.train_controller(seqs, target)
        order = sorted(range(len(self.pool)), key=lambda i: losses[i])  # ascending loss; ties by position
        new, step, passes = self.generate([self.pool[i] for i in order[:c.nao_top_k]])
        fresh = self._unseen(c.nao_random, {tuple(t) for t in self.pool + new})
        keep = order[:c.nao_pool - len(new) - len(fresh)]
        record.update({
            "nao_pool_best_loss": lo, "nao_pool_median_loss": float(np.median(losses)),
            "nao_predictor_train_pairwise_acc": pairwise_accuracy(self.predicted(self.pool), losses),
            "nao_lambda": step, "nao_passes": passes, "nao_new_archs": len(new), "nao_random_archs": len(fresh),
            "nao_round": self.rounds})
        if not math.isnan(held_out):  # defined from the second round on
            record["nao_predictor_heldout_pairwise_acc"] = held_out
        self.pool = [self.pool[i] for i in keep] + new + fresh
        self.losses = [losses[i] for i in keep] + [None] * (len(new) + len(fresh))
        self.rounds += 1
        self.weights_unchanged = True
        log.info("| epoch %3d | NAO round %d | pool best %.4g median %.4g | held-out pairwise acc %.3f | lambda %g "
                 "(%d passes) | %d new", epoch, self.rounds, lo, record["nao_pool_median_loss"], held_out, step, passes, len(new))
        if self.run:
            self.run.scalars({f"nao/{k[4:]}": float(v) for k, v in record.items()}, self.rounds)
        return record

    # ---------------------------------------------------------------------------- derive, state
    def derive(self, n: int, score: Callable[[Any], float]) -> tuple[Any, float]:
        """The pool's best by ``score`` (the space's held-out error with today's weights), whatever ``n``.

        Right after a round (no shared step since), the kept members' losses of that round are today's
        and only the members that joined are scored."""
        known = {}
        if self.weights_unchanged:
            known = {arch_key(self.space.decode(t)): x for t, x in zip(self.pool, self.losses) if x is not None}

        def cached(arch: Any) -> float:
            key = arch_key(arch)
            return known[key] if key in known else score(arch)

        return best_of(((arch_key(a), a) for a in (self.space.decode(t) for t in self.pool)), cached)

    @property
    def skipped(self) -> int:
        return self.guard.total

    def first_nonfinite(self) -> str | None:
        return first_nonfinite([("NAO controller", self.controller.state_dict())])

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict(), "controller_optim": self.optim.state_dict(),
                "generator": self.generator.get_state(), "pool": [list(t) for t in self.pool],
                "losses": list(self.losses), "rounds": self.rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.optim.load_state_dict(state["controller_optim"])
        self.generator.set_state(state["generator"].cpu())
        self.pool = [list(t) for t in state["pool"]]
        self.losses = list(state["losses"])
        self.rounds = state["rounds"]
