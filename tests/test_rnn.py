"""The recurrent cell, its architecture type, the controller and perplexity, checked by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import config
from data.text import batchify, build_corpus
from models.controller import Controller
from models.rnn import SharedRNN, drop_connect
from models.rnn_arch import RNNArch, decision_sizes, decode, encode
from spaces.rnn import RNNSpace, RNNSpaceConfig

ACTS = ["tanh", "ReLU", "identity", "sigmoid"]


# The two modelling variants of the cell: the paper's code (biased input projections, output batch
# norm) and the ENAS paper (neither).
VARIANTS = {"paper": {"input_bias": True, "output_norm": "batchnorm"}, "enas": {"input_bias": False, "output_norm": "none"}}


def tiny_model(num_blocks: int, next_state: str = "avg", hid: int = 3, variant: str = "enas") -> SharedRNN:
    torch.manual_seed(0)
    model = SharedRNN(7, hid, hid, num_blocks, tie_weights=False, next_state=next_state, **VARIANTS[variant])
    for p in model.parameters():  # larger weights than the init so every term matters
        torch.nn.init.normal_(p, std=0.7)
    return model.eval()


def reference_step(model: SharedRNN, arch: RNNArch, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The cell equations written out with separate W^c / W^h matrices and biases b_c / b_h."""
    fns = {"tanh": torch.tanh, "ReLU": torch.relu, "identity": lambda v: v, "sigmoid": torch.sigmoid}
    H = model.hid
    wxc, wxh = model.w_x0[:H], model.w_x0[H:]
    bc, bh = (model.b_x0[:H], model.b_x0[H:]) if model.b_x0 is not None else (0.0, 0.0)
    whc, whh = model.w_h0[:H], model.w_h0[H:]
    c0 = torch.sigmoid(x @ wxc.t() + bc + h @ whc.t())
    nodes = [c0 * fns[arch.activations[0]](x @ wxh.t() + bh + h @ whh.t()) + (1 - c0) * h]
    for j, i in enumerate(arch.parents, start=1):
        edge = model.edges[f"{i}_{j}"]
        c = torch.sigmoid(nodes[i] @ edge.w_c.t())
        nodes.append(c * fns[arch.activations[j]](nodes[i] @ edge.w_h.t()) + (1 - c) * nodes[i])
    return torch.stack([nodes[j] for j in arch.loose_ends]).mean(0), nodes


@pytest.mark.parametrize("arch", [
    RNNArch(("tanh", "ReLU", "identity"), (0, 0)),  # loose ends 1 and 2
    RNNArch(("sigmoid", "tanh", "ReLU"), (0, 1)),  # a chain: loose end 2 only
    RNNArch(("identity", "sigmoid"), (0,)),
])
@pytest.mark.parametrize("variant", ["paper", "enas"])
@pytest.mark.parametrize("next_state", ["last", "avg"])
def test_cell_matches_the_equations(arch: RNNArch, variant: str, next_state: str) -> None:
    model = tiny_model(arch.num_nodes, next_state, variant=variant)
    tokens = torch.tensor([[1, 4], [2, 0], [6, 3]])  # (time, batch)
    h = torch.randn(2, model.hid) * 0.5
    out = model(tokens, h, arch)
    state = h
    for t in range(tokens.size(0)):
        expected, nodes = reference_step(model, arch, model.encoder(tokens[t]), state)
        if variant == "paper":  # eval mode: the running statistics (still the initial mean 0, variance 1)
            bn = model.output_norm
            expected = expected / (1.0 + bn.eps) ** 0.5 * bn.weight + bn.bias
        assert torch.allclose(out.raw[t], expected, atol=1e-6)
        state = nodes[-1] if next_state == "last" else reference_step(model, arch, model.encoder(tokens[t]), state)[0]
    assert torch.allclose(out.hidden, state, atol=1e-6)  # norms stay far below the clip of 25
    assert torch.allclose(out.logits, model.decoder(out.raw), atol=1e-6)


def test_paper_variant_has_exactly_the_bias_and_norm_parameters() -> None:
    ntokens, h, blocks = 7, 3, 4
    edges = blocks * (blocks - 1) // 2
    counts = {v: sum(p.numel() for p in tiny_model(blocks, hid=h, variant=v).parameters()) for v in VARIANTS}
    enas = ntokens * h + 2 * h * h + 2 * h * h + edges * 2 * h * h + h * ntokens + ntokens  # untied decoder
    assert counts["enas"] == enas
    assert counts["paper"] == enas + 2 * h + 2 * h  # b_c, b_h and the batch norm's scale and shift
    names = dict(tiny_model(blocks, variant="paper").named_parameters())
    assert {"b_x0", "output_norm.weight", "output_norm.bias"} <= set(names)


def test_step_batch_norm_equals_one_batch_norm_applied_step_by_step() -> None:
    """The paper's code calls BatchNorm1d once per time step; StepBatchNorm does all steps at once."""
    from models.rnn import StepBatchNorm

    torch.manual_seed(0)
    x = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True) * 3 + 1
    ours = StepBatchNorm(3).double()
    loop = torch.nn.BatchNorm1d(3).double()
    with torch.no_grad():
        ours.weight.uniform_(-1, 1), ours.bias.uniform_(-1, 1)
        loop.load_state_dict(ours.state_dict())
    for _ in range(2):  # twice: the running statistics start from non-initial values the second time
        y = ours(x)
        y_loop = torch.stack([loop(x[t]) for t in range(x.size(0))])
        assert torch.allclose(y, y_loop, atol=1e-12)
        g = torch.randn_like(y)
        grads = torch.autograd.grad(y, [x, ours.weight, ours.bias], g)
        grads_loop = torch.autograd.grad(y_loop, [x, loop.weight, loop.bias], g)
        for a, b in zip(grads, grads_loop):
            assert torch.allclose(a, b, atol=1e-10)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.allclose(getattr(ours, name).double(), getattr(loop, name).double(), atol=1e-12), name
    ours.eval(), loop.eval()
    assert torch.allclose(ours(x), torch.stack([loop(x[t]) for t in range(x.size(0))]), atol=1e-12)


@pytest.mark.parametrize("scope", ["node0", "all"])
def test_drop_connect_touches_exactly_the_documented_weights(scope: str) -> None:
    """node0: only W_hc / W_hh of node 0 are dropped (the paper's code); all: every used edge too.

    A dropped entry of a weight receives exactly zero gradient, so the gradients show the masks.
    """
    torch.manual_seed(0)
    hid = 40
    model = SharedRNN(9, hid, hid, 3, wdrop=0.5, wdrop_scope=scope, dropout=0, dropoute=0, dropouti=0).train()
    arch = RNNArch(("tanh", "tanh", "tanh"), (0, 1))
    tokens = torch.randint(9, (6, 8))
    out = model(tokens, torch.randn(8, hid), arch)
    out.logits.sum().backward()
    zero_fraction = lambda p: float((p.grad == 0).float().mean())
    assert zero_fraction(model.w_h0) == pytest.approx(0.5, abs=0.05)
    assert zero_fraction(model.w_x0) == 0.0  # input projections are never dropped
    for name in ("0_1", "1_2"):
        for w in (model.edges[name].w_c, model.edges[name].w_h):
            assert zero_fraction(w) == (pytest.approx(0.5, abs=0.05) if scope == "all" else 0.0)
    assert model.edges["0_2"].w_h.grad is None  # an edge the architecture does not use


def test_loose_ends_are_averaged_and_last_state_option() -> None:
    arch = RNNArch(("tanh", "ReLU", "identity", "tanh"), (0, 0, 1))
    assert arch.loose_ends == [2, 3]
    x = torch.tensor([[3]])
    h = torch.zeros(1, 3)
    avg_model = tiny_model(4, "avg")
    out = avg_model(x, h, arch)
    _, nodes = reference_step(avg_model, arch, avg_model.encoder(x[0]), h)
    assert torch.allclose(out.raw[0], (nodes[2] + nodes[3]) / 2, atol=1e-6)
    last_model = tiny_model(4, "last")
    assert torch.allclose(last_model(x, h, arch).hidden, nodes[3], atol=1e-6)


def test_hidden_norm_is_clipped_at_25() -> None:
    model = tiny_model(2)
    arch = RNNArch(("identity", "identity"), (0,))
    big = torch.full((1, 3), 100.0)
    out = model(torch.tensor([[1]]), big, arch)
    assert float(out.hidden.norm()) == pytest.approx(25.0, rel=1e-5)


def test_drop_connect_keeps_entries_with_probability_one_minus_p_and_rescales() -> None:
    w = torch.full((400, 500), 2.0, requires_grad=True)
    torch.manual_seed(3)
    dropped = drop_connect(w, 0.5)
    assert set(dropped.detach().unique().tolist()) == {0.0, 4.0}  # kept entries scaled by 1 / (1 - p)
    kept = float((dropped != 0).float().mean())
    assert kept == pytest.approx(0.5, abs=0.01)  # 200,000 draws: the std of the fraction is 0.0011
    dropped.sum().backward()
    assert torch.equal(w.grad, (dropped.detach() != 0).float() * 2.0)  # the gradient is the mask
    assert float((drop_connect(w, 0.2) != 0).float().mean()) == pytest.approx(0.8, abs=0.01)
    assert drop_connect(w, 0.0) is w


def test_arch_json_round_trip_and_validation() -> None:
    arch = RNNArch(("tanh", "ReLU", "sigmoid"), (0, 1))
    again = RNNArch.from_dict(json.loads(json.dumps(arch.to_dict())))
    assert again == arch and hash(again) == hash(arch)
    assert decode(encode(arch, ACTS), ACTS) == arch
    with pytest.raises(ValueError):
        RNNArch(("tanh", "tanh"), (1,))  # node 1 cannot read itself
    with pytest.raises(ValueError):
        RNNArch(("tanh", "swish"), (0,))


def test_decision_layout() -> None:
    assert decision_sizes(4, 4) == [4, 1, 4, 2, 4, 3, 4]


def test_controller_log_probs_are_log_softmax_at_the_sampled_actions() -> None:
    torch.manual_seed(0)
    sizes = decision_sizes(4, 4)
    ctrl = Controller(sizes, hidden=8, temperature=5.0, tanh_c=2.5).train()
    sample = ctrl(3, generator=torch.Generator().manual_seed(1))
    assert sample.tokens.shape == (3, len(sizes))
    x = torch.zeros(3, 8)
    state = (torch.zeros(3, 8), torch.zeros(3, 8))
    offset = 0
    for t, n in enumerate(sizes):
        state = ctrl.lstm(x, state)
        logits = 2.5 * torch.tanh(ctrl.heads[t](state[0]) / 5.0)
        logp = F.log_softmax(logits, -1)
        action = sample.tokens[:, t]
        assert torch.all(action < n)
        assert torch.allclose(sample.log_probs[:, t], logp[torch.arange(3), action], atol=1e-6)
        assert torch.allclose(sample.entropies[:, t], -(logp.exp() * logp).sum(-1), atol=1e-6)
        x = ctrl.embed(action + offset)
        offset += n
    rescored = ctrl(tokens=sample.tokens)
    assert torch.allclose(rescored.log_probs, sample.log_probs)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(data_dir: Path) -> None:
    corpus = build_corpus(data_dir / "tiny")
    space = RNNSpace(corpus, config.defaults(RNNSpaceConfig, num_blocks=3, shared_embed=8, shared_hid=8, tie_weights=False,
                                            batch_size=4, test_batch_size=2), torch.device("cpu"))
    torch.nn.init.zeros_(space.model.decoder.weight)
    torch.nn.init.zeros_(space.model.decoder.bias)
    arch = RNNArch(("tanh", "ReLU", "tanh"), (0, 1))
    result = space.evaluate(arch, "test")
    assert result["test_ppl"] == pytest.approx(corpus.ntokens, rel=1e-5)
    assert result["test_tokens"] == (len(corpus.test) // 2 - 1) * 2


def test_perplexity_is_exp_of_total_nll_over_tokens(data_dir: Path) -> None:
    corpus = build_corpus(data_dir / "tiny")
    cfg = config.defaults(RNNSpaceConfig, num_blocks=3, shared_embed=8, shared_hid=8, batch_size=4, test_batch_size=3, shared_rnn_max_length=5)
    space = RNNSpace(corpus, cfg, torch.device("cpu"))
    arch = RNNArch(("tanh", "sigmoid", "ReLU"), (0, 0))
    data = batchify(corpus.test, 3)
    model = space.model.eval()
    with torch.no_grad():  # one long sequence, state carried across every step
        out = model(data[:-1], model.init_hidden(3), arch)
        nll = F.cross_entropy(out.logits.flatten(0, 1), data[1:].flatten(), reduction="sum")
    assert space.evaluate(arch, "test")["test_ppl"] == pytest.approx(math.exp(float(nll) / data[1:].numel()), rel=1e-4)


def test_the_forgetting_error_with_its_slices_side_by_side_is_the_error_of_each_slice(data_dir: Path) -> None:
    """On a GPU ``Space.error`` reads its fixed slices as one batch of their columns; forced here on the CPU,
    it equals the error summed slice by slice (the same tokens, each column from a zero state)."""
    corpus = build_corpus(data_dir / "tiny")
    cfg = config.defaults(RNNSpaceConfig, num_blocks=4, shared_embed=8, shared_hid=8, batch_size=3,
                          shared_rnn_max_length=6, forgetting_eval_batches=4)
    space = RNNSpace(corpus, cfg, torch.device("cpu"))
    assert not space.join_fixed_batches and len(space.fixed_batches) == 4  # the CPU: one slice at a time
    arch = RNNArch(("tanh", "sigmoid", "ReLU", "identity"), (0, 1, 1))
    alone = space.error(arch)
    model = space.model.eval()
    with torch.no_grad():  # by hand: every slice from a zero state, the tokens' mean cross-entropy
        nll = sum(float(F.cross_entropy(model(x, model.init_hidden(3), arch).logits.flatten(0, 1), y.flatten(),
                                        reduction="sum")) for x, y in space.fixed_batches)
    assert alone == pytest.approx(nll / (4 * 6 * 3), rel=1e-6)
    space.join_fixed_batches = True
    assert space.error(arch) == pytest.approx(alone, rel=1e-6)
    (x, y), = space._error_batches()
    assert x.shape == y.shape == (6, 12) and torch.equal(x[:, 3:6], space.fixed_batches[1][0])


def test_wpl_groups_are_the_edges_of_the_architecture(data_dir: Path) -> None:
    corpus = build_corpus(data_dir / "tiny")
    space = RNNSpace(corpus, config.defaults(RNNSpaceConfig, num_blocks=4, shared_embed=8, shared_hid=8, batch_size=4), torch.device("cpu"))
    assert len(space.wpl_groups()) == 6  # every i < j edge of 4 nodes
    arch = RNNArch(("tanh",) * 4, (0, 0, 2))
    assert space.groups_for(arch) == ["0_1", "0_2", "2_3"]
    assert all(len(space.wpl_groups()[g]) == 2 for g in space.groups_for(arch))


def test_token_cross_entropy_equals_the_plain_one() -> None:
    """The RNN loss (one logits-sized tensor kept for the backward) against F.cross_entropy: value and gradient."""
    from models.token_loss import ROWS, token_cross_entropy

    torch.manual_seed(0)
    for scale in (1.0, 40.0):  # ordinary and saturated logits; rows span several chunks
        logits = (torch.randn(2 * ROWS + 7, 50) * scale).requires_grad_()
        targets = torch.randint(50, (logits.size(0),))
        ref = F.cross_entropy(logits, targets)
        (ref_grad,) = torch.autograd.grad(2.5 * ref, logits)
        value = token_cross_entropy(logits, targets)
        (grad,) = torch.autograd.grad(2.5 * value, logits)
        assert torch.allclose(value, ref, rtol=1e-6, atol=1e-6)
        assert torch.allclose(grad, ref_grad, rtol=1e-5, atol=1e-7)  # saturated rows: p near 1 rounds apart
