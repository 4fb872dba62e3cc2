"""``--wpl_importance``: the search's MAS and SI importances against hand computations, the option, a
tiny search per importance resumed exactly, and ``--mode=forgetting``'s importance variants."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import config
import main
from conftest import metrics_without_timing
from experiments.forgetting.protocol import run_forgetting
from spaces.base import Loss, OptimSpec
from regularizers.search_importance import SearchL2, SearchMAS, SearchSI, build_search_regularizer
from regularizers.wpl_search import SearchWPL, WPLSearchConfig
from samplers import RandomSampler
from trainer import Trainer, TrainerConfig

LR, LAMBDA, XI = 0.1, 0.9, 0.05


class Arch:
    def to_dict(self) -> dict[str, Any]:
        return {"type": "one"}


class TinySpace:
    """A bias-free linear classifier, one fixed training batch and one fixed validation batch."""

    metric = "ppl"
    error_unit = "nats (mean cross-entropy)"
    def __init__(self) -> None:
        self.decision_sizes = [1]
        gen = torch.Generator().manual_seed(3)
        self.model = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.model.weight.copy_(torch.randn(2, 3, generator=gen))
        self.x, self.y = torch.randn(5, 3, generator=gen), torch.tensor([0, 1, 1, 0, 1])
        self.xv, self.yv = torch.randn(4, 3, generator=gen), torch.tensor([1, 0, 0, 1])

    def decode(self, tokens: list[int]) -> Arch:
        return Arch()

    def random_arch(self, generator: torch.Generator) -> Arch:
        return Arch()

    def wpl_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"shared": [self.model.weight]}

    def groups_for(self, arch: Arch) -> list[str]:
        return ["shared"]

    def optim_spec(self) -> OptimSpec:
        return OptimSpec(lr=LR, weight_decay=0.0, grad_clip=0.0)

    def _loss(self, x: Tensor, y: Tensor) -> Loss:
        logits = self.model(x)
        ce = F.cross_entropy(logits, y)
        return Loss(ce, ce, None, logits)

    def train_loss(self, arch: Arch) -> Loss:
        return self._loss(self.x, self.y)

    def fisher_loss(self, arch: Arch) -> Loss:
        return self._loss(self.xv, self.yv)

    @torch.no_grad()
    def error(self, arch: Arch) -> float:
        return float(self._loss(self.xv, self.yv).ce)

    def state_dict(self) -> dict[str, Any]:
        return {"train": {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def search_config(importance: str, **overrides: Any) -> WPLSearchConfig:
    options = {"wpl_importance": importance, "wpl_alpha_mode": "loss", "lambda_fisher": LAMBDA, "fisher_clip_by_norm": 0.0,
               "momentum": True, "alpha_fisher": 1.0, "si_xi": XI, **overrides}
    return config.defaults(WPLSearchConfig, **options)


def trained(importance: str, steps: int = 2) -> tuple[SearchWPL, TinySpace, Tensor]:
    """One architecture trained ``steps`` plain SGD steps through ``Trainer.train_arch``; its start weights."""
    space = TinySpace()
    start = space.model.weight.detach().clone()
    reg = build_search_regularizer(space.wpl_groups(), search_config(importance))
    cfg = config.defaults(TrainerConfig, num_batch_per_iter=steps, shared_optim="sgd")
    trainer = Trainer(space, RandomSampler(space, 0), reg, cfg, None, {})  # type: ignore[arg-type]
    trainer.train_arch(Arch(), reg)
    return reg, space, start


def ce_grad(w: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """By hand: d mean CE / dW = (softmax(x W^T) - onehot(y))^T x / N."""
    p = torch.softmax(x @ w.T, dim=1)
    return (p - F.one_hot(y, 2).float()).T @ x / len(x)


def test_mas_importance_is_the_absolute_gradient_of_the_validation_outputs_squared_norm() -> None:
    reg, space, start = trained("mas")
    assert isinstance(reg, SearchMAS)
    w = start
    for _ in range(2):  # the first architecture trains without a penalty (zero importance)
        w = w - LR * ce_grad(w, space.x, space.y)
    assert torch.allclose(space.model.weight, w, atol=1e-6)
    # d/dW mean_n ||W x_n||^2 = (2/N) sum_n (W x_n) x_n^T; folded as (1 - lambda) * 0 + lambda * |.|
    expected = LAMBDA * ((2 / len(space.xv)) * (space.xv @ w.T).T @ space.xv).abs()
    assert torch.allclose(reg.fisher["shared"][0], expected, atol=1e-6)
    assert torch.equal(reg.anchor["shared"][0], space.model.weight.detach())
    penalty = float(reg.penalty(["shared"]))
    assert penalty == 0.0  # anchored at the current weights


def test_the_l2_control_is_the_fisher_flattened_to_its_mean_per_tensor() -> None:
    fisher, space_f, _ = trained("fisher")
    l2, space_l, _ = trained("l2")
    assert isinstance(l2, SearchL2)
    assert torch.equal(space_f.model.weight, space_l.model.weight)  # the first architecture: no penalty yet
    table = fisher.fisher["shared"][0]
    assert float(table.std()) > 0  # the Fisher does single out weights ...
    assert torch.allclose(l2.fisher["shared"][0], torch.full_like(table, float(table.mean())), atol=1e-7)  # ... L2 does not


def test_si_importance_is_the_path_integral_normalised_by_the_total_move() -> None:
    reg, space, start = trained("si")
    assert isinstance(reg, SearchSI)
    w0 = start
    g1 = ce_grad(w0, space.x, space.y)
    w1 = w0 - LR * g1
    g2 = ce_grad(w1, space.x, space.y)
    w2 = w1 - LR * g2
    path = -g1 * (w1 - w0) - g2 * (w2 - w1)  # = LR * (g1^2 + g2^2)
    expected = LAMBDA * path / ((w2 - w0).square() + XI)
    assert torch.allclose(reg.fisher["shared"][0], expected, atol=1e-6)
    assert torch.count_nonzero(reg.path["shared"][0]) == 0  # restarts at the anchor refresh
    assert torch.equal(reg.anchor["shared"][0], space.model.weight.detach())
    # loss mode: the penalty is alpha/2 sum F (theta - theta*)^2 (the search's anchors are lazy: a move of
    # the weights is preceded by the hook that copies the anchors out, as in Trainer.train_arch)
    reg.hold_anchors(["shared"])
    with torch.no_grad():
        space.model.weight.add_(0.5)
    assert torch.isclose(reg.penalty(["shared"]), 0.5 * expected.sum() * 0.25, atol=1e-6)


def test_the_default_importance_is_the_papers_fisher() -> None:
    args = config.parse_args([])
    assert args.wpl_importance == "fisher"
    reg = build_search_regularizer(TinySpace().wpl_groups(), config.defaults(WPLSearchConfig))
    assert type(reg) is SearchWPL


@pytest.mark.parametrize("value", ["ewc", "", "MASS"])
def test_an_unknown_importance_is_one_line_and_exit_2(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        config.parse_args([f"--wpl_importance={value}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fisher" in err[0] and "mas" in err[0] and "si" in err[0]


def test_forgetting_variants_accept_the_importances() -> None:
    space = TinySpace()
    cfg = config.defaults(TrainerConfig, num_batch_per_iter=2, shared_optim="sgd")
    trainer = Trainer(space, RandomSampler(space, 0), None, cfg, None, {})  # type: ignore[arg-type]
    start = copy.deepcopy(trainer.state_dict())
    results = run_forgetting(trainer, start, [Arch(), Arch()], ["none", "fisher", "mas", "si"],
                             search_config("fisher", alpha_fisher=50.0), epoch=0)
    variants = results["variants"]
    assert list(variants) == ["none", "fisher", "mas", "si"]
    assert len({v["start_weights_sha1"] for v in variants.values()}) == 1
    for name in ("fisher", "mas", "si"):  # the second architecture trains under a non-zero penalty
        assert variants[name]["wpl_ce_ratio"] > 0
        assert variants[name]["err2"] != variants["none"]["err2"]


TINY = ["--dataset=tiny", "--sampler=random", "--max_epoch=2", "--shared_max_step=2", "--num_batch_per_iter=2",
        "--save_epoch=1", "--shared_embed=8", "--shared_hid=8", "--batch_size=4", "--test_batch_size=2",
        "--num_blocks=3", "--derive_num_sample=2", "--num_gpu=0", "--forgetting_eval_batches=1", "--alpha_fisher=5",
        "--use_tensorboard=False"]


@pytest.mark.parametrize("importance", ["mas", "si"])
def test_a_tiny_search_per_importance_resumes_exactly(importance: str, data_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*TINY, f"--wpl_importance={importance}", f"--data_dir={data_dir}", f"--log_dir={tmp_path}"]
    assert main.main([*argv, "--comment=full"]) == 0
    run = tmp_path / "tiny_full"
    records = metrics_without_timing(run)
    assert [r["epoch"] for r in records] == [0, 1] and records[1]["shared_wpl"] > 0
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert any(k.startswith("path/") for k in state["regularizer"]) == (importance == "si")

    again = tmp_path / "tiny_again"  # stopped after epoch 0, then resumed
    shutil.copytree(run, again)
    shutil.copy(again / "checkpoints" / "epoch_0000.pt", again / "checkpoints" / "latest.pt")
    (again / "checkpoints" / "epoch_0001.pt").unlink()
    assert main.main([*argv, "--comment=again", "--resume=True"]) == 0
    assert metrics_without_timing(again) == records
    resumed = torch.load(again / "checkpoints" / "latest.pt", weights_only=True)
    assert resumed["regularizer"].keys() == state["regularizer"].keys()
    assert all(torch.equal(resumed["regularizer"][k], v) for k, v in state["regularizer"].items())
    if importance == "si":
        forgetting = ["--mode=forgetting", f"--load_path={run}", "--forgetting_models=2", f"--data_dir={data_dir}"]
        assert main.main([*forgetting, "--forgetting_variants=none,fisher,mas,si"]) == 0
        assert list(json.loads((run / "forgetting_results.json").read_text())["variants"]) == ["none", "fisher", "mas", "si"]
        capsys.readouterr()
        assert main.main([*forgetting, "--wpl_importance=fisher"]) == 2  # the run's SI state does not fit a Fisher
        assert "--forgetting_variants" in capsys.readouterr().err
