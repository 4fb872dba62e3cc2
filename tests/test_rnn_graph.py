"""The cell with the architecture as data (``models.rnn_graph``), eagerly on the CPU.

On a GPU these functions are captured once per shape and replayed for every sampled cell
(tests/test_cuda_graphs.py); here they run eagerly and must compute what the eager cell computes,
for any architecture: forward, inference and every gradient.
"""

from __future__ import annotations

import pytest
import torch

from models.rnn import SharedRNN
from models.rnn_arch import RNNArch
from models.rnn_cell import EAGER, Plan, run_cell
from models.rnn_graph import arch_tensors, run_graphed
from models.rnn_graph_fused import FusedNodes

ACTS = ("tanh", "sigmoid", "ReLU", "identity")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


def random_archs(count: int, seed: int) -> list[RNNArch]:
    g = torch.Generator().manual_seed(seed)
    archs = []
    for i in range(count):
        n = 2 + i % 6
        archs.append(RNNArch(tuple(ACTS[int(torch.randint(4, (1,), generator=g))] for _ in range(n)),
                             tuple(int(torch.randint(j, (1,), generator=g)) for j in range(1, n))))
    return archs


def test_arch_tensors_by_hand() -> None:
    arch = RNNArch(("tanh", "ReLU", "sigmoid", "identity", "tanh"), (0, 0, 1, 1))  # loose ends 2, 3, 4
    data = arch_tensors(Plan(arch, "avg"))
    assert data.parent.tolist() == [0, 0, 0, 1, 1]
    # forward scratch: gate input, a, gate, sigmoid(a), tanh(a), relu(a); backward: identity, tanh, sigmoid, relu
    assert data.fwd_slot.tolist() == [4, 5, 3, 1, 4] and data.bwd_slot.tolist() == [1, 3, 2, 0, 1]
    assert data.loose.tolist() == [0, 0, 1, 1, 1] and float(data.inv_k) == pytest.approx(1 / 3)
    assert data.child[:, :5].nonzero().tolist() == [[0, 1], [0, 2], [1, 3], [1, 4]]
    assert torch.equal(data.child[:, 5], data.loose)  # the last column: each node's share of the output


def cell_inputs(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hid, batch, steps = 6, 3, 5
    tensors = [torch.randn(steps, batch, 2 * hid, generator=g), torch.randn(batch, hid, generator=g) * 3]
    tensors += [torch.randn(2 * hid, hid, generator=g) * 0.6 for _ in range(n)]  # h0 * 3: the norm clip is active
    return [t.requires_grad_(True) for t in tensors]


def forward_backward(arch: RNNArch, next_state: str, data: bool, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    plan = Plan(arch, next_state)
    for t in tensors:
        t.grad = None
    x, h0, w_h0, *w_edges = tensors
    if data:
        raw, hidden = run_graphed(None, plan, arch_tensors(plan), x, h0, w_h0, w_edges)
    else:
        raw, hidden = run_cell(plan, EAGER, True, x, h0, w_h0, w_edges)
    (raw.square().sum() * 0.3 + hidden.pow(3).sum()).backward()
    return [raw.detach(), hidden.detach(), *(t.grad for t in tensors)]


@pytest.mark.parametrize("next_state", ["avg", "last"])
def test_data_cell_is_as_accurate_as_the_eager_cell_for_random_architectures(next_state: str) -> None:
    """Both against the eager cell in float64. The data cell sums in another order (loose ends,
    children's gradients) and its stacked weights sit at other alignments (another BLAS blocking), so
    it is not bit-equal: one ulp here and there, which this recurrence (norm clip active) can amplify
    a hundredfold (seen: 1.8e-5 between the two). Error model: no further from float64 than twice
    the eager fp32 cell, plus a floor of ~8 fp32 epsilons."""
    for i, arch in enumerate(random_archs(12, seed=0)):
        tensors = cell_inputs(arch.num_nodes, seed=i)
        exact = forward_backward(arch, next_state, False, [t.detach().double().requires_grad_(True) for t in tensors])
        data, eager = forward_backward(arch, next_state, True, tensors), forward_backward(arch, next_state, False, tensors)
        for name, a, b, ref in zip(["raw", "hidden", "d_x", "d_h0", "d_w_h0", *map(str, range(arch.num_nodes))],
                                   data, eager, exact):
            assert rel(a, ref) <= 2 * rel(b, ref) + 1e-6, (str(arch), name, rel(a, ref), rel(b, ref))
        with torch.no_grad():
            plan = Plan(arch, next_state)
            x, h0, w_h0, *w_edges = tensors
            inferred = run_graphed(None, plan, arch_tensors(plan), x, h0, w_h0, w_edges)
        for a, b, ref in zip(inferred, eager, exact):
            assert rel(a, ref) <= 2 * rel(b, ref) + 1e-6


def test_data_cell_under_bf16_autocast_equals_the_eager_cell_under_it() -> None:
    arch = random_archs(6, seed=1)[-1]
    tensors = cell_inputs(arch.num_nodes, seed=7)
    results = []
    for data in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(forward_backward(arch, "avg", data, tensors))
    # An fp32 difference of one ulp in a matmul input can flip its rounding to bf16 (2^-8 relative):
    # the bound is a few bf16 roundings (seen: 1.9e-3).
    for a, b in zip(*results):
        assert a.dtype == torch.float32 and rel(a, b) < 1e-2


def test_cuda_graphs_leave_a_cpu_model_on_the_eager_cell() -> None:
    torch.manual_seed(0)
    net = SharedRNN(ntokens=20, embed=8, hid=8, num_blocks=4, dropout=0.0, dropoute=0.0, dropouti=0.0, wdrop=0.0)
    arch = random_archs(3, seed=2)[2]
    tokens, h0 = torch.randint(20, (6, 3)), torch.zeros(3, 8)
    before = net(tokens, h0, arch).logits
    graphs = net.enable_cuda_graphs()
    assert torch.equal(net(tokens, h0, arch).logits, before) and graphs.captures == 0


def test_cuda_graph_fusion_without_graphs_says_it_has_nothing_to_fuse(caplog: pytest.LogCaptureFixture) -> None:
    import argparse
    import logging

    from benchmarks import bench_rnn
    from benchmarks.bench_util import SIZES

    args = argparse.Namespace(seed=0, amp=False, compile=False, cuda_graphs=True, fused_graphs=True,
                              controller_device="cpu", preset="paper", plain_cell=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wpl"):
        trainer, _ = bench_rnn.build_trainer(SIZES["tiny"], args)  # the CPU: the graphs never run
    assert "--cuda_graph_fusion" in caplog.text and "nothing to fuse here" in caplog.text
    assert trainer.space.model.fused_nodes is not None  # set, unused: the CPU keeps the eager cell


@pytest.fixture(scope="module")
def fused_nodes() -> FusedNodes:
    """The compiled node kernels (Inductor's C++ backend here), or a skip where no compiler can build them."""
    try:
        torch.compile(lambda t: t * 2 + 1, dynamic=False, fullgraph=True)(torch.ones(3))
    except Exception as err:  # noqa: BLE001 - no C++ compiler or Python headers: not this project's fault
        pytest.skip(f"torch.compile cannot build kernels here: {type(err).__name__}: {err}")
    return FusedNodes()


def ulp_perturbed_errors(arch: RNNArch, next_state: str, tensors: list[torch.Tensor], exact: list[torch.Tensor]
                         ) -> list[float]:
    """The eager fp32 cell's distance from float64 when its inputs move by one fp32 ulp (3 random draws,
    the worst): how far any fp32 implementation that rounds differently may land. With the norm clip
    active the recurrence amplifies a rounding difference tens of times (measured: 4e-5 on ``hidden``
    and the gradients for one cell below, where the unperturbed cell happens to be 3e-7 off)."""
    worst = [0.0] * len(exact)
    for k in range(3):
        g = torch.Generator().manual_seed(k)
        moved = [(t.detach() * (1 + 2**-23 * torch.randint(-1, 2, t.shape, generator=g).float())).requires_grad_(True)
                 for t in tensors]
        worst = [max(w, rel(a, ref)) for w, a, ref in zip(worst, forward_backward(arch, next_state, False, moved), exact)]
    return worst


@pytest.mark.parametrize("next_state", ["avg", "last"])
def test_fused_node_kernels_are_as_accurate_as_the_eager_cell(next_state: str, fused_nodes: FusedNodes) -> None:
    """``--cuda_graph_fusion``'s compiled kernels (one per node and pass) in the data cell, against float64.
    Error model: the compiler's elementwise math (vectorised tanh, exp) rounds differently from ATen's, by
    an ulp, so the bound is twice the eager cell's error with its inputs moved by one ulp
    (``ulp_perturbed_errors``), plus ~8 fp32 epsilons. Every activation occurs, node 0 included."""
    archs = [RNNArch(("tanh", "ReLU", "sigmoid", "identity", "tanh", "ReLU"), (0, 0, 1, 1, 3)),
             RNNArch(("identity", "sigmoid", "tanh", "ReLU", "sigmoid", "identity"), (0, 1, 2, 0, 4))]
    for i, arch in enumerate(archs):
        plan = Plan(arch, next_state)
        tensors = cell_inputs(arch.num_nodes, seed=20 + i)
        exact = forward_backward(arch, next_state, False, [t.detach().double().requires_grad_(True) for t in tensors])
        eager = forward_backward(arch, next_state, False, tensors)
        bounds = [2 * max(rel(b, ref), p) + 1e-6
                  for b, ref, p in zip(eager, exact, ulp_perturbed_errors(arch, next_state, tensors, exact))]
        for t in tensors:
            t.grad = None
        x, h0, w_h0, *w_edges = tensors
        raw, hidden = run_graphed(None, plan, arch_tensors(plan), x, h0, w_h0, w_edges, fused_nodes)
        (raw.square().sum() * 0.3 + hidden.pow(3).sum()).backward()
        fused = [raw.detach(), hidden.detach(), *(t.grad for t in tensors)]
        for a, ref, bound in zip(fused, exact, bounds):
            assert rel(a, ref) <= bound, (str(arch), rel(a, ref), bound)
        with torch.no_grad():
            inferred = run_graphed(None, plan, arch_tensors(plan), x, h0, w_h0, w_edges, fused_nodes)
        for a, ref, bound in zip(inferred, exact, bounds):
            assert rel(a, ref) <= bound
