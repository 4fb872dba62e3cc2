"""Random search with weight sharing (Li & Talwalkar 2019, "Random search and reproducibility for NAS").

Every architecture of the shared phase is drawn uniformly from the space (``random_arch``: each
decision uniform and independent); there is no learning phase; ``derive`` still keeps the best of
``derive_num_sample`` uniform samples by the space's held-out error. The sampler draws from its own
seeded generator, saved in its state, so a resumed run draws what the uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from spaces.base import SearchSpace
from engine.runlog import RunDir
from samplers.base import arch_key, best_of


@dataclass(frozen=True)
class RandomConfig:
    random_seed: int


class RandomSampler:
    Config: ClassVar[type] = RandomConfig

    def __init__(self, space: SearchSpace, seed: int) -> None:
        self.space = space
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def build(cls, space: SearchSpace, cfg: RandomConfig, device: torch.device, run: RunDir | None) -> RandomSampler:
        return cls(space, cfg.random_seed)

    def sample(self, n: int) -> list[Any]:
        return [self.space.random_arch(self.generator) for _ in range(n)]

    def active(self, epoch: int) -> bool:
        return False

    def learn(self, epoch: int) -> dict[str, float]:
        return {}

    def derive(self, n: int, score: Callable[[Any], float]) -> tuple[Any, float]:
        return best_of(((arch_key(a), a) for a in self.sample(n)), score)

    @property
    def skipped(self) -> int:
        return 0

    def first_nonfinite(self) -> str | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())
