"""The RNN cell as CUDA graphs (``models.rnn_graph``, ``--cuda_graphs``): needs a CUDA device.

A captured graph replays the kernels of its capture with whatever its input buffers hold, so the
tests check what could go wrong only there: a replay for another architecture (stale weights,
parents or activations) must equal the eager cell run on that architecture, gradients included;
one capture per pass and shape must serve every architecture; a whole search with graphs must
equal one without them. ``python -m pytest -m cuda`` on a GPU machine (benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import paper_rnn_args
from test_cuda import SEARCH, exact_fp32, rel_err  # noqa: F401  (exact_fp32: the autouse fixture)

from models.rnn import SharedRNN
from models.rnn_arch import RNNArch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
DEVICE = torch.device("cuda")
ACTS = ("tanh", "sigmoid", "ReLU", "identity")


def random_archs(count: int, nodes: int, seed: int) -> list[RNNArch]:
    g = torch.Generator().manual_seed(seed)
    return [RNNArch(tuple(ACTS[int(torch.randint(4, (1,), generator=g))] for _ in range(nodes)),
                    tuple(int(torch.randint(j, (1,), generator=g)) for j in range(1, nodes))) for _ in range(count)]


def model(next_state: str) -> SharedRNN:
    torch.manual_seed(0)
    net = SharedRNN(ntokens=50, embed=16, hid=16, num_blocks=5, dropout=0.0, dropoute=0.0, dropouti=0.0, wdrop=0.0,
                    tie_weights=True, next_state=next_state)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.4)
    return net.to(DEVICE)


def step(net: SharedRNN, arch: RNNArch, tokens: torch.Tensor, h0: torch.Tensor, amp: bool = False
         ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    net.zero_grad(set_to_none=True)
    h = h0.clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        out = net(tokens, h, arch)
    (out.logits.float().square().mean() + out.hidden.float().pow(3).sum() + out.raw.float().sum()).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    grads["h0"] = h.grad.clone()
    return [out.logits.detach().float(), out.hidden.detach().float(), out.raw.detach().float()], grads


@pytest.mark.parametrize("next_state", ["avg", "last"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_graph_replays_are_as_accurate_as_the_eager_cell_for_every_architecture(next_state: str, training: bool) -> None:
    """Replays for six architectures against the eager cell in float64 on the device; error model as
    tests/test_rnn_graph.py: no further from float64 than twice the eager fp32 cell, plus ~8 epsilons."""
    net = model(next_state).train(training)
    exact_net = copy.deepcopy(net).double()
    g = torch.Generator().manual_seed(1)
    tokens, h0 = torch.randint(50, (9, 4), generator=g).to(DEVICE), torch.randn(4, 16, generator=g).to(DEVICE)
    graphs = net.enable_cuda_graphs()
    for arch in random_archs(6, 5, seed=2):
        exact_out, exact_grads = step(exact_net, arch, tokens, h0.double())
        net.cuda_graphs = None
        eager_out, eager_grads = step(net, arch, tokens, h0)
        net.cuda_graphs = graphs
        graphed_out, graphed_grads = step(net, arch, tokens, h0)
        for name, a, b, ref in zip(("logits", "hidden", "raw"), graphed_out, eager_out, exact_out):
            assert rel_err(a, ref) <= 2 * rel_err(b, ref) + 1e-6, (arch, name, rel_err(a, ref), rel_err(b, ref))
        assert graphed_grads.keys() == eager_grads.keys() == exact_grads.keys()  # unused edges: no gradient
        for name, ref in exact_grads.items():
            a, b = graphed_grads[name], eager_grads[name]
            assert rel_err(a, ref) <= 2 * rel_err(b, ref) + 1e-6, (arch, name, rel_err(a, ref), rel_err(b, ref))
    assert graphs.captures == 2  # one forward and one backward graph served all six (gradients in eval mode too)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_fused_graph_replays_are_within_an_ulps_reach_of_the_eager_cell(training: bool) -> None:
    """``--cuda_graph_fusion``: replays whose nodes' elementwise work is one compiled (Triton) kernel each,
    against float64. Error model as tests/test_rnn_graph.py's fused test: the compiler's math rounds
    differently by an ulp, so the bound is twice the worse of the eager cell and the eager cell with its
    weights moved by one fp32 ulp (the recurrence's own sensitivity), plus ~8 epsilons."""
    net = model("last").train(training)
    exact_net, moved = copy.deepcopy(net).double(), copy.deepcopy(net)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in moved.parameters():
            p.mul_(1 + 2**-23 * torch.randint(-1, 2, p.shape, generator=g).float().to(DEVICE))
    tokens, h0 = torch.randint(50, (9, 4), generator=g).to(DEVICE), torch.randn(4, 16, generator=g).to(DEVICE)
    graphs = net.enable_cuda_graphs(fuse=True)
    for arch in random_archs(4, 5, seed=7):
        exact_out, exact_grads = step(exact_net, arch, tokens, h0.double())
        moved_out, moved_grads = step(moved, arch, tokens, h0)
        net.cuda_graphs = None
        eager_out, eager_grads = step(net, arch, tokens, h0)
        net.cuda_graphs = graphs
        fused_out, fused_grads = step(net, arch, tokens, h0)
        for a, b, m, ref in zip(fused_out, eager_out, moved_out, exact_out):
            assert rel_err(a, ref) <= 2 * max(rel_err(b, ref), rel_err(m, ref)) + 1e-6, (arch, rel_err(a, ref))
        for name, ref in exact_grads.items():
            bound = 2 * max(rel_err(eager_grads[name], ref), rel_err(moved_grads[name], ref)) + 1e-6
            assert rel_err(fused_grads[name], ref) <= bound, (arch, name, rel_err(fused_grads[name], ref), bound)
    assert graphs.captures == 2  # the compiled kernels live inside the same two captures


def test_one_capture_per_pass_serves_every_architecture_and_inference() -> None:
    net = model("last").train()
    graphs = net.enable_cuda_graphs()
    g = torch.Generator().manual_seed(3)
    tokens, h0 = torch.randint(50, (9, 4), generator=g).to(DEVICE), torch.randn(4, 16, generator=g).to(DEVICE)
    archs = random_archs(8, 5, seed=4)
    for arch in archs:
        step(net, arch, tokens, h0)
    assert graphs.captures == 2 and graphs.replays == 16  # training forward and backward, once each
    net.eval()
    with torch.no_grad():
        graphed = [net(tokens, h0, arch).logits for arch in archs]
        assert graphs.captures == 3  # the inference pass
        net.cuda_graphs = None
        for arch, logits in zip(archs, graphed):
            assert rel_err(logits, net(tokens, h0, arch).logits) < 1e-5
    net.cuda_graphs = graphs
    with torch.no_grad():  # another length (the last slice of a split) is another capture
        net(tokens[:5], h0, archs[0])
    assert graphs.captures == 4


def test_graphs_under_bf16_autocast_equal_the_eager_cell_under_it() -> None:
    net = model("avg").train()
    g = torch.Generator().manual_seed(5)
    tokens, h0 = torch.randint(50, (9, 4), generator=g).to(DEVICE), torch.randn(4, 16, generator=g).to(DEVICE)
    arch = random_archs(1, 5, seed=6)[0]
    eager_out, eager_grads = step(net, arch, tokens, h0, amp=True)
    net.enable_cuda_graphs()
    graphed_out, graphed_grads = step(net, arch, tokens, h0, amp=True)
    for a, b in zip(graphed_out, eager_out):  # the same bf16 matmuls; only the loose-end average's order differs
        assert rel_err(a, b) < 1e-3
    for name in eager_grads:
        assert graphed_grads[name].dtype == torch.float32
        assert rel_err(graphed_grads[name], eager_grads[name]) < 1e-2, name


def test_a_search_with_graphs_equals_one_without(data_dir: Path, tmp_path: Path) -> None:
    import main

    runs = {}
    for flag in ("True", "False"):
        argv = [*paper_rnn_args(), *SEARCH, f"--data_dir={data_dir}", f"--log_dir={tmp_path}", f"--comment=g{flag}",
                "--deterministic=True", f"--cuda_graphs={flag}", "--max_epoch=1"]
        assert main.main(argv) == 0
        runs[flag] = [json.loads(line) for line in (tmp_path / f"tiny_g{flag}" / "metrics.jsonl").read_text().splitlines()]
    with_graphs, without = runs["True"][0], runs["False"][0]
    for key in ("shared_ce", "valid_ppl", "controller_reward"):
        assert math.isfinite(with_graphs[key])
        assert with_graphs[key] == pytest.approx(without[key], rel=1e-4), key
