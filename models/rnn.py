"""The ENAS recurrent-cell search space (Pham et al. 2018, sections 2.1-2.2).

A cell has ``num_blocks`` nodes. Node 0 reads the input ``x_t`` and the previous state ``h_{t-1}``;
every later node ``j`` reads one earlier node ``i`` (its parent) through a shared weight pair
``(W^c_ij, W^h_ij)`` owned by the edge ``i -> j``, so every architecture is a path through one big
shared model::

    c_0 = sigmoid(W_xc x + W_hc h)        h_0 = c_0 * f_0(W_xh x + W_hh h) + (1 - c_0) * h
    c_j = sigmoid(W^c_ij h_i)             h_j = c_j * f_j(W^h_ij h_i)    + (1 - c_j) * h_i

The cell's output is the average of the loose ends (nodes no other node reads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "ReLU": torch.relu,
    "identity": lambda x: x,
    "sigmoid": torch.sigmoid,
}
HIDDEN_NORM_CLIP = 25.0


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
    def from_dict(cls, d: dict[str, Any]) -> "RNNArch":
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


def embedded_dropout(embed: nn.Embedding, words: Tensor, p: float) -> Tensor:
    """Drop whole word types (rows of the embedding), rescaling the rest (Gal & Ghahramani)."""
    if p == 0:
        return embed(words)
    mask = embed.weight.new_empty(embed.weight.size(0), 1).bernoulli_(1 - p) / (1 - p)
    return F.embedding(words, embed.weight * mask)


def locked_dropout(x: Tensor, p: float) -> Tensor:
    """Dropout with one mask per sequence, shared by every time step. ``x`` is (time, batch, dim)."""
    if p == 0:
        return x
    mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - p) / (1 - p)
    return x * mask


class RNNOutput(NamedTuple):
    logits: Tensor  # (time, batch, ntokens)
    hidden: Tensor  # (batch, hid): state for the next slice
    raw: Tensor  # (time, batch, hid): cell outputs before dropout (for TAR)
    dropped: Tensor  # (time, batch, hid): cell outputs after dropout (for AR)


class SharedRNN(nn.Module):
    """Every edge of every possible cell, plus the embedding and (tied) decoder they share."""

    def __init__(
        self,
        ntokens: int,
        embed: int,
        hid: int,
        num_blocks: int,
        *,
        dropout: float = 0.4,
        dropoute: float = 0.1,
        dropouti: float = 0.65,
        wdrop: float = 0.5,
        tie_weights: bool = True,
        next_state: str = "avg",
    ) -> None:
        super().__init__()
        if tie_weights and embed != hid:
            raise ValueError(f"tie_weights needs shared_embed == shared_hid (got {embed} and {hid})")
        if next_state not in ("avg", "last"):
            raise ValueError(f"next_state must be 'avg' or 'last', got {next_state!r}")
        self.hid = hid
        self.num_blocks = num_blocks
        self.dropout, self.dropoute, self.dropouti, self.wdrop = dropout, dropoute, dropouti, wdrop
        self.next_state = next_state
        self.encoder = nn.Embedding(ntokens, embed)
        # Node 0: rows [0, hid) produce c_0, rows [hid, 2 hid) the candidate h_0.
        self.w_x0 = nn.Parameter(torch.empty(2 * hid, embed))
        self.w_h0 = nn.Parameter(torch.empty(2 * hid, hid))
        self.edges = nn.ModuleDict()
        for j in range(1, num_blocks):
            for i in range(j):
                edge = nn.Module()
                edge.w_c = nn.Parameter(torch.empty(hid, hid))
                edge.w_h = nn.Parameter(torch.empty(hid, hid))
                self.edges[self.edge_name(i, j)] = edge
        self.decoder = nn.Linear(hid, ntokens)
        for p in self.parameters():
            nn.init.uniform_(p, -0.025, 0.025)
        if tie_weights:
            self.decoder.weight = self.encoder.weight

    @staticmethod
    def edge_name(i: int, j: int) -> str:
        return f"{i}_{j}"

    def edge_groups(self) -> dict[str, list[nn.Parameter]]:
        """WPL parameter groups: one per edge, holding its ``W^c`` and ``W^h``."""
        return {name: [edge.w_c, edge.w_h] for name, edge in self.edges.items()}

    def init_hidden(self, batch_size: int) -> Tensor:
        return self.w_h0.new_zeros(batch_size, self.hid)

    def forward(self, inputs: Tensor, hidden: Tensor, arch: RNNArch) -> RNNOutput:
        """Run ``arch`` over ``inputs`` (time, batch) from ``hidden`` (batch, hid)."""
        if arch.num_nodes != self.num_blocks:
            raise ValueError(f"architecture has {arch.num_nodes} nodes, the shared model {self.num_blocks}")
        training = self.training
        wdrop = self.wdrop if training else 0.0
        emb = embedded_dropout(self.encoder, inputs, self.dropoute if training else 0.0)
        emb = locked_dropout(emb, self.dropouti if training else 0.0)
        x_proj = F.linear(emb, self.w_x0)  # node 0's input projections for all time steps at once
        w_h0 = F.dropout(self.w_h0, wdrop, training)
        # One fused (2 hid, hid) matrix per used edge: a single matmul gives both c_j and h_j inputs.
        w_edges = [F.dropout(torch.cat([self.edges[self.edge_name(i, j)].w_c, self.edges[self.edge_name(i, j)].w_h]),
                             wdrop, training) for i, j in arch.edges]
        acts = [ACTIVATIONS[a] for a in arch.activations]
        loose = arch.loose_ends
        hid = self.hid
        outputs = []
        for t in range(inputs.size(0)):
            pre = x_proj[t] + hidden @ w_h0.t()
            c = torch.sigmoid(pre[:, :hid])
            nodes = [c * acts[0](pre[:, hid:]) + (1 - c) * hidden]
            for j, (parent, w) in enumerate(zip(arch.parents, w_edges), start=1):
                h_in = nodes[parent]
                pre = h_in @ w.t()
                c = torch.sigmoid(pre[:, :hid])
                nodes.append(c * acts[j](pre[:, hid:]) + (1 - c) * h_in)
            output = torch.stack([nodes[j] for j in loose]).mean(0) if len(loose) > 1 else nodes[loose[0]]
            state = output if self.next_state == "avg" else nodes[-1]
            # Rows with a norm above the clip are rescaled to it, with tensor ops only (no host sync).
            hidden = state * (HIDDEN_NORM_CLIP / state.norm(dim=-1, keepdim=True).clamp_min(1e-6)).clamp(max=1.0)
            outputs.append(output)
        raw = torch.stack(outputs)
        dropped = locked_dropout(raw, self.dropout if training else 0.0)
        return RNNOutput(self.decoder(dropped), hidden, raw, dropped)
