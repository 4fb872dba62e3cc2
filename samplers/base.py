"""The interface between the search loop and whatever proposes architectures.

Per epoch the loop (trainer.py) calls::

    sampler.sample(n)                  # architectures for the shared phase, n at a time
    if sampler.active(epoch):
        sampler.learn(epoch)           # its own learning phase (REINFORCE on validation rewards)
    sampler.derive(n, score)           # every save_epoch epochs: the best of n samples by ``score``

``score`` is the search space's error on its fixed held-out batches (lower is better). A sampler
owns its own state (networks, optimisers, generators) and saves it with ``state_dict``; one that
learns counts its own skipped non-finite updates (``skipped``), apart from the shared step's.
A new sampler is one file here plus one entry in ``samplers.SAMPLERS``; ``build`` receives the
sampler's own typed config (``Config``, filled from the same-named options by modes/builders.py).
"""

from __future__ import annotations

import json
from typing import Any, Callable, ClassVar, Hashable, Iterable, Protocol

import torch

from spaces.base import SearchSpace
from engine.runlog import RunDir


class Sampler(Protocol):
    Config: ClassVar[type]

    @classmethod
    def build(cls, space: SearchSpace, cfg: Any, device: torch.device, run: RunDir | None) -> Sampler: ...

    def sample(self, n: int) -> list[Any]:
        """``n`` architectures to train on the shared weights."""

    def active(self, epoch: int) -> bool:
        """Whether the sampler has a learning phase in ``epoch``."""

    def learn(self, epoch: int) -> dict[str, float]:
        """The learning phase: update from the space's rewards; returns the epoch's metrics entries."""

    def derive(self, n: int, score: Callable[[Any], float]) -> tuple[Any, float]:
        """The best (lowest ``score``) of ``n`` sampled architectures, and its score."""

    @property
    def skipped(self) -> int:
        """Updates skipped because a reward or loss was not finite (since construction)."""

    def first_nonfinite(self) -> str | None:
        """The first piece of the sampler's state holding NaN or infinity, if any (never saved)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def best_of(candidates: Iterable[tuple[Hashable, Any]], score: Callable[[Any], float]) -> tuple[Any, float]:
    """The lowest-scoring architecture of ``(key, architecture)`` pairs, each key scored once, in order
    of first appearance (the first wins a tie)."""
    unique: dict[Hashable, Any] = {}
    for key, arch in candidates:
        unique.setdefault(key, arch)
    scored = [(score(arch), arch) for arch in unique.values()]
    error, arch = min(scored, key=lambda s: s[0])
    return arch, error


def arch_key(arch: Any) -> str:
    """A hashable identity of an architecture (its JSON form)."""
    return json.dumps(arch.to_dict(), sort_keys=True)


def last_checkpoint(run: RunDir | None) -> str:
    """The newest checkpoint on disk, for stop messages (only finite states are ever written)."""
    latest = run.latest_checkpoint() if run else None
    return str(latest) if latest else "none yet"
