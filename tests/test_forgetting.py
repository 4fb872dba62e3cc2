"""The paired forgetting experiment on a tiny task where forgetting is forced."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import config
from analysis.stats import bootstrap_ci
from experiments.forgetting.protocol import run_forgetting
from spaces.base import Loss, OptimSpec
from regularizers.wpl_search import WPLSearchConfig
from samplers import ReinforceSampler, ReinforceConfig
from trainer import Trainer, TrainerConfig


class Conflict:
    """Two 'architectures' read the same shared layer with opposite labels: training one undoes the other."""

    def __init__(self, flipped: bool) -> None:
        self.flipped = flipped

    def to_dict(self) -> dict[str, Any]:
        return {"type": "conflict", "flipped": self.flipped}


class ConflictSpace:
    metric = "ppl"
    error_unit = "nats (mean cross-entropy)"

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.model = nn.Linear(6, 2)
        self.x = torch.randn(512, 6, generator=gen)
        self.y = (self.x[:, 0] > 0).long()
        self.pos = {"train": 0, "fisher": 0}
        self.decision_sizes = [2]

    def decode(self, tokens: list[int]) -> Conflict:
        return Conflict(bool(tokens[0]))

    def wpl_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"shared": list(self.model.parameters())}

    def groups_for(self, arch: Conflict) -> list[str]:
        return ["shared"]

    def optim_spec(self) -> OptimSpec:
        return OptimSpec(lr=0.05, weight_decay=0.0, grad_clip=0.0)

    def _loss(self, arch: Conflict, x: torch.Tensor, y: torch.Tensor) -> Loss:
        ce = F.cross_entropy(self.model(x), 1 - y if arch.flipped else y)
        return Loss(ce, ce, None)

    def _next(self, stream: str, arch: Conflict) -> Loss:
        i = self.pos[stream]
        self.pos[stream] = (i + 32) % 512
        return self._loss(arch, self.x[i:i + 32], self.y[i:i + 32])

    def train_loss(self, arch: Conflict) -> Loss:
        return self._next("train", arch)

    def fisher_loss(self, arch: Conflict) -> Loss:
        return self._next("fisher", arch)

    @torch.no_grad()
    def error(self, arch: Conflict) -> float:
        return float(self._loss(arch, self.x, self.y).ce)

    def state_dict(self) -> dict[str, Any]:
        return {stream: {"pos": pos} for stream, pos in self.pos.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pos = {stream: s["pos"] for stream, s in state.items()}


def make_trainer() -> Trainer:
    torch.manual_seed(0)
    space = ConflictSpace()
    cfg = config.defaults(TrainerConfig, num_batch_per_iter=40, shared_optim="adam")
    sampler = ReinforceSampler.build(space, config.defaults(ReinforceConfig, controller_hid=4), torch.device("cpu"), None)  # type: ignore[arg-type]
    return Trainer(space, sampler, None, cfg, None, {})  # type: ignore[arg-type]


def test_paired_variants_share_start_batches_and_architectures() -> None:
    trainer = make_trainer()
    archs = [Conflict(False), Conflict(True)]
    start = copy.deepcopy(trainer.state_dict())
    wpl = config.defaults(WPLSearchConfig, lambda_fisher=1.0, fisher_clip_by_norm=0.0, momentum=False, alpha_fisher=1e5,
                          shared_valid_fisher=True)
    results = run_forgetting(trainer, start, archs, ["none", "loss"], wpl, epoch=0)
    none, wpl = results["variants"]["none"], results["variants"]["loss"]
    assert results["noise_floor"]["max_abs"] == 0.0  # eval mode: evaluating twice gives the same error
    assert none["start_weights_sha1"] == wpl["start_weights_sha1"]
    assert none["batches_sha1"] == wpl["batches_sha1"]
    assert results["archs"] == [{"type": "conflict", "flipped": False}, {"type": "conflict", "flipped": True}]
    # without WPL the first architecture is destroyed by the second; with a huge alpha it is kept
    assert none["diff"][0] > 0.5
    assert abs(wpl["diff"][0]) < 0.1 * none["diff"][0]
    assert wpl["paired_vs_none"]["mean"] < 0
    assert none["paired_vs_none"]["mean"] == 0.0


def test_bootstrap_interval_brackets_the_mean() -> None:
    values = [0.1, 0.3, 0.2, 0.5, 0.4, 0.25]
    lo, hi = bootstrap_ci(values)
    assert lo < sum(values) / len(values) < hi
    assert bootstrap_ci(values) == (lo, hi)  # seeded
    assert bootstrap_ci([2.0]) == (2.0, 2.0)
