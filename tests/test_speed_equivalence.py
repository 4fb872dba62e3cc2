"""The fast paths compute what the plain formulations compute.

* The fused RNN cell (one autograd node over the unrolled sequence, weight gradients from one
  matmul per edge) against the cell written step by step with ordinary autograd ops: same outputs
  and same gradients w.r.t. every parameter and the initial hidden state, in eval and training
  mode (same dropout masks: the random generator is seeded before each run), with the hidden-norm
  clip active or not, for both ``next_state`` options.
* ``--amp`` (bf16 autocast) and ``--compile`` (torch.compile of the cell's elementwise work) stay
  close to fp32 eager over a few training steps.
* The benchmark script runs (tiny size, one repetition; no timing is asserted).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from models.rnn import SharedRNN, drop_connect, keep_mask, locked_dropout
from models.rnn_arch import RNNArch
from models import rnn_cell
from models.rnn_cell import HIDDEN_NORM_CLIP



@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread (two can be far slower on a shared, loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


FNS = {"tanh": torch.tanh, "ReLU": torch.relu, "identity": lambda v: v, "sigmoid": torch.sigmoid}

ARCHS = [
    # every activation, several loose ends (5, 6, 7), parents with one and with several children
    RNNArch(("tanh", "ReLU", "sigmoid", "identity", "tanh", "ReLU", "sigmoid", "identity"), (0, 0, 1, 1, 3, 4, 2)),
    RNNArch(("sigmoid", "tanh", "ReLU", "identity"), (0, 1, 2)),  # a chain: one loose end
    RNNArch(("identity", "identity", "tanh", "ReLU"), (0, 0, 0)),  # a star
]


STATE_NORMS: list[float] = []  # the norm of every state plain_forward carried, before the clip


def plain_forward(model: SharedRNN, inputs: torch.Tensor, hidden: torch.Tensor, arch: RNNArch) -> tuple[torch.Tensor, ...]:
    """The model's forward written out per time step with separate W^c / W^h, ordinary autograd.

    Random draws in the model's order: word dropout, input dropout, W_h0 dropout, each used edge's
    fused (W^c; W^h) dropout in edge order, output dropout.
    """
    training = model.training
    H = model.hid
    p_e = model.dropoute if training else 0.0
    if p_e:
        mask = keep_mask(model.encoder.weight, (model.encoder.weight.size(0), 1), p_e)
        emb = F.embedding(inputs, model.encoder.weight * mask)
    else:
        emb = F.embedding(inputs, model.encoder.weight)
    emb = locked_dropout(emb, model.dropouti if training else 0.0)
    wdrop = model.wdrop if training else 0.0
    w_h0 = drop_connect(model.w_h0, wdrop)
    edge_w = {}
    for i, j in arch.edges:
        e = model.edges[f"{i}_{j}"]
        edge_w[j] = drop_connect(torch.cat([e.w_c, e.w_h]), wdrop if model.wdrop_scope == "all" else 0.0)
    wxc, wxh = model.w_x0[:H], model.w_x0[H:]
    bc, bh = (model.b_x0[:H], model.b_x0[H:]) if model.b_x0 is not None else (0.0, 0.0)
    whc, whh = w_h0[:H], w_h0[H:]
    bn = model.output_norm
    outputs = []
    h = hidden
    for t in range(inputs.size(0)):
        x = emb[t]
        c0 = torch.sigmoid(x @ wxc.t() + bc + h @ whc.t())
        nodes = [c0 * FNS[arch.activations[0]](x @ wxh.t() + bh + h @ whh.t()) + (1 - c0) * h]
        for j, i in enumerate(arch.parents, start=1):
            w = edge_w[j]
            c = torch.sigmoid(nodes[i] @ w[:H].t())
            nodes.append(c * FNS[arch.activations[j]](nodes[i] @ w[H:].t()) + (1 - c) * nodes[i])
        out = torch.stack([nodes[j] for j in arch.loose_ends]).mean(0)
        state = nodes[-1] if model.next_state == "last" else out
        norm = state.norm(dim=-1, keepdim=True)
        STATE_NORMS.append(float(norm.max()))
        h = state * torch.clamp(HIDDEN_NORM_CLIP / norm.clamp_min(1e-6), max=1.0)
        if bn is not None:  # the paper's code: BatchNorm1d on the output of every step (the state is not normalised)
            out = F.batch_norm(out, bn.running_mean, bn.running_var, bn.weight, bn.bias, training, 0.1, bn.eps)
            bn.num_batches_tracked += int(training)
        outputs.append(out)
    raw = torch.stack(outputs)
    dropped = locked_dropout(raw, model.dropout if training else 0.0)
    return model.decoder(dropped), h, raw, dropped


# The modelling variants (docs/fidelity.md): the paper's code, and the ENAS paper's choices.
VARIANTS = {
    "paper": {"wdrop_scope": "node0", "output_norm": "batchnorm", "input_bias": True},
    "enas": {"wdrop_scope": "all", "output_norm": "none", "input_bias": False},
}


def make_model(arch: RNNArch, next_state: str, dtype: torch.dtype, big: bool, variant: str = "enas") -> SharedRNN:
    torch.manual_seed(0)
    model = SharedRNN(11, 6, 6, arch.num_nodes, next_state=next_state, dropout=0.3, dropoute=0.2, dropouti=0.25, wdrop=0.4,
                      **VARIANTS[variant])
    for p in model.parameters():  # larger weights than the init so every term matters
        torch.nn.init.normal_(p, std=1.5 if big else 0.5)
    return model.to(dtype)


def loss_of(outs: tuple[torch.Tensor, ...], targets: torch.Tensor) -> torch.Tensor:
    logits, hidden, raw, dropped = outs
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    # every output carries gradient: the carried hidden state and the raw / dropped sequences too
    return ce + 0.1 * hidden.pow(2).sum() + 0.01 * raw.pow(3).sum() + 0.05 * (dropped * dropped.flip(0)).sum()


def run(model: SharedRNN, arch: RNNArch, fused: bool, seed: int, tokens: torch.Tensor, h0: torch.Tensor,
        targets: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """One forward/backward from the same buffers; the gradients include the batch norm's running statistics after it."""
    model.zero_grad(set_to_none=True)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    if fused is not None:
        model.fused = fused
    h = h0.clone().requires_grad_(True)
    torch.manual_seed(seed)
    outs = model(tokens, h, arch) if fused is not None else plain_forward(model, tokens, h, arch)
    loss_of(tuple(outs), targets).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    grads["h0"] = h.grad.clone()
    for name, b in model.named_buffers():
        grads[name] = b.clone().double()
        b.copy_(buffers[name])
    return [o.detach() for o in outs], grads


@pytest.mark.parametrize("arch", ARCHS, ids=["mixed", "chain", "star"])
@pytest.mark.parametrize("next_state", ["avg", "last"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("big", [False, True], ids=["unclipped", "clipped"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fused_cell_matches_the_plain_formulation(arch: RNNArch, next_state: str, training: bool, big: bool, variant: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rnn_cell, "TIME_CHUNK", 3)  # 7 steps: the weight gradients in chunks of 3, 3 and 1 steps
    model = make_model(arch, next_state, torch.float64, big, variant).train(training)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(11, (7, 3), generator=g)
    targets = torch.randint(11, (7, 3), generator=g)
    h0 = torch.randn(3, 6, generator=g, dtype=torch.float64) * (16.0 if big else 0.5)
    STATE_NORMS.clear()
    reference = run(model, arch, None, 5, tokens, h0, targets)  # type: ignore[arg-type]
    for fused in (True, False):  # the fused cell, and the model's own step-by-step path
        outs, grads = run(model, arch, fused, 5, tokens, h0, targets)
        for name, a, b in zip(("logits", "hidden", "raw", "dropped"), outs, reference[0]):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-10), (fused, name, (a - b).abs().max())
        assert grads.keys() == reference[1].keys()
        for name in grads:
            a, b = grads[name], reference[1][name]
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-9), (fused, name, (a - b).abs().max())
    # the two regimes really differ: carried states far above the clip's norm of 25, or all below it
    peak = max(STATE_NORMS)
    assert peak > HIDDEN_NORM_CLIP if big else peak < HIDDEN_NORM_CLIP


def test_fused_cell_float32_and_inference_paths_agree() -> None:
    arch = ARCHS[0]
    model = make_model(arch, "avg", torch.float32, False).eval()
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(11, (9, 4), generator=g)
    h0 = torch.randn(4, 6, generator=g) * 0.5
    with torch.no_grad():
        model.fused = False
        ref = model(tokens, h0, arch)
        model.fused = True
        fast = model(tokens, h0, arch)
    with torch.inference_mode():
        infer = model(tokens, h0, arch)
    for a, b, c in zip(fast, ref, infer):
        assert torch.allclose(a, b, atol=1e-5)
        assert torch.equal(a, c)  # the no-grad path is the fused forward without saving


def test_gradients_accumulate_and_second_backward_through_the_carried_state() -> None:
    """Two slices with the state carried (not detached): gradients flow through both cells."""
    arch = ARCHS[0]
    model = make_model(arch, "avg", torch.float64, False).train()
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.randint(11, (4, 2), generator=g), torch.randint(11, (5, 2), generator=g)
    h0 = torch.zeros(2, 6, dtype=torch.float64)
    results = []
    for fused in (True, False):
        model.zero_grad(set_to_none=True)
        model.fused = fused
        torch.manual_seed(9)
        out1 = model(x1, h0, arch)
        out2 = model(x2, out1.hidden, arch)
        (out1.logits.sum() + out2.logits.pow(2).mean()).backward()
        results.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for name in results[0]:
        assert torch.allclose(results[0][name], results[1][name], rtol=1e-9, atol=1e-10), name


# ---------------------------------------------------------------------------------------- WPL
@pytest.mark.parametrize("mode", ["loss", "compound"])
@pytest.mark.parametrize("chunks", [True, False], ids=["cpu-chunks", "gpu-foreach"])
def test_chunked_penalty_gradient_equals_autograd_on_large_tensors(mode: str, chunks: bool,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU tensors above the chunk size take the chunked path, small ones the foreach path; on a
    GPU every tensor takes the foreach path (here: the chunk size out of reach)."""
    from regularizers import store
    from regularizers.store import CHUNK
    from regularizers.wpl import WPL

    if not chunks:
        monkeypatch.setattr(store, "CHUNK", 1 << 40)

    torch.manual_seed(0)
    big = torch.nn.Parameter(torch.randn(CHUNK * 2 + 123))  # three chunks, the last one partial
    mat = torch.nn.Parameter(torch.randn(300, 300))
    small = torch.nn.Parameter(torch.randn(7))
    wpl = WPL({"a": [big, mat], "b": [small]}, clip_by_norm=50.0, mode=mode)  # type: ignore[arg-type]
    for p in (big, mat, small):
        p.grad = torch.randn_like(p)
    wpl.update_fisher(["a", "b"], alpha=3.0)
    with torch.no_grad():
        for p in (big, mat, small):
            p.add_(torch.randn_like(p) * 0.1)
    for p in (big, mat, small):
        p.grad = None
    value = wpl.penalty(["a", "b"], alpha=3.0)
    value.backward()
    expected = [p.grad.clone() for p in (big, mat, small)]
    big.grad = torch.ones_like(big)  # the direct path adds to existing gradients
    mat.grad, small.grad = None, None
    direct = wpl.add_penalty_grad_(["a", "b"], alpha=3.0)
    assert float(direct) == pytest.approx(float(value), rel=1e-5)
    assert torch.allclose(big.grad, expected[0] + 1, rtol=1e-5, atol=1e-6)
    assert torch.allclose(mat.grad, expected[1], rtol=1e-5, atol=1e-6)
    assert torch.allclose(small.grad, expected[2], rtol=1e-5, atol=1e-6)


def test_continual_step_with_ewc_equals_a_hand_computation() -> None:
    """The guarded step with EWC's hooks (direct penalty gradient, chunked above CHUNK, scratch kept between
    calls) against loss.backward(), ``grad += s F (theta - theta*)`` written out, Adam: three steps."""
    from engine import NonFiniteGuard, Step
    from models.continual_net import mlp
    from regularizers.ewc import EWC
    from regularizers.store import CHUNK

    torch.manual_seed(0)
    model = mlp(600, [500, 30], [2, 2])
    assert model.trunk[0].weight.numel() > CHUNK  # the chunked path
    hand = copy.deepcopy(model)
    names = ["trunk.0", "trunk.2", "head.0"]
    reg = EWC(model.groups(), 50.0)
    with torch.no_grad():
        for name in names:
            for f, a in zip(reg.importance[name], reg.anchor[name]):
                f.uniform_(0, 1e-2)
                a.add_(torch.randn_like(a) * 0.05)
    hand_params = [h for name in names for h in hand.groups()[name]]
    importance, anchor = ([t for n in names for t in table[n]] for table in (reg.importance, reg.anchor))
    step = Step(torch.optim.Adam(model.parameters(), lr=1e-3), model.parameters(), 0.0,
                NonFiniteGuard("loss", "", lambda: "", lambda: ""))
    hand_optim = torch.optim.Adam(hand.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(16, 600, generator=g), torch.randint(2, (16,), generator=g)
        expected = float(reg.penalty(names))
        taken, penalty = step.update_regularised(F.cross_entropy(model(x, head=0), y), reg, names)
        assert taken and penalty is not None and float(penalty) == pytest.approx(expected, rel=1e-5)
        hand_optim.zero_grad()
        F.cross_entropy(hand(x, head=0), y).backward()
        with torch.no_grad():
            for h, f, a in zip(hand_params, importance, anchor):
                h.grad.add_(f * (h - a), alpha=50.0)
        hand_optim.step()
        for p, h in zip(model.parameters(), hand.parameters()):
            torch.testing.assert_close(p, h, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ amp / compile
def few_steps(model: SharedRNN, arch: RNNArch, amp: bool, steps: int = 3) -> list[float]:
    model = copy.deepcopy(model).train()
    g = torch.Generator().manual_seed(4)
    h = model.init_hidden(4)
    losses = []
    for s in range(steps):
        x, y = torch.randint(50, (8, 4), generator=g), torch.randint(50, (8, 4), generator=g)
        torch.manual_seed(100 + s)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(x, h, arch)
            loss = F.cross_entropy(out.logits.flatten(0, 1).float(), y.flatten())
        model.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        with torch.no_grad():  # plain SGD, lr 1 (no torch.optim: its first step imports torch._dynamo)
            for p in model.parameters():
                if p.grad is not None:
                    p.sub_(p.grad)
        h = out.hidden.detach()
        losses.append(float(loss.detach()))
    return losses


def small_model(arch: RNNArch) -> SharedRNN:
    torch.manual_seed(0)
    return SharedRNN(50, 16, 16, arch.num_nodes)


def test_amp_bf16_stays_close_to_fp32() -> None:
    arch = ARCHS[0]
    model = small_model(arch)
    fp32 = few_steps(model, arch, amp=False)
    bf16 = few_steps(model, arch, amp=True)
    assert all(abs(a - b) < 0.02 * abs(a) for a, b in zip(fp32, bf16)), (fp32, bf16)
    # the gradients reach the fp32 weights through the bf16 casts
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randint(50, (3, 2)), model.init_hidden(2), arch)
    out.logits.float().sum().backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    last_edge = model.edges[SharedRNN.edge_name(*arch.edges[-1])]
    assert last_edge.w_h.grad is not None and float(last_edge.w_h.grad.abs().sum()) > 0


def test_compiled_cell_path_traces_and_matches_eager() -> None:
    """The functional kernels of ``--compile`` through dynamo without code generation (fast)."""
    arch = RNNArch(("tanh", "ReLU", "identity", "sigmoid"), (0, 1, 1))
    model = small_model(arch)
    eager = few_steps(model, arch, amp=False, steps=2)
    traced = copy.deepcopy(model)
    traced.enable_compile(backend="eager")
    assert few_steps(traced, arch, amp=False, steps=2) == pytest.approx(eager, rel=1e-5)


@pytest.mark.slow
def test_compiled_cell_stays_close_to_eager() -> None:
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    arch = RNNArch(("tanh", "ReLU", "identity"), (0, 1))
    model = small_model(arch)
    eager = few_steps(model, arch, amp=False)
    compiled_model = copy.deepcopy(model)
    compiled_model.enable_compile()
    compiled = few_steps(compiled_model, arch, amp=False)
    assert all(abs(a - b) < 1e-4 * abs(a) for a, b in zip(eager, compiled)), (eager, compiled)


# ------------------------------------------------------------------------------------ benchmark
def test_benchmark_runs_at_tiny_size(tmp_path: Path) -> None:
    from benchmarks import bench_search

    out = bench_search.main(["--size", "tiny", "--reps", "1", "--warmup", "0", "--threads", "1",
                      "--json", str(tmp_path / "b.json")])
    saved = json.loads((tmp_path / "b.json").read_text())
    for key in ("rnn_tokens_per_s", "rnn_matmul_ratio", "wpl_penalty_ratio", "fisher_refresh_batches",
                "controller_step_s", "cnn_images_per_s", "peak_rss_mib"):
        assert key in out and key in saved
    for key in ("rnn_roofline_ratio", "controller_step_roofline_ratio"):  # a positive ratio, as written
        assert saved[key]["median"] > 0 and saved[key] == out[key]


def test_cpu_runs_keep_freed_memory_in_the_heap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """main.py tunes glibc malloc once the device is the CPU (the benchmark's --no-malloc-tune shows the gain)."""
    import main

    calls: list[bool] = []
    monkeypatch.setattr(main, "keep_freed_memory", lambda: calls.append(True) or True)
    assert main.main(["--mode=derive", f"--load_path={tmp_path / 'missing'}", "--num_gpu=0"]) == 2
    assert calls == [True]
