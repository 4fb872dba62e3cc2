"""The ENAS recurrent cell as data (Pham et al. 2018, sections 2.1-2.2): the architecture codec.

A cell has ``num_blocks`` nodes. Node 0 reads the input ``x_t`` and the previous state ``h_{t-1}``;
every later node ``j`` reads one earlier node ``i`` (its parent) through a shared weight pair
``(W^c_ij, W^h_ij)`` owned by the edge ``i -> j``, so every architecture is a path through one big
shared model::

    c_0 = sigmoid(W_xc x + W_hc h + b_c)  h_0 = c_0 * f_0(W_xh x + W_hh h + b_h) + (1 - c_0) * h
    c_j = sigmoid(W^c_ij h_i)             h_j = c_j * f_j(W^h_ij h_i)    + (1 - c_j) * h_i

The cell's output is the average of the loose ends (nodes no other node reads); the state carried
to the next time step is the last node (the paper's code) or that average (the ENAS paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "ReLU": torch.relu,
    "identity": lambda x: x,
    "sigmoid": torch.sigmoid,
}


@dataclass(frozen=True)
class RNNArch:
    """A recurrent cell: the activation of every node and the parent of every node after the first."""

    activations: tuple[str, ...]
    parents: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.parents) != len(self.activations) - 1:
            raise ValueError(f"{len(self.activations)} nodes need {len(self.activations) - 1} parents, got {len(self.parents)}")
        for j, parent in enumerate(self.parents, start=1):
            if not 0 <= parent < j:
                raise ValueError(f"node {j} cannot read node {parent}")
        unknown = set(self.activations) - set(ACTIVATIONS)
        if unknown:
            raise ValueError(f"unknown activations {sorted(unknown)}; known: {list(ACTIVATIONS)}")

    @property
    def num_nodes(self) -> int:
        return len(self.activations)

    @property
    def edges(self) -> list[tuple[int, int]]:
        return [(parent, j) for j, parent in enumerate(self.parents, start=1)]

    @property
    def loose_ends(self) -> list[int]:
        read = set(self.parents)
        return [j for j in range(self.num_nodes) if j not in read]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "rnn", "activations": list(self.activations), "parents": list(self.parents)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RNNArch:
        if d.get("type") != "rnn":
            raise ValueError(f"not an RNN architecture: type={d.get('type')!r}")
        return cls(tuple(d["activations"]), tuple(int(p) for p in d["parents"]))

    def __str__(self) -> str:
        nodes = [f"0:{self.activations[0]}"] + [f"{p}->{j}:{self.activations[j]}" for p, j in self.edges]
        return " ".join(nodes)


def decision_sizes(num_blocks: int, num_activations: int) -> list[int]:
    """Controller layout: activation of node 0, then (parent, activation) for each later node."""
    sizes = [num_activations]
    for j in range(1, num_blocks):
        sizes += [j, num_activations]
    return sizes


def decode(tokens: Sequence[int], activations: Sequence[str]) -> RNNArch:
    acts = [activations[tokens[0]]] + [activations[t] for t in tokens[2::2]]
    return RNNArch(tuple(acts), tuple(int(t) for t in tokens[1::2]))


def encode(arch: RNNArch, activations: Sequence[str]) -> list[int]:
    index = {a: i for i, a in enumerate(activations)}
    tokens = [index[arch.activations[0]]]
    for j, parent in enumerate(arch.parents, start=1):
        tokens += [parent, index[arch.activations[j]]]
    return tokens
