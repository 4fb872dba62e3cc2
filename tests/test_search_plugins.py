"""The search loop's two plug-in interfaces on tiny fakes: samplers (samplers/) and regulariser hooks.

A one-weight linear "search space" makes every shared step checkable by hand; a regulariser that
records its hooks pins the order trainer.py calls them in; the random sampler is checked for
uniformity and for drawing the same architectures after a resume; and ``--sampler=random`` runs,
derives and resumes end to end on the tiny corpus.
"""

from __future__ import annotations

import dataclasses

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pytest
import torch
from scipy import stats
from torch import Tensor, nn

import config
import main
from conftest import metrics_without_timing
from spaces.base import Loss, OptimSpec
from regularizers.base import HeldOut, Regularizer, fisher_objective
from samplers import SAMPLERS, EvolutionSampler, RandomSampler
from trainer import Trainer, TrainerConfig

X, Y, LR = 2.0, 3.0, 0.1  # the fake space's one training example and the shared SGD learning rate


@dataclass(frozen=True)
class Choice:
    """An "architecture": one token per decision."""

    tokens: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "fake", "tokens": list(self.tokens)}


class LinearSpace:
    """``loss = (w x - y)^2`` on a one-weight model; the error of architecture ``(k, ...)`` is ``k``."""

    metric = "ppl"
    error_unit = "nats"

    def __init__(self, decision_sizes: Sequence[int] = (2,)) -> None:
        self.model = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.model.weight.fill_(1.0)
        self.decision_sizes = list(decision_sizes)
        self.calls: list[str] = []

    def decode(self, tokens: Sequence[int]) -> Choice:
        return Choice(tuple(tokens))

    def arch_from_dict(self, d: dict[str, Any]) -> Choice:
        return Choice(tuple(d["tokens"]))

    def random_arch(self, generator: torch.Generator) -> Choice:
        return Choice(tuple(int(torch.randint(n, (1,), generator=generator)) for n in self.decision_sizes))

    def wpl_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"w": [self.model.weight]}

    def groups_for(self, arch: Choice) -> list[str]:
        return ["w"]

    def optim_spec(self) -> OptimSpec:
        return OptimSpec(lr=LR, weight_decay=0.0, grad_clip=0.0)

    def _loss(self) -> Loss:
        loss = (self.model(torch.tensor([[X]])).squeeze() - Y) ** 2
        return Loss(loss, loss, None)

    def train_loss(self, arch: Choice) -> Loss:
        self.calls.append("train_loss")
        return self._loss()

    def fisher_loss(self, arch: Choice) -> Loss:
        self.calls.append("fisher_loss")
        return self._loss()

    def error(self, arch: Choice) -> float:
        self.calls.append("error")
        return float(arch.tokens[0])

    def reward(self, arch: Choice, num_batches: int, reward_c: float, square: bool) -> tuple[float, float]:
        self.calls.append("reward")
        return 1.0, 1.0

    def evaluate(self, arch: Choice, split: str) -> dict[str, float]:
        self.calls.append("evaluate")
        return {f"{split}_ppl": 10.0 + arch.tokens[0]}

    def draw(self, arch: Choice, path: Path) -> Path:
        return path

    def state_dict(self) -> dict[str, Any]:
        return {"train": {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Recording(Regularizer):
    """A quadratic regulariser with importance 1 that records every hook the loop calls."""

    def __init__(self, groups: dict[str, list[nn.Parameter]], strength: float) -> None:
        super().__init__(groups, strength)
        for importance in self.flat(self.importance):
            importance.fill_(1.0)
        self.log: list[str] = []

    def begin_epoch(self, epoch: int) -> None:
        self.log.append(f"begin_epoch {epoch}")

    def begin_batch(self, last: bool) -> None:
        self.log.append(f"begin_batch{' last' if last else ''}")

    def after_backward(self, names: Iterable[str]) -> None:
        self.log.append("after_backward")

    def add_penalty_grad_(self, names: Iterable[str]) -> Tensor:
        self.log.append("add_penalty_grad_")
        return super().add_penalty_grad_(names)

    def after_step(self, names: Iterable[str]) -> None:
        self.log.append("after_step")

    def end_model(self, names: Sequence[str], held_out: HeldOut) -> None:
        self.log.append(f"end_model {list(names)}")
        assert held_out(fisher_objective(True), "test loss")  # one validation batch's gradient, as WPL's Fisher reads it
        self.refresh_anchors()

    def stats(self, names: Iterable[str]) -> dict[str, float]:
        self.log.append("stats")
        return super().stats(names)


def trainer(space: LinearSpace, reg: Regularizer | None, **overrides: Any) -> Trainer:
    cfg = config.defaults(TrainerConfig, **{"max_epoch": 1, "shared_max_step": 2, "num_batch_per_iter": 2,
                                            "save_epoch": 1, "derive_num_sample": 4, "log_step": 0, **overrides})
    return Trainer(space, RandomSampler(space, seed=0), reg, cfg, None, {})  # type: ignore[arg-type]


def sgd(w: float, steps: int, strength: float = 0.0, anchor: float = 1.0) -> float:
    """Hand-computed SGD on (w x - y)^2 + strength/2 (w - anchor)^2 (the anchor fixed over ``steps``)."""
    for _ in range(steps):
        w -= LR * (2 * X * (w * X - Y) + strength * (w - anchor))
    return w


def test_the_loop_calls_the_space_in_order_and_its_steps_are_plain_sgd() -> None:
    space = LinearSpace()
    t = trainer(space, None)
    record = t.run_epoch()
    # shared phase: 2 steps x (2 batches, the forgetting metric's err1), err2 of both, then derive (4 samples,
    # each distinct architecture scored once) and a validation of the derived one; no learning phase
    derived = len({tuple(a.tokens) for a in RandomSampler(LinearSpace(), seed=0).sample(2 + 4)[2:]})
    assert space.calls == ["train_loss", "train_loss", "error"] * 2 + ["error"] * 2 + ["error"] * derived + ["evaluate"]
    w = sgd(1.0, 4)
    assert float(space.model.weight) == pytest.approx(w, rel=1e-6)
    ce = [(w1 * X - Y) ** 2 for w1 in (1.0, sgd(1.0, 1), sgd(1.0, 2), sgd(1.0, 3))]
    assert record["shared_ce"] == pytest.approx(sum(ce) / 4, rel=1e-6)
    assert record["shared_wpl"] == record["alpha"] == record["fisher_norm"] == 0.0
    assert "controller_reward" not in record and record["derived_error"] == min(a.tokens[0] for a in
                                                                                 RandomSampler(LinearSpace(), 0).sample(6)[2:])


def test_the_final_anneal_sets_the_lr_per_shared_step() -> None:
    class Annealed(LinearSpace):
        def optim_spec(self) -> OptimSpec:
            return OptimSpec(lr=LR, weight_decay=0.0, grad_clip=0.0, anneal=0.5)

    space = Annealed()
    t = trainer(space, None, max_epoch=2, num_batch_per_iter=1, derive_num_sample=1)
    records = [t.run_epoch(), t.run_epoch()]
    w = 1.0
    for factor in (1.0, 1.0, 1.0, 0.5):  # steps at epochs 0, 0.5, 1, 1.5 of 2; the last half falls linearly to 0
        w -= factor * LR * 2 * X * (w * X - Y)
    assert float(space.model.weight) == pytest.approx(w, rel=1e-6)
    assert (records[0]["shared_lr"], records[1]["shared_lr"]) == pytest.approx((LR, LR / 2))


def test_regulariser_hooks_are_called_in_the_documented_order_and_its_gradient_is_applied() -> None:
    space = LinearSpace()
    reg = Recording(space.wpl_groups(), strength=0.5)
    t = trainer(space, reg, shared_max_step=1, num_batch_per_iter=3, derive_num_sample=1)
    record = t.run_epoch()
    batch = ["after_backward", "add_penalty_grad_", "after_step"]
    assert reg.log == ["begin_epoch 0", "begin_batch", *batch, "begin_batch", *batch, "begin_batch last", *batch,
                       "end_model ['w']", "stats"]
    assert space.calls[:5] == ["train_loss"] * 3 + ["fisher_loss", "error"]
    w = sgd(1.0, 3, strength=0.5, anchor=1.0)  # anchored at the initial weight until end_model
    assert float(space.model.weight) == pytest.approx(w, rel=1e-6)
    assert float(reg.anchor["w"][0]) == pytest.approx(w, rel=1e-6)  # refreshed after the architecture
    assert record["alpha"] == 0.5 and record["fisher_norm"] == record["fisher_max"] == 1.0
    assert all(p.grad is None for p in space.model.parameters())  # nothing left behind for the next step


def test_an_inactive_regulariser_is_not_called_in_its_epoch() -> None:
    class Late(Recording):
        def active(self, epoch: int) -> bool:
            return epoch >= 1

    space = LinearSpace()
    reg = Late(space.wpl_groups(), strength=0.5)
    record = trainer(space, reg, derive_num_sample=1).run_epoch()
    assert reg.log == ["begin_epoch 0"] and record["alpha"] == 0.0
    assert float(space.model.weight) == pytest.approx(sgd(1.0, 4), rel=1e-6)


def test_random_sampler_is_uniform_and_resumes_where_it_stopped() -> None:
    space = LinearSpace(decision_sizes=(2, 3, 2))
    sampler = SAMPLERS["random"].build(space, RandomSampler.Config(random_seed=3), torch.device("cpu"), None)
    counts = Counter(a.tokens for a in sampler.sample(2400))
    assert len(counts) == 12
    assert stats.chisquare([counts[k] for k in sorted(counts)]).pvalue > 1e-3  # 200 expected per architecture
    assert not sampler.active(0) and sampler.learn(0) == {} and sampler.first_nonfinite() is None
    state = sampler.state_dict()
    ahead = sampler.sample(5)
    again = RandomSampler(space, seed=99)
    again.load_state_dict(state)
    assert again.sample(5) == ahead
    assert RandomSampler(space, seed=3).sample(20) == RandomSampler(space, seed=3).sample(20)
    assert RandomSampler(space, seed=3).sample(20) != RandomSampler(space, seed=4).sample(20)


def test_random_derive_keeps_the_lowest_error_of_its_samples() -> None:
    space = LinearSpace(decision_sizes=(3,))
    arch, error = RandomSampler(space, seed=0).derive(20, lambda a: float((a.tokens[0] - 1) ** 2))
    assert arch == Choice((1,)) and error == 0.0
    assert space.calls == []  # derive scores with the function it is given


# ------------------------------------------------------------------------------ end to end
RANDOM = ["--dataset=tiny", "--sampler=random", "--max_epoch=2", "--shared_max_step=2", "--num_batch_per_iter=2",
          "--save_epoch=1", "--shared_embed=8", "--shared_hid=8", "--batch_size=4", "--test_batch_size=2",
          "--num_blocks=3", "--derive_num_sample=3", "--num_gpu=0", "--forgetting_eval_batches=1", "--alpha_fisher=5",
          "--use_tensorboard=False", "--train_controller=True"]


def test_random_search_trains_derives_and_resumes_identically(data_dir: Path, tmp_path: Path) -> None:
    argv = [*RANDOM, f"--data_dir={data_dir}", f"--log_dir={tmp_path}"]
    assert main.main([*argv, "--comment=full"]) == 0
    run = tmp_path / "tiny_full"
    records = metrics_without_timing(run)
    assert [r["epoch"] for r in records] == [0, 1]
    assert not any(k.startswith("controller_") for r in records for k in r)  # no controller phase
    assert records[1]["alpha"] == 5.0 and records[1]["shared_wpl"] > 0 and "derived_arch" in records[1]
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert set(state["sampler"]) == {"generator"} and "controller" not in state

    copy = tmp_path / "tiny_again"  # stopped after epoch 0, then resumed
    shutil.copytree(run, copy)
    shutil.copy(copy / "checkpoints" / "epoch_0000.pt", copy / "checkpoints" / "latest.pt")
    (copy / "checkpoints" / "epoch_0001.pt").unlink()
    assert main.main([*argv, "--comment=again", "--resume=True"]) == 0
    assert metrics_without_timing(copy) == records

    assert main.main(["--mode=derive", f"--load_path={run}", "--derive_num_sample=3", f"--data_dir={data_dir}"]) == 0
    derived = json.loads((run / "derived_arch.json").read_text())
    assert derived["metric"] == "valid_ppl" and derived["arch"]["type"] == "rnn"


# ------------------------------------------------------------------------------ evolution
class RewardSpace(LinearSpace):
    """The reward of an architecture is the sum of its tokens: evolution should climb towards the maximum."""

    def reward(self, arch: Choice, num_batches: int, reward_c: float, square: bool) -> tuple[float, float]:
        self.calls.append("reward")
        return float(sum(arch.tokens)), 0.0


def evolution(space: LinearSpace, regularized: bool = False, seed: int = 0) -> EvolutionSampler:
    cfg = EvolutionSampler.Config(train_controller=True, start_training_controller=0, stop_training_controller=9,
                                  controller_max_step=30, nb_batch_reward_controller=1, reward_c=1.0, ppl_square=False,
                                  evolution_population=6, evolution_sample_size=2, evolution_regularized=regularized,
                                  random_seed=seed)
    return SAMPLERS["evolution"].build(space, cfg, torch.device("cpu"), None)


def test_evolution_mutates_one_decision_and_climbs_the_reward() -> None:
    space = RewardSpace(decision_sizes=(4, 4, 4, 1))
    sampler = evolution(space)
    parent = [1, 2, 3, 0]
    for _ in range(50):
        child = sampler.mutate(parent)
        assert sum(a != b for a, b in zip(parent, child)) == 1 and child[3] == 0  # one decision, never a fixed one
    start = max(sum(t) for t in sampler.population)
    record = sampler.learn(0)
    assert sampler.step == 30 and space.calls.count("reward") == 60  # two members scored per tournament
    assert record["evolution_best_reward"] >= start and sampler.best is not None
    arch, error = sampler.derive(5, lambda a: -float(sum(a.tokens)))  # re-scored: here the same order as the reward
    candidates = [*sampler.population, sampler.best[1]]
    assert error == min(-float(sum(t)) for t in candidates) and error <= -sampler.best[0] and list(arch.tokens) in candidates


def test_regularized_evolution_removes_the_oldest() -> None:
    sampler = evolution(RewardSpace(decision_sizes=(3, 3)), regularized=True)
    sampler.cfg = dataclasses.replace(sampler.cfg, controller_max_step=1)
    oldest = sampler.ages.index(min(sampler.ages))
    sampler.learn(0)
    assert sampler.ages[oldest] == 6 and sorted(sampler.ages) == [1, 2, 3, 4, 5, 6]


def test_evolution_state_round_trips_and_resumes_exactly() -> None:
    space = RewardSpace(decision_sizes=(3, 3, 2))
    a = evolution(space, seed=4)
    a.learn(0)
    state = a.state_dict()
    ahead = (a.learn(1), a.sample(8), a.state_dict()["population"])
    b = evolution(space, seed=99)
    b.load_state_dict(torch.load(_saved(state), weights_only=True))
    assert (b.learn(1), b.sample(8), b.state_dict()["population"]) == ahead


def _saved(state: dict[str, Any]) -> Any:
    """``state`` through torch.save and a weights-only load, as a checkpoint holds it."""
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_evolution_search_runs_end_to_end(data_dir: Path, tmp_path: Path) -> None:
    argv = [*[a for a in RANDOM if not a.startswith("--sampler")], "--sampler=evolution", "--controller_max_step=2",
            "--evolution_population=4", f"--data_dir={data_dir}", f"--log_dir={tmp_path}", "--comment=evo"]
    assert main.main(argv) == 0
    records = metrics_without_timing(tmp_path / "tiny_evo")
    assert [r["epoch"] for r in records] == [0, 1] and "evolution_best_reward" in records[1]
    state = torch.load(tmp_path / "tiny_evo" / "checkpoints" / "latest.pt", weights_only=True)
    assert len(state["sampler"]["population"]) == 4 and state["sampler"]["step"] == 4
