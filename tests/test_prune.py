"""Pruning a shared model to one architecture (``prune_to``): the same function with the shared weights,
nothing left that the architecture does not use, and the inference parameter count."""

from __future__ import annotations

import pytest
import torch

from models.cnn import CNNArch, CNNStyle, SharedCNN, decision_sizes, decode
from models.rnn import SharedRNN
from models.rnn_arch import RNNArch
from spaces.base import load_shared_weights

OPS = ["identity", "max3x3", "depthwise_3x3", "depthwise_5x5"]


def test_pruned_rnn_computes_the_shared_function_with_the_same_weights() -> None:
    arch = RNNArch(("tanh", "ReLU", "identity", "sigmoid", "tanh"), (0, 0, 2, 1))
    torch.manual_seed(0)
    shared = SharedRNN(11, 6, 6, 5)
    for p in shared.parameters():  # larger than the init, so every edge matters
        torch.nn.init.normal_(p, std=0.5)
    torch.manual_seed(1)  # different fresh weights: only the transfer can make them agree
    fixed = SharedRNN(11, 6, 6, 5).prune_to(arch)
    assert sorted(fixed.edges) == ["0_1", "0_2", "1_4", "2_3"]
    assert sum(p.numel() for p in fixed.parameters()) < sum(p.numel() for p in shared.parameters())
    load_shared_weights(fixed, shared.state_dict())
    tokens = torch.randint(11, (7, 3), generator=torch.Generator().manual_seed(2))
    hidden = torch.randn(3, 6, generator=torch.Generator().manual_seed(3))
    for training in (False, True):  # in training, the same seed draws the same dropout masks
        shared.train(training)
        fixed.train(training)
        torch.manual_seed(4)
        a = shared(tokens, hidden, arch)
        torch.manual_seed(4)
        b = fixed(tokens, hidden, arch)
        assert torch.equal(a.logits, b.logits) and torch.equal(a.hidden, b.hidden)
    with pytest.raises(KeyError):  # an architecture with another edge has no weights there
        fixed(tokens, hidden, RNNArch(("tanh",) * 5, (0, 1, 2, 3)))


def test_rnn_parameter_count_is_that_of_the_pruned_model() -> None:
    arch = RNNArch(("tanh", "ReLU", "identity", "sigmoid"), (0, 1, 1))
    shared = SharedRNN(11, 6, 6, 4)
    used = shared.count_parameters(arch)
    # tied embedding/decoder, node 0 (two matrices, input bias), 3 edges x (W^c, W^h), batch norm, decoder bias
    assert used == 11 * 6 + 2 * (2 * 6 * 6) + 2 * 6 + 3 * 2 * 6 * 6 + 2 * 6 + 11
    assert shared.prune_to(arch).count_parameters(arch) == used == sum(p.numel() for p in shared.parameters())


def cnn_arch(seed: int) -> CNNArch:
    g = torch.Generator().manual_seed(seed)
    return decode([int(torch.randint(n, (1,), generator=g)) for n in decision_sizes(3, len(OPS), len(OPS))], OPS, OPS)


@pytest.mark.parametrize("style", [CNNStyle(), CNNStyle.enas()], ids=["paper", "enas"])
def test_pruned_cnn_computes_the_shared_function_and_uses_every_parameter_left(style: CNNStyle) -> None:
    arch = cnn_arch(5)
    torch.manual_seed(0)
    shared = SharedCNN(3, 4, 3, 12, 2, 1, OPS, OPS, style, image_size=(8, 8))
    torch.manual_seed(1)
    pruned = SharedCNN(3, 4, 3, 12, 2, 1, OPS, OPS, style, image_size=(8, 8)).prune_to(arch)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in shared.parameters())
    assert set(pruned.state_dict()) < set(shared.state_dict())
    load_shared_weights(pruned, shared.state_dict())
    images = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(shared(images, arch), pruned(images, arch))
    pruned(images, arch).logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in pruned.parameters())  # nothing the architecture never runs is left
    # the count leaves out exactly the concat projection's columns the cell slices away (ENAS style)
    assert pruned.count_parameters(arch) == sum(int((p.grad != 0).sum()) for p in pruned.parameters())
