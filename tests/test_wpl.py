"""WPL arithmetic against hand computations, in both modes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from regularizers.wpl import WPL, alpha_schedule


def make(mode: str = "loss", momentum: bool = True, clip: float = 0.0, lam: float = 0.9) -> tuple[WPL, nn.Parameter, nn.Parameter]:
    a = nn.Parameter(torch.tensor([1.0, -1.0]))
    b = nn.Parameter(torch.tensor([0.5, 0.0, 2.0]))
    wpl = WPL({"a": [a], "b": [b]}, lambda_fisher=lam, clip_by_norm=clip, momentum=momentum, mode=mode)
    return wpl, a, b


def set_grads(a: nn.Parameter, ga: list[float], b: nn.Parameter | None = None, gb: list[float] | None = None) -> None:
    a.grad = torch.tensor(ga)
    if b is not None:
        b.grad = torch.tensor(gb)


def test_update_with_momentum_is_a_moving_average() -> None:
    wpl, a, _ = make(momentum=True)
    set_grads(a, [1.0, 2.0])
    wpl.update_fisher(["a"], alpha=60.0)
    assert torch.allclose(wpl.fisher["a"][0], torch.tensor([0.9, 3.6]))
    set_grads(a, [2.0, 0.0])
    wpl.update_fisher(["a"], alpha=60.0)
    # 0.1 * [0.9, 3.6] + 0.9 * [4, 0]
    assert torch.allclose(wpl.fisher["a"][0], torch.tensor([3.69, 0.36]))


def test_update_without_momentum_is_a_sum() -> None:
    wpl, a, _ = make(momentum=False)
    for g in ([1.0, 2.0], [2.0, 0.0]):
        set_grads(a, g)
        wpl.update_fisher(["a"], alpha=1.0)
    assert torch.allclose(wpl.fisher["a"][0], torch.tensor([0.9 + 3.6, 3.6]))


def test_update_touches_only_the_named_groups() -> None:
    wpl, a, b = make()
    set_grads(a, [1.0, 1.0], b, [1.0, 1.0, 1.0])
    wpl.update_fisher(["a"], alpha=1.0)
    assert wpl.fisher["b"][0].abs().sum() == 0
    assert wpl.fisher["a"][0].abs().sum() > 0


def test_missing_gradient_counts_as_zero() -> None:
    wpl, a, _ = make(momentum=True)
    set_grads(a, [1.0, 2.0])
    wpl.update_fisher(["a"], alpha=1.0)
    a.grad = None
    wpl.update_fisher(["a"], alpha=1.0)
    assert torch.allclose(wpl.fisher["a"][0], torch.tensor([0.09, 0.36]))


def test_clip_rescales_each_tensor_to_the_norm() -> None:
    wpl, a, b = make(clip=1.0)
    set_grads(a, [1.0, 2.0], b, [0.1, 0.1, 0.1])
    wpl.update_fisher(["a", "b"], alpha=1.0)
    raw = torch.tensor([0.9, 3.6])
    assert torch.allclose(wpl.fisher["a"][0], raw / math.sqrt(0.81 + 12.96))
    assert torch.allclose(wpl.fisher["a"][0].norm(), torch.tensor(1.0))
    # b's norm (0.009 * sqrt(3)) is under the clip: untouched
    assert torch.allclose(wpl.fisher["b"][0], torch.full((3,), 0.009))


def test_penalty_value_and_gradient_in_loss_mode() -> None:
    wpl, a, b = make(mode="loss")
    set_grads(a, [1.0, 2.0], b, [1.0, 0.0, 1.0])
    wpl.update_fisher(["a", "b"], alpha=2.0)  # F_a = [0.9, 3.6], F_b = [0.9, 0, 0.9]
    assert float(wpl.penalty(["a", "b"], alpha=2.0)) == 0.0  # at the anchors
    with torch.no_grad():
        a.add_(torch.tensor([1.0, 0.5]))
        b.add_(torch.tensor([0.0, 3.0, -2.0]))
    a.grad = b.grad = None
    value = wpl.penalty(["a", "b"], alpha=2.0)
    expected = 2.0 / 2 * (0.9 * 1 + 3.6 * 0.25 + 0.0 * 9 + 0.9 * 4)
    assert float(value) == pytest.approx(expected)
    value.backward()
    assert torch.allclose(a.grad, 2.0 * torch.tensor([0.9 * 1.0, 3.6 * 0.5]))
    assert torch.allclose(b.grad, 2.0 * torch.tensor([0.0, 0.0, 0.9 * -2.0]))


def test_penalty_of_unused_groups_is_not_counted() -> None:
    wpl, a, b = make(mode="loss")
    set_grads(a, [1.0, 1.0], b, [1.0, 1.0, 1.0])
    wpl.update_fisher(["a", "b"], alpha=1.0)
    with torch.no_grad():
        b.add_(1.0)
    assert float(wpl.penalty(["a"], alpha=1.0)) == 0.0
    assert float(wpl.penalty(["b"], alpha=1.0)) > 0.0


@pytest.mark.parametrize("mode", ["loss", "compound"])
def test_direct_gradient_equals_autograd(mode: str) -> None:
    wpl, a, b = make(mode=mode, clip=2.0)
    set_grads(a, [1.0, 2.0], b, [0.3, -1.0, 0.2])
    wpl.update_fisher(["a", "b"], alpha=3.0)
    with torch.no_grad():
        a.add_(torch.tensor([0.7, -0.2]))
        b.add_(torch.tensor([0.1, 0.4, 1.5]))
    a.grad = b.grad = None
    value = wpl.penalty(["a", "b"], alpha=3.0)
    value.backward()
    expected = [a.grad.clone(), b.grad.clone()]
    a.grad = torch.ones(2)  # the direct path adds to existing gradients
    b.grad = None
    direct = wpl.add_penalty_grad_(["a", "b"], alpha=3.0)
    assert float(direct) == pytest.approx(float(value))
    assert torch.allclose(a.grad, expected[0] + 1)
    assert torch.allclose(b.grad, expected[1])


def test_refresh_anchors_and_reset() -> None:
    wpl, a, b = make()
    set_grads(a, [1.0, 1.0], b, [1.0, 1.0, 1.0])
    wpl.update_fisher(["a", "b"], alpha=1.0)
    with torch.no_grad():
        a.mul_(3)
    wpl.refresh_anchors()
    assert torch.equal(wpl.anchor["a"][0], a.detach())
    assert float(wpl.penalty(["a", "b"], alpha=1.0)) == 0.0
    wpl.reset()
    assert all(f.abs().sum() == 0 for fs in wpl.fisher.values() for f in fs)
    assert torch.equal(wpl.anchor["a"][0], a.detach())


def test_state_dict_round_trip() -> None:
    wpl, a, b = make(mode="compound", clip=1.0)
    set_grads(a, [1.0, 2.0], b, [0.5, 0.5, 0.5])
    wpl.update_fisher(["a", "b"], alpha=5.0)
    with torch.no_grad():
        a.add_(1.0)
    state = wpl.state_dict()
    other = WPL({"a": [a], "b": [b]}, lambda_fisher=0.9, clip_by_norm=1.0, mode="compound")
    other.load_state_dict(state)
    for name in ("a", "b"):
        assert torch.equal(other.fisher[name][0], wpl.fisher[name][0])
        assert torch.equal(other.anchor[name][0], wpl.anchor[name][0])
    assert float(other.penalty(["a", "b"], 5.0)) == pytest.approx(float(wpl.penalty(["a", "b"], 5.0)))
    with pytest.raises(ValueError, match="does not match"):
        WPL({"a": [a]}).load_state_dict(state)


# --------------------------------------------------------------------------------- compound mode
def test_compound_first_update_folds_alpha_into_the_stored_fisher() -> None:
    wpl, a, _ = make(mode="compound", clip=10.0)
    set_grads(a, [1.0, 2.0])
    wpl.update_fisher(["a"], alpha=60.0)
    assert torch.allclose(wpl.fisher["a"][0], 60.0 * torch.tensor([0.9, 3.6]))
    # the clip acts before the alpha multiplication: norm 3.71 < 10, so no clip here
    set_grads(a, [10.0, 10.0])
    wpl.update_fisher(["a"], alpha=60.0)
    pre = 0.1 * 60.0 * torch.tensor([0.9, 3.6]) + 0.9 * 100.0  # [95.4, 111.6], norm 146.8 > 10
    assert torch.allclose(wpl.fisher["a"][0], 60.0 * pre * 10.0 / pre.norm())


def test_compound_penalty_has_no_further_alpha() -> None:
    wpl, a, _ = make(mode="compound")
    set_grads(a, [1.0, 1.0])
    wpl.update_fisher(["a"], alpha=60.0)  # stored F = 54
    with torch.no_grad():
        a.add_(torch.tensor([1.0, 0.0]))
    a.grad = None
    value = wpl.penalty(["a"], alpha=60.0)
    assert float(value) == pytest.approx(0.5 * 54.0)
    value.backward()
    assert torch.allclose(a.grad, torch.tensor([54.0, 0.0]))


@pytest.mark.parametrize("momentum", [True, False])
def test_compound_grows_geometrically_until_the_clip_holds_it_at_c_alpha(momentum: bool) -> None:
    wpl, a, _ = make(mode="compound", momentum=momentum, clip=10.0)
    norms = []
    for _ in range(40):
        set_grads(a, [1e-3, 2e-3])
        wpl.update_fisher(["a"], alpha=60.0)
        norms.append(float(wpl.fisher["a"][0].norm()))
    # growth: each update multiplies the stored Fisher by about (1 - lambda) * alpha = 6 (or alpha without momentum)
    factor = 6.0 if momentum else 60.0
    assert norms[2] / norms[1] == pytest.approx(factor, rel=0.2)
    assert norms[-1] == pytest.approx(600.0, rel=1e-5)  # saturates at c * alpha whatever the gradient size


def test_compound_collapses_once_alpha_drops_below_one_over_one_minus_lambda() -> None:
    wpl, a, _ = make(mode="compound", momentum=True, clip=10.0)
    g = torch.tensor([1e-2, 3e-2])
    for _ in range(30):
        a.grad = g.clone()
        wpl.update_fisher(["a"], alpha=60.0)
    assert float(wpl.fisher["a"][0].norm()) == pytest.approx(600.0, rel=1e-5)
    alpha = 5.0  # (1 - lambda) * alpha = 0.5 < 1
    for _ in range(60):
        a.grad = g.clone()
        wpl.update_fisher(["a"], alpha=alpha)
    fixed_point = alpha * 0.9 * g.square() / (1 - 0.1 * alpha)
    assert torch.allclose(wpl.fisher["a"][0], fixed_point, rtol=1e-4)


def test_loss_mode_does_not_fold_alpha() -> None:
    wpl, a, _ = make(mode="loss", momentum=True, clip=10.0)
    for _ in range(30):
        set_grads(a, [1.0, 2.0])
        wpl.update_fisher(["a"], alpha=60.0)
    assert torch.allclose(wpl.fisher["a"][0], torch.tensor([1.0, 4.0]), rtol=1e-5)  # fixed point g^2


# ------------------------------------------------------------------------------------ schedule
def test_linear_alpha_schedule_with_floor() -> None:
    def sched(e: int) -> float:
        return alpha_schedule(e, 60.0, 1.0, 15, 1, 1e-4)

    assert [sched(e) for e in (0, 14, 15, 16, 20)] == [60.0, 60.0, 59.0, 58.0, 54.0]
    assert sched(74) == 1e-4 and sched(500) == 1e-4


def test_geometric_alpha_schedule_with_floor() -> None:
    assert [alpha_schedule(e, 60.0, 0.5, 15, 2, 0.0) for e in (14, 15, 16)] == [60.0, 30.0, 15.0]
    assert alpha_schedule(16, 60.0, 0.5, 15, 2, 20.0) == 20.0
    # the floor only applies once decay has started
    assert alpha_schedule(0, 1e-5, 0.5, 15, 2, 1e-4) == 1e-5


def test_bad_mode_is_rejected() -> None:
    with pytest.raises(ValueError):
        alpha_schedule(20, 1.0, 1.0, 15, 3, 0.0)
    with pytest.raises(ValueError):
        WPL({"a": [nn.Parameter(torch.ones(1))]}, mode="textbook")  # type: ignore[arg-type]


def _search_wpl(lazy: bool, groups: dict[str, list[nn.Parameter]]) -> WPL:
    """The search's WPL; ``lazy=False``: with a full anchor copy per group (what the lazy anchors replace)."""
    from regularizers.wpl_search import SearchWPL, WPLSearchConfig

    cfg = WPLSearchConfig(alpha_fisher=3.0, alpha_decay=0.0, alpha_decay_after=1e9, alpha_decay_mode=1,
                          alpha_small_scale=0.0, start_using_fisher=0, set_fisher_zero_per_iter=0,
                          shared_valid_fisher=False, shared_ce_fisher=True, lambda_fisher=0.9,
                          fisher_clip_by_norm=5.0, momentum=True, wpl_alpha_mode="compound")
    cls = SearchWPL if lazy else type("FullSearchWPL", (SearchWPL,), {"lazy_anchors": False})
    wpl = cls(groups, cfg)
    wpl.begin_epoch(0)
    return wpl


def _search_run(lazy: bool, resume_at: int | None = None) -> tuple[list[float], list[torch.Tensor], dict[str, torch.Tensor]]:
    """Architectures (subsets of 4 groups) trained in turn, 2 SGD batches each, through the hooks the
    trainer calls (after_backward, add_penalty_grad_, step; end of architecture: Fisher from the last
    batch, anchor refresh); at ``resume_at``, the WPL is rebuilt from its state_dict (a resume)."""
    torch.manual_seed(0)
    weights = [nn.Parameter(torch.randn(3, 5)) for _ in range(4)]
    groups = {str(i): [w] for i, w in enumerate(weights)}
    opt = torch.optim.SGD(weights, lr=0.1, weight_decay=0.01)
    wpl = _search_wpl(lazy, groups)
    x = torch.randn(8, 3)
    penalties: list[float] = []
    for k, arch in enumerate([["0", "1"], ["1", "2"], ["0", "3"], ["1", "2", "3"], ["0", "1"]]):
        if k == resume_at:
            state = wpl.state_dict()
            wpl = _search_wpl(lazy, groups)
            wpl.load_state_dict(state)
        for b in range(2):
            wpl.begin_batch(last=b == 1)
            opt.zero_grad(set_to_none=True)
            h = x
            for name in arch:
                h = torch.tanh(h @ groups[name][0][:, :3] + 0.1 * (k + b))
            (h.square().mean() + h.sum() * 0.01).backward()
            wpl.after_backward(arch)
            penalties.append(float(wpl.add_penalty_grad_(arch)))
            opt.step()
        wpl.end_model(arch, lambda objective, what: True)
    return penalties, [w.detach().clone() for w in weights], wpl.state_dict()


def test_lazy_anchors_equal_a_full_copy_in_the_search() -> None:
    full = _search_run(lazy=False)
    assert max(full[0]) > 0  # the penalty takes part
    for resume_at in (None, 2):
        lazy = _search_run(lazy=True, resume_at=resume_at)
        assert lazy[0] == full[0]
        assert all(torch.equal(a, b) for a, b in zip(lazy[1], full[1]))
        assert lazy[2].keys() == full[2].keys() and all(torch.equal(lazy[2][k], full[2][k]) for k in full[2])


def test_lazy_anchors_copy_only_the_trained_groups() -> None:
    weights = [nn.Parameter(torch.randn(4)) for _ in range(3)]
    wpl = _search_wpl(True, {str(i): [w] for i, w in enumerate(weights)})
    assert all(a[0].data_ptr() == w.data_ptr() for a, w in zip(wpl.anchor.values(), weights))  # views, no copy
    wpl.add_penalty_grad_(["1"])
    assert wpl.held == {"1"} and wpl.anchor["1"][0].data_ptr() != weights[1].data_ptr()
    with torch.no_grad():
        weights[1].add_(1.0)
    assert torch.equal(wpl.anchor["1"][0] + 1.0, weights[1].detach())
    wpl.refresh_anchors()
    assert not wpl.held and wpl.anchor["1"][0].data_ptr() == weights[1].data_ptr()


def test_lazy_anchors_warn_once_when_weights_moved_outside_the_hooks(caplog: pytest.LogCaptureFixture) -> None:
    weights = [nn.Parameter(torch.ones(3)) for _ in range(2)]
    wpl = _search_wpl(True, {str(i): [w] for i, w in enumerate(weights)})
    with torch.no_grad():
        weights[0].add_(1.0)  # trained without the regulariser while its importance is zero: no warning
    wpl.add_penalty_grad_(["0"])
    assert torch.equal(wpl.anchor["0"][0], weights[0].detach()) and not caplog.records
    wpl.refresh_anchors()
    wpl.fisher["1"][0].fill_(1.0)
    with torch.no_grad():
        weights[1].add_(1.0)  # a non-zero importance: the old anchor is lost, one warning line
    wpl.add_penalty_grad_(["1"])
    assert len(caplog.records) == 1 and "outside the regulariser's hooks" in caplog.records[0].getMessage()
