"""The interface every search space plugs into the trainer with, and the registry's entry for one.

A search space owns its shared model, its architecture type, the controller's decision layout and
its data streams. The trainer only sees this interface, so the same loop (shared phase with WPL,
controller phase, forgetting metric, derive, checkpoints) serves the RNN cell and the micro-CNN.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol, Sequence, TypeVar

import torch
from torch import Tensor, nn


class Loss(NamedTuple):
    total: Tensor  # what is back-propagated: cross-entropy plus the space's own regularisers
    ce: Tensor  # mean cross-entropy of the batch
    accuracy: Tensor | None  # fraction of the batch classified correctly (image spaces), else None
    logits: Tensor | None = None  # the batch's outputs (an output-sensitivity importance such as MAS reads them)


@dataclass(frozen=True)
class OptimSpec:
    """How the shared weights are optimised; the trainer builds the optimiser from it."""

    lr: float
    weight_decay: float
    grad_clip: float
    momentum: float = 0.0
    nesterov: bool = False
    schedule: str = "decay"  # "decay": lr * decay ** k after decay_after; "cosine": lr -> lr_min over max_epoch
    lr_min: float = 0.0
    decay: float = 1.0
    decay_after: float = 0.0
    anneal: float = 0.0  # the run's last fraction over which the lr falls linearly to 0, set per shared step


class SearchSpace(Protocol):
    @property
    def model(self) -> nn.Module: ...  # read-only here, so a space may hold its own nn.Module subclass

    metric: str  # name of the evaluation metric: "ppl" (lower is better) or "acc" (higher is better)
    error_unit: str  # unit of the forgetting metric's error, for logs and the README

    @property
    def decision_sizes(self) -> list[int]: ...

    def decode(self, tokens: Sequence[int]) -> Any: ...

    def arch_from_dict(self, d: dict[str, Any]) -> Any: ...

    def random_arch(self, generator: torch.Generator) -> Any: ...

    def wpl_groups(self) -> dict[str, list[nn.Parameter]]: ...

    def groups_for(self, arch: Any) -> list[str]: ...

    def optim_spec(self) -> OptimSpec: ...

    def train_loss(self, arch: Any) -> Loss:
        """Forward the next training batch through ``arch`` in training mode."""

    def fisher_loss(self, arch: Any) -> Loss:
        """Forward the next validation batch (eval mode, with gradients) for the Fisher."""

    def error(self, arch: Any) -> float:
        """Error on the fixed forgetting batches, eval mode (RNN: mean CE in nats; CNN: error %)."""

    def reward(self, arch: Any, num_batches: int, reward_c: float, square: bool) -> tuple[float, float]:
        """Controller reward and the metric it came from, on the next validation batches."""

    def evaluate(self, arch: Any, split: str, model: nn.Module | None = None) -> dict[str, float]:
        """The metric over a whole split ("valid" or "test"), e.g. ``{"valid_ppl": 81.2}``.

        ``model`` (default: the shared model) is another model computing ``arch`` with the same
        forward, such as a retrain's pruned model or its running average of weights."""

    def draw(self, arch: Any, path: Path) -> Path: ...

    def state_dict(self) -> dict[str, Any]:
        """Data cursors and carried state, so a resumed run sees the same batches.

        One entry per data stream; ``"train"`` is the training stream's.
        """

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def start_reward(space: SearchSpace, arch: Any, num_batches: int, reward_c: float, square: bool
                 ) -> Callable[[], tuple[float, float]]:
    """``space.reward`` in two halves: the returned call gives its result. Spaces that can queue their
    forwards on the device and wait later (``start_reward``: the RNN and the micro-CNN) do; for the
    others the reward is computed here, at once."""
    start = getattr(space, "start_reward", None)
    if start is not None:
        return start(arch, num_batches, reward_c, square)
    result = space.reward(arch, num_batches, reward_c, square)
    return lambda: result


def load_shared_weights(model: nn.Module, shared_state: dict[str, Tensor]) -> None:
    """Give a model pruned to one architecture (``prune_to``) the weights of a shared model, by name."""
    model.load_state_dict({name: shared_state[name] for name in model.state_dict()})


C = TypeVar("C")


def pick(cls: type[C], options: Any, **overrides: Any) -> C:
    """Build the dataclass ``cls`` from the same-named attributes of ``options`` (an argparse namespace)."""
    values = {f.name: getattr(options, f.name) for f in fields(cls) if f.name not in overrides}  # type: ignore[arg-type]
    return cls(**values, **overrides)


@dataclass(frozen=True)
class Retraining:
    """How a space's architectures are trained alone (``--mode=retrain``): the recipe (a name in
    ``recipes.RECIPES``), the options the retrain's space is built with in place of the search's, and the
    optimiser the recipe uses. Both read the retrain's own options (``--retrain_*``)."""

    recipe: str
    sizes: Callable[[argparse.Namespace], dict[str, Any]]
    optim: Callable[[argparse.Namespace], OptimSpec]


@dataclass(frozen=True)
class SpacePlugin:
    """What ``spaces.SPACES`` holds for a space: how to build it from the options (corpus or images loaded
    and checked, shared model on the device) and, when its architectures can be retrained, how."""

    build: Callable[[argparse.Namespace, torch.device], SearchSpace]
    retraining: Retraining | None = None
