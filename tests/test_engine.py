"""The training engine: the guarded step, the guard's stop, schedules, metric direction, checkpoint schema."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from engine import (FORMAT, NonFiniteGuard, NonFiniteLoss, Step, build_optimizer, cosine, improves, require_kind,
                    scheduled_lr, stamp, validate)
from spaces.base import OptimSpec
from utils import UserError


def make_step(clip: float = 0.0, limit: int = 3) -> tuple[nn.Linear, Step]:
    torch.manual_seed(0)
    model = nn.Linear(2, 1, bias=False)
    guard = NonFiniteGuard("loss", "try a smaller lr", lambda: "step 0", lambda: "none yet", limit=limit)
    return model, Step(torch.optim.SGD(model.parameters(), lr=0.5), model.parameters(), clip, guard)


def test_step_is_plain_sgd_with_the_hook_adding_to_the_gradient() -> None:
    model, step = make_step()
    w0 = model.weight.detach().clone()
    x = torch.tensor([[1.0, 2.0]])
    extra = torch.tensor([[0.1, -0.2]])

    def hook() -> torch.Tensor:
        model.weight.grad += extra
        return torch.tensor(0.0)

    assert step.update((model(x) ** 2).sum(), hook)
    grad = 2 * float(w0 @ x.T) * x + extra  # d (w.x)^2 / dw = 2 (w.x) x
    assert torch.allclose(model.weight.detach(), w0 - 0.5 * grad)


def test_clip_bounds_the_global_norm() -> None:
    model, step = make_step(clip=0.1)
    w0 = model.weight.detach().clone()
    step.update((model(torch.tensor([[30.0, 40.0]])) ** 2).sum())
    assert math.isclose(float((model.weight.detach() - w0).norm()), 0.5 * 0.1, rel_tol=1e-5)


def test_nonfinite_loss_or_hook_value_skips_and_the_limit_stops() -> None:
    model, step = make_step(limit=3)
    w0 = model.weight.detach().clone()
    assert not step.update(torch.tensor(float("nan"), requires_grad=True))
    loss = (model(torch.ones(1, 2)) ** 2).sum()
    assert not step.update(loss, lambda: torch.tensor(float("inf")), what="WPL penalty")
    assert torch.equal(model.weight.detach(), w0) and step.guard.in_row == 2
    step.update((model(torch.ones(1, 2)) ** 2).sum())
    assert step.guard.in_row == 0 and step.guard.total == 2
    for _ in range(2):
        step.update(torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLoss, match="3 non-finite loss values in a row at step 0: try a smaller lr; last good checkpoint: none yet"):
        step.update(torch.tensor(float("nan")))


def test_schedules_by_hand() -> None:
    spec = OptimSpec(lr=20.0, weight_decay=0.0, grad_clip=0.0, decay=0.5, decay_after=3)
    assert [scheduled_lr(spec, e, 10) for e in range(5)] == [20.0, 20.0, 20.0, 10.0, 5.0]
    assert cosine(1.0, 0.0, 5, 10) == pytest.approx(0.5) and cosine(1.0, 0.1, 10, 10) == pytest.approx(0.1)
    annealed = OptimSpec(lr=20.0, weight_decay=0.0, grad_clip=0.0, decay=0.5, decay_after=1, anneal=0.5)
    # the last half of 2 epochs falls linearly to 0, on top of the step decay (x0.5 from epoch 1 on)
    assert [scheduled_lr(annealed, e, 2) for e in (0, 0.5, 1.0, 1.5, 1.975, 2.0)] == pytest.approx([20, 20, 10, 5, 0.25, 0])
    sgd = build_optimizer(OptimSpec(lr=0.1, weight_decay=1e-4, grad_clip=0, momentum=0.9, nesterov=True), [nn.Parameter(torch.zeros(1))])
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.9


def test_metric_direction() -> None:
    assert improves("ppl", 80.0, 90.0) and not improves("ppl", 95.0, 90.0)
    assert improves("acc", 95.0, 90.0) and not improves("acc", float("nan"), None) and improves("acc", 1.0, None)


def test_checkpoint_schema_names_format_and_kind(tmp_path: Path) -> None:
    state = stamp("retrain", {"epoch": 1, "model": {}, "config": {}})
    assert state["format"] == FORMAT and validate(state, tmp_path) is state
    with pytest.raises(UserError, match=f"format 7; this version reads format {FORMAT}"):
        validate({**state, "format": 7}, tmp_path)
    with pytest.raises(UserError, match="is a retrain checkpoint, not a search one"):
        require_kind(state, tmp_path, "search")
    with pytest.raises(UserError, match="incomplete .lacks or mangles arch"):
        require_kind(state, tmp_path, "retrain")
    with pytest.raises(UserError, match="format 1; .* convert its run once with python main.py --mode=convert"):
        validate({"format": 1, "epoch": 0, "model": {}, "config": {}}, tmp_path)  # the converter's line
