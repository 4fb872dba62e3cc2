"""Importances, penalties and gradients of every regulariser against hand computations on tiny models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from regularizers import EWC, L2, MAS, REGULARIZERS, SI, WPL, Regularizer, TaskData, online_ewc


class Linear(nn.Module):
    """logits = W x, no bias: per-sample gradients are outer products one can write down."""

    def __init__(self, weight: list[list[float]]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(weight))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.T


def task_of(model: nn.Module, xs: list[list[float]], ys: list[int]) -> TaskData:
    return TaskData(model, [(torch.tensor(xs), torch.tensor(ys))])


def groups(model: Linear) -> dict[str, list[nn.Parameter]]:
    return {"w": [model.weight]}


def test_empirical_fisher_is_the_mean_squared_per_sample_gradient() -> None:
    # W = 0: softmax = (1/2, 1/2); g = (e_y - p) x^T
    model = Linear([[0.0, 0.0], [0.0, 0.0]])
    ewc = EWC(groups(model), 1.0)
    ewc.end_task(task_of(model, [[1.0, 2.0], [2.0, 0.0]], [0, 1]))
    # sample 1: [[.5, 1], [-.5, -1]]^2; sample 2: [[-1, 0], [1, 0]]^2; mean
    torch.testing.assert_close(ewc.importance["w"][0], torch.tensor([[0.625, 0.5], [0.625, 0.5]]))


def test_true_fisher_samples_labels_from_the_model() -> None:
    # logits (1, 0) for x = (1, 0): E_y[g^2] = p0 p1 in column 0; the empirical one with y = 0 is p1^2
    model = Linear([[1.0, 0.0], [0.0, 0.0]])
    p0 = 1 / (1 + math.exp(-1))
    data = task_of(model, [[1.0, 0.0]] * 4000, [0] * 4000)
    true, empirical = EWC(groups(model), 1.0, fisher="true", samples=4000), EWC(groups(model), 1.0, samples=4000)
    true.end_task(data)
    empirical.end_task(data)
    assert float(empirical.importance["w"][0][0, 0]) == pytest.approx((1 - p0) ** 2, rel=1e-5)
    assert float(true.importance["w"][0][0, 0]) == pytest.approx(p0 * (1 - p0), rel=0.05)
    assert float(true.importance["w"][0][:, 1].abs().sum()) == 0.0


def test_ewc_per_task_penalty_is_the_sum_of_one_term_per_task() -> None:
    model = Linear([[0.3, -0.2], [0.1, 0.4]])
    ewc = EWC(groups(model), 3.0, per_task=True)
    data = [([[1.0, 2.0], [2.0, -1.0]], [0, 1]), ([[0.5, 1.0], [-1.0, 1.0]], [1, 1])]
    fishers, anchors = [], []
    for xs, ys in data:
        ewc.end_task(task_of(model, xs, ys))
        fishers.append(ewc.task_fisher(task_of(model, xs, ys)))
        anchors.append(model.weight.detach().clone())
        with torch.no_grad():
            model.weight.add_(torch.tensor([[0.2, -0.1], [0.3, 0.05]]))
    expected = sum(0.5 * 3.0 * (f[0] * (model.weight - a).square()).sum() for f, a in zip(fishers, anchors))
    value = ewc.penalty(["w"])
    torch.testing.assert_close(value, expected)
    model.weight.grad = None
    expected.backward()
    want = model.weight.grad.clone()
    model.weight.grad = None
    torch.testing.assert_close(ewc.add_penalty_grad_(["w"]), expected.detach())
    torch.testing.assert_close(model.weight.grad, want)


def test_merged_and_online_ewc_anchor_at_the_latest_weights() -> None:
    model = Linear([[0.0, 0.0], [0.0, 0.0]])
    data = task_of(model, [[1.0, 2.0], [2.0, 0.0]], [0, 1])
    online = online_ewc(groups(model), 1.0, gamma=0.5)
    online.end_task(data)
    online.end_task(data)  # F <- 0.5 F + F at the same weights
    torch.testing.assert_close(online.importance["w"][0], 1.5 * torch.tensor([[0.625, 0.5], [0.625, 0.5]]))
    torch.testing.assert_close(online.anchor["w"][0], model.weight.detach())


def test_mas_is_the_mean_absolute_gradient_of_the_squared_output_norm() -> None:
    # W = I: f = x, d||f||^2/dW_ij = 2 f_i x_j
    model = Linear([[1.0, 0.0], [0.0, 1.0]])
    mas = MAS(groups(model), 0.5)
    mas.end_task(task_of(model, [[1.0, -2.0], [2.0, 0.0]], [7, 7]))  # labels unused
    # |[[2, -4], [-4, 8]]| and [[8, 0], [0, 0]]: mean
    torch.testing.assert_close(mas.importance["w"][0], torch.tensor([[5.0, 2.0], [2.0, 4.0]]))
    with torch.no_grad():
        model.weight.add_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    # lambda * sum Omega d^2 = 0.5 * (5 + 4)
    assert float(mas.penalty(["w"])) == pytest.approx(4.5)


def test_si_integrates_minus_gradient_times_step_and_normalises() -> None:
    w = nn.Parameter(torch.tensor([0.0, 1.0]))
    si = SI({"w": [w]}, 2.0, xi=0.5)
    steps = [([1.0, -2.0], [-0.1, 0.2]), ([3.0, 0.0], [-0.3, 0.1])]  # (gradient, update)
    for g, delta in steps:
        w.grad = torch.tensor(g)
        si.after_backward(["w"])
        w.grad = torch.tensor([100.0, 100.0])  # a penalty gradient added later is not integrated
        with torch.no_grad():
            w.add_(torch.tensor(delta))
        si.after_step(["w"])
    si.end_task(TaskData(nn.Linear(1, 1), []))
    # path: -(1*-0.1 + 3*-0.3) = 1.0; -(-2*0.2 + 0*0.1) = 0.4; total moves -0.4, 0.3
    omega = torch.tensor([1.0 / (0.16 + 0.5), 0.4 / (0.09 + 0.5)])
    torch.testing.assert_close(si.importance["w"][0], omega)
    torch.testing.assert_close(si.anchor["w"][0], torch.tensor([-0.4, 1.3]))
    with torch.no_grad():
        w.add_(torch.tensor([1.0, 1.0]))
    # c * sum Omega d^2 (no 1/2), gradient 2 c Omega d
    assert float(si.penalty(["w"])) == pytest.approx(2.0 * float(omega.sum()), rel=1e-6)
    w.grad = None
    si.add_penalty_grad_(["w"])
    torch.testing.assert_close(w.grad, 4.0 * omega)


def test_l2_is_uniform_after_the_first_task() -> None:
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    l2 = L2({"w": [w]}, 4.0)
    assert float(l2.penalty(["w"])) == 0.0
    l2.end_task(TaskData(nn.Linear(1, 1), []))
    with torch.no_grad():
        w.add_(torch.tensor([1.0, -2.0]))
    assert float(l2.penalty(["w"])) == pytest.approx(0.5 * 4.0 * 5.0)


def test_wpl_per_task_consolidation_builds_the_fisher_aside() -> None:
    w = nn.Parameter(torch.tensor([1.0, -1.0]))
    wpl = WPL({"w": [w]}, mode="loss", alpha=2.0, consolidate="task")
    w.grad = torch.tensor([1.0, 2.0])
    wpl.after_backward(["w"])
    assert float(wpl.fisher["w"][0].abs().sum()) == 0.0  # nothing penalised during the task
    with torch.no_grad():
        w.add_(1.0)
    wpl.end_task(TaskData(nn.Linear(1, 1), []))
    torch.testing.assert_close(wpl.fisher["w"][0], torch.tensor([0.9, 3.6]))
    torch.testing.assert_close(wpl.anchor["w"][0], torch.tensor([2.0, 0.0]))
    with torch.no_grad():
        w.add_(torch.tensor([1.0, 1.0]))
    assert float(wpl.penalty(["w"])) == pytest.approx(0.5 * 2.0 * (0.9 + 3.6))


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x)))


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_every_regulariser_gradient_matches_autograd_and_state_round_trips(name: str) -> None:
    model = TwoLayer()
    groups_ = {"a": list(model.a.parameters()), "b": list(model.b.parameters())}
    reg: Regularizer = REGULARIZERS[name](groups_, 1.5)
    x, y = torch.randn(8, 3, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1] * 4)
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    for task in range(2):
        for _ in range(3):
            optim.zero_grad()
            nn.functional.cross_entropy(model(x + task), y).backward()
            reg.after_backward(["a", "b"])
            reg.add_penalty_grad_(["a", "b"])
            optim.step()
            reg.after_step(["a", "b"])
        reg.end_task(TaskData(model, [(x, y)]))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    model.zero_grad()
    value = reg.penalty(["a"])
    value.backward()
    want = [p.grad.clone() for p in model.a.parameters()]
    assert float(value) > 0
    model.zero_grad()
    torch.testing.assert_close(reg.add_penalty_grad_(["a"]), value.detach())
    for p, g in zip(model.a.parameters(), want):
        torch.testing.assert_close(p.grad, g)
    assert all(p.grad is None for p in model.b.parameters())
    other = REGULARIZERS[name](groups_, 1.5)
    other.load_state_dict(reg.state_dict())
    torch.testing.assert_close(other.penalty(["a", "b"]), reg.penalty(["a", "b"]))


def test_ewc_constant_is_cached_until_its_tables_change() -> None:
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    reg = EWC({"w": [w]}, 2.0)
    with torch.no_grad():
        reg.offset["w"][0].fill_(5.0)
        reg.importance["w"][0].copy_(torch.tensor([1.0, 3.0]))
        reg.anchor["w"][0].copy_(torch.tensor([0.5, 1.0]))
    first = reg.constant(["w"])
    assert float(first) == 0.5 * 2.0 * (5.0 - (0.25 + 3.0))
    assert reg.constant(["w"]) is first  # nothing changed: the cached value
    with torch.no_grad():
        reg.anchor["w"][0].mul_(2.0)  # an in-place change of a table: recomputed
    assert float(reg.constant(["w"])) == 0.5 * 2.0 * (5.0 - (1.0 + 12.0))
