"""The graphed cell's per-node elementwise work as one compiled kernel per node (``--cuda_graph_fusion``).

Why: with the architecture as data (``models.rnn_graph``) a node computes every candidate activation
and picks one, so its elementwise work is 5 kernels in inference and 15 in training (forward and
backward) around its matmuls; on a GPU, inside the CUDA graphs, those small kernels are what is left
of a step. Written as pure tensor functions that end by copying into the caller's buffers, each of
the three passes compiles (``torch.compile``: Triton on a GPU, C++ on the CPU) to a single kernel that
reads the matmul's output and writes the buffers in place; the graph then captures that kernel like
any other. Per node and step this leaves 3 kernels in inference (parent's gather, matmul, this) and 6
in training, against 7 and 19.

The arithmetic is the unfused cell's (the same formulas, e.g. ``tanh' = 1 - f^2`` read from the
output), evaluated by the compiler's own elementwise code: equal to it up to fp32 rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from models.rnn_arch import ACTIVATIONS
from models.rnn_cell import act_grad
from models.rnn_graph import BACKWARD_SLOT, FORWARD_SLOT


def _activation(a: Tensor, slot: Tensor) -> Tensor:
    """The activation ``slot`` (``FORWARD_SLOT``'s numbering) names, as one elementwise expression."""
    f = a
    for name in ("ReLU", "sigmoid", "tanh"):
        f = torch.where(slot == FORWARD_SLOT[name], ACTIVATIONS[name](a), f)
    return f


def node_infer(pre: Tensor, h_in: Tensor, slot: Tensor, node: Tensor) -> None:
    """Inference: ``node = h_in + c * (f - h_in)`` from the matmul's ``pre`` (batch, 2 hid)."""
    hid = h_in.size(1)
    c = torch.sigmoid(pre[:, :hid])
    node.copy_(torch.lerp(h_in, _activation(pre[:, hid:], slot), c))


def node_train(pre: Tensor, h_in: Tensor, slot: Tensor, gate: Tensor, act: Tensor, diff: Tensor, node: Tensor) -> None:
    """Training forward: also keeps the gate, the activation and ``f - h_in`` for the backward."""
    hid = h_in.size(1)
    c = torch.sigmoid(pre[:, :hid])
    f = _activation(pre[:, hid:], slot)
    d = f - h_in
    gate.copy_(c), act.copy_(f), diff.copy_(d)
    node.copy_(torch.addcmul(h_in, c, d))


def node_backward(g: Tensor, diff: Tensor, c: Tensor, f: Tensor, slot: Tensor, dpre: Tensor, gin: Tensor) -> None:
    """From the node's gradient ``g``: the matmul's output gradient into ``dpre`` (batch, 2 hid) and
    ``g * (1 - c)``, what flows on to the node's input, into ``gin``."""
    hid = g.size(1)
    gc = g * c
    da = gc
    for name in ("ReLU", "sigmoid", "tanh"):
        da = torch.where(slot == BACKWARD_SLOT[name], act_grad(name, gc, f), da)
    dpre[:, :hid].copy_(diff * g * (1 - c) * c)
    dpre[:, hid:].copy_(da)
    gin.copy_(g - gc)


class FusedNodes:
    """The three passes, compiled lazily (once per shape and dtype) with ``compile_options``."""

    def __init__(self, **compile_options: Any) -> None:
        options = {"dynamic": False, "fullgraph": True, **compile_options}
        self.infer = torch.compile(node_infer, **options)
        self.train = torch.compile(node_train, **options)
        self.backward = torch.compile(node_backward, **options)
