"""Evolution as the search's sampler: tournament selection on rewards measured with the shared weights.

A population of ``evolution_population`` architectures (as decision tokens, drawn uniformly). Each
step of the learning phase (``controller_max_step`` steps per active epoch, the controller's
schedule) picks ``evolution_sample_size`` members at random, scores them with the space's reward on
the next validation batches (the same reward REINFORCE sees), and replaces one member by a copy of
the winner with one decision re-drawn (a different value where the decision has one): the loser
(PathNet-style tournament selection), or with ``--evolution_regularized`` the oldest member
(regularized evolution, Real et al. 2019). The shared phase trains members drawn uniformly from the
population; ``derive`` re-scores the population and the best individual seen (highest reward) with
the space's held-out error and returns the lowest. The generator, the
population with its ages and fitnesses, and the best seen are saved, so a resumed run is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from tqdm import tqdm

from engine import NonFiniteGuard
from spaces.base import SearchSpace
from engine.runlog import RunDir
from samplers.base import arch_key, best_of, last_checkpoint
from engine.stopping import boundary


@dataclass(frozen=True)
class EvolutionConfig:
    train_controller: bool
    start_training_controller: int
    stop_training_controller: int
    controller_max_step: int
    nb_batch_reward_controller: int
    reward_c: float
    ppl_square: bool
    evolution_population: int
    evolution_sample_size: int
    evolution_regularized: bool
    random_seed: int


class EvolutionSampler:
    Config: ClassVar[type] = EvolutionConfig

    def __init__(self, space: SearchSpace, cfg: EvolutionConfig, run: RunDir | None) -> None:
        self.space, self.cfg, self.run = space, cfg, run
        self.generator = torch.Generator().manual_seed(cfg.random_seed)
        sizes = space.decision_sizes
        self.population = [[self._draw(n) for n in sizes] for _ in range(cfg.evolution_population)]
        self.ages = list(range(cfg.evolution_population))  # birth order: the oldest has the smallest
        self.fitness: list[float | None] = [None] * cfg.evolution_population
        self.born = cfg.evolution_population
        self.best: tuple[float, list[int]] | None = None
        self.step = 0
        self.epoch = 0
        self.guard = NonFiniteGuard("reward", "the shared model diverged (try a smaller --shared_lr)",
                                    lambda: f"epoch {self.epoch}, evolution step {self.step}", lambda: last_checkpoint(run))

    @classmethod
    def build(cls, space: SearchSpace, cfg: EvolutionConfig, device: torch.device, run: RunDir | None) -> EvolutionSampler:
        return cls(space, cfg, run)

    def _draw(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.generator))

    def mutate(self, tokens: list[int]) -> list[int]:
        """A copy of ``tokens`` with one decision (chosen uniformly) re-drawn to a different value."""
        sizes = self.space.decision_sizes
        free = [i for i, n in enumerate(sizes) if n > 1]
        child = list(tokens)
        if not free:
            return child
        i = free[self._draw(len(free))]
        child[i] = (child[i] + 1 + self._draw(sizes[i] - 1)) % sizes[i]
        return child

    def sample(self, n: int) -> list[Any]:
        return [self.space.decode(self.population[self._draw(len(self.population))]) for _ in range(n)]

    def active(self, epoch: int) -> bool:
        c = self.cfg
        return c.train_controller and c.start_training_controller <= epoch < c.stop_training_controller

    @torch.no_grad()
    def _score(self, member: int) -> float | None:
        c = self.cfg
        reward, _ = self.space.reward(self.space.decode(self.population[member]), c.nb_batch_reward_controller,
                                      c.reward_c, c.ppl_square)
        if not self.guard.check(reward, "reward"):
            return None
        self.fitness[member] = float(reward)
        if self.best is None or reward > self.best[0]:
            self.best = (float(reward), list(self.population[member]))
        return float(reward)

    def learn(self, epoch: int) -> dict[str, float]:
        self.epoch = epoch
        c = self.cfg
        winners = []
        for _ in tqdm(range(c.controller_max_step), desc=f"epoch {epoch} evolution", leave=False, disable=None):
            boundary()
            picks = torch.randperm(len(self.population), generator=self.generator)[:c.evolution_sample_size].tolist()
            scores = [self._score(m) for m in picks]
            if any(s is None for s in scores):
                continue
            self.guard.ok()
            order = sorted(range(len(picks)), key=lambda k: scores[k])  # ascending reward
            winner, loser = picks[order[-1]], picks[order[0]]
            gone = min(range(len(self.population)), key=lambda m: self.ages[m]) if c.evolution_regularized else loser
            self.population[gone] = self.mutate(self.population[winner])
            self.ages[gone], self.fitness[gone] = self.born, None
            self.born += 1
            self.step += 1
            winners.append(scores[order[-1]])
            if self.run:
                self.run.scalars({"evolution/winner_reward": scores[order[-1]]}, self.step)
        known = [f for f in self.fitness if f is not None]
        if not winners:
            return {}
        return {"controller_reward": float(np.mean(winners)), "evolution_best_reward": self.best[0] if self.best else math.nan,
                "evolution_population_reward": float(np.mean(known)) if known else math.nan}

    def derive(self, n: int, score: Callable[[Any], float]) -> tuple[Any, float]:
        """The lowest-``score`` architecture among the population and the best individual seen.

        Rewards were measured with the shared weights of their time; ``score`` (the space's held-out
        error) re-measures every candidate with today's, so a once-lucky cell cannot win on an old
        reward. The population is the candidate set, whatever ``n``.
        """
        candidates = [self.space.decode(t) for t in self.population]
        if self.best is not None:
            candidates.append(self.space.decode(self.best[1]))
        return best_of(((arch_key(a), a) for a in candidates), score)

    @property
    def skipped(self) -> int:
        return self.guard.total

    def first_nonfinite(self) -> str | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "population": [list(t) for t in self.population],
                "ages": list(self.ages), "fitness": list(self.fitness), "born": self.born,
                "best": None if self.best is None else [self.best[0], list(self.best[1])], "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())
        self.population = [list(t) for t in state["population"]]
        self.ages, self.fitness, self.born = list(state["ages"]), list(state["fitness"]), state["born"]
        self.best = None if state["best"] is None else (state["best"][0], list(state["best"][1]))
        self.step = state["step"]
