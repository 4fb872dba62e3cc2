"""PathNet's rows-only SGD step (models.pathnet.ActiveRows) against the full step over the stacked tensors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from experiments.pathnet import tournament as T
from models.pathnet import ActiveRows, Path, PathNet
from regularizers.base import Regularizer

CFG = T.TournamentConfig(population=4, batches=5, batch_size=8, lr=0.1, converge=2.0, max_generations=1, noise=0.1,
                         mutation_bound="wrap")
PATH = Path(((0, 3, 3), (2, 1, 0)))  # a repeated index counts once
OFF_PATH = {0: [1, 2], 1: [3]}  # layer -> modules the path does not use


def task(seed: int = 0) -> T.BinaryTask:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(100, 12, generator=g)
    return T.BinaryTask("t", x, (x[:, 0] > 0).long(), x[:20], (x[:20, 0] > 0).long(), -1.0, 1.0)


def nets(kinds: str = "relu", aggregate: str = "sum") -> tuple[PathNet, PathNet]:
    net = PathNet(12, 2, 4, 5, [2, 2], aggregate=aggregate, kinds=kinds)
    return net, copy.deepcopy(net)


def assert_same_after_training(fast: PathNet, full: PathNet, monkeypatch: pytest.MonkeyPatch, frozen: set[int]) -> None:
    """``fast`` trained rows-only, ``full`` by the full step, from the same weights and draws: the same weights,
    the modules off the path (and frozen ones) bit for bit unchanged."""
    before = [w.detach().clone() for w in fast.weights]
    fit_fast = T.train_path(fast, PATH, 1, task(), CFG, T.make_step(fast, CFG.lr), torch.Generator().manual_seed(3))
    with monkeypatch.context() as m:
        m.setattr(T, "rows_only", lambda step, reg: False)
        fit_full = T.train_path(full, PATH, 1, task(), CFG, T.make_step(full, CFG.lr), torch.Generator().manual_seed(3))
    assert fit_fast == fit_full
    for a, b in zip(fast.parameters(), full.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for layer, modules in OFF_PATH.items():
        assert torch.equal(fast.weights[layer][modules], before[layer][modules])
        assert torch.equal(fast.weights[layer][modules], full.weights[layer][modules])
    for m in frozen:  # in layer 0
        assert torch.equal(fast.weights[0][m], before[0][m]) and torch.equal(full.weights[0][m], before[0][m])
    assert not torch.equal(fast.weights[1][2], before[1][2])  # on the path: trained


@pytest.mark.parametrize("kinds,aggregate", [("relu", "sum"), ("tf", "mean_all"), ("relu", "mean")])
def test_rows_only_training_equals_the_full_step(kinds: str, aggregate: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_same_after_training(*nets(kinds, aggregate), monkeypatch, frozen=set())


def test_rows_only_training_leaves_frozen_modules_of_the_path_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, full = nets()
    for net in (fast, full):
        net.freeze(Path(((3,), (3,))))  # module 3 of layer 0 is on the path
    assert ActiveRows(fast, PATH).train[0] is not None and ActiveRows(fast, PATH).train[1] is None
    assert_same_after_training(fast, full, monkeypatch, frozen={3})


def test_one_step_gradients_are_the_full_gradients_rows() -> None:
    fast, full = nets()
    x, y = task().x_train[:8], task().y_train[:8]
    rows = ActiveRows(fast, PATH)
    F.cross_entropy(fast(x, PATH, 0, rows.leaves()), y).backward()
    F.cross_entropy(full(x, PATH, 0), y).backward()
    for layer, (w_act, b_act) in enumerate(rows.rows):
        idx = PATH.modules(layer)
        assert torch.equal(w_act.grad, full.weights[layer].grad[idx])
        assert torch.equal(b_act.grad, full.biases[layer].grad[idx])
        assert fast.weights[layer].grad is None  # nothing the size of all M modules
    torch.testing.assert_close(fast.heads[0].weight.grad, full.heads[0].weight.grad, rtol=0, atol=0)


def test_the_full_step_runs_where_something_reads_the_whole_gradient() -> None:
    net = PathNet(12, 2, 4, 5, [2])
    step = T.make_step(net, 0.1)
    assert T.rows_only(step, None)
    assert not T.rows_only(step, Regularizer(net.groups(), 1.0))  # a penalty moves modules off the path
    clipped = T.Step(step.optimizer, step.params, 1.0, step.guard)
    assert not T.rows_only(clipped, None)
    momentum = T.Step(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), step.params, 0.0, step.guard)
    assert not T.rows_only(momentum, None)


def test_a_non_finite_loss_skips_the_rows_update_too() -> None:
    net = PathNet(12, 2, 4, 5, [2])
    with torch.no_grad():
        net.heads[0].weight.fill_(float("nan"))
    before = [p.detach().clone() for p in net.weights]
    T.train_path(net, PATH, 0, task(), CFG, T.make_step(net, 0.1), torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(net.weights, before))
