"""Architectures as NAO token sequences (Luo et al. 2018, "Neural Architecture Optimization").

NAO's controller reads and writes a cell as a sequence over one vocabulary: token 0 is SOS/EOS, and
each kind of decision (a node's input, an activation, an operation) owns a contiguous block of tokens,
so "node 3" is the same token wherever it appears (NAO-WS's RNN: inputs 1..11, activations 12..15).
A position of the sequence is a :class:`Slot`: its kind and the range of values valid there (node
``j`` may read nodes ``< j`` only), which is what the decoder's constrained decoding masks with.
The encoder reads the sequence two tokens at a time, so every layout has an even length.

The codec maps a search space's decision tokens (``SearchSpace.decode``'s input) to such a sequence
and back. Layouts:

- RNN cell (this project's ENAS cell): ``[in_0, act_0, in_1, act_1, ...]``. Node 0 reads the input
  and the previous state, a fixed slot (value 0 of the "node" kind, not a decision); node ``j >= 1``
  reads node ``p < j``, written as value ``p + 1``. Unlike NAO-WS's cell, node 0 has an activation
  decision too (``docs/nao.md``).
- micro-CNN cell (ENAS micro space, as NAO-WS's CNN): per node ``[in_a, op_a, in_b, op_b]``, the
  normal cell then the reduction cell; node ``j`` reads one of ``j + 2`` inputs.
- any other space: one kind per decision, padded with a fixed slot to an even length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

SOS = 0  # start of the decoder's input, and the encoder's padding-free vocabulary's token 0


@dataclass(frozen=True)
class Slot:
    """One position: a ``kind`` of token, the valid values ``[lo, hi)`` of that kind, and the decision
    it carries (an index into the space's decision tokens; ``None``: a fixed slot, always ``lo``)."""

    kind: str
    lo: int
    hi: int
    decision: int | None


class TokenCodec:
    """A layout of slots; decision tokens <-> sequence tokens, and the mask of valid tokens per position."""

    def __init__(self, slots: Sequence[Slot]) -> None:
        if len(slots) % 2:
            raise ValueError(f"a NAO sequence is read in pairs; {len(slots)} slots is odd")
        self.slots = tuple(slots)
        sizes: dict[str, int] = {}
        for s in slots:
            sizes[s.kind] = max(sizes.get(s.kind, 0), s.hi)
        self.offsets: dict[str, int] = {}
        start = 1  # after SOS
        for kind, size in sizes.items():
            self.offsets[kind] = start
            start += size
        self.vocab_size = start
        self.num_decisions = sum(s.decision is not None for s in slots)

    @property
    def length(self) -> int:
        return len(self.slots)

    def to_sequence(self, decisions: Sequence[int]) -> list[int]:
        if len(decisions) != self.num_decisions:
            raise ValueError(f"{len(decisions)} decisions; this layout has {self.num_decisions}")
        out = []
        for s in self.slots:
            value = s.lo if s.decision is None else s.lo + int(decisions[s.decision])
            if not s.lo <= value < s.hi:
                raise ValueError(f"decision {s.decision} = {value - s.lo} is outside [0, {s.hi - s.lo})")
            out.append(self.offsets[s.kind] + value)
        return out

    def to_decisions(self, sequence: Sequence[int]) -> list[int]:
        if len(sequence) != self.length:
            raise ValueError(f"{len(sequence)} tokens; this layout has {self.length}")
        decisions = [0] * self.num_decisions
        for t, (s, token) in enumerate(zip(self.slots, sequence)):
            value = int(token) - self.offsets[s.kind]
            if not s.lo <= value < s.hi or (s.decision is None and value != s.lo):
                raise ValueError(f"token {token} is not valid at position {t} ({s.kind} in [{s.lo}, {s.hi}))")
            if s.decision is not None:
                decisions[s.decision] = value - s.lo
        return decisions

    def valid_mask(self) -> Tensor:
        """``(length, vocab_size)`` booleans: the tokens constrained decoding may emit at each position."""
        mask = torch.zeros(self.length, self.vocab_size, dtype=torch.bool)
        for t, s in enumerate(self.slots):
            mask[t, self.offsets[s.kind] + s.lo:self.offsets[s.kind] + s.hi] = True
        return mask


def rnn_codec(num_blocks: int, num_activations: int) -> TokenCodec:
    slots = [Slot("node", 0, 1, None), Slot("act", 0, num_activations, 0)]
    for j in range(1, num_blocks):
        slots += [Slot("node", 1, j + 1, 2 * j - 1), Slot("act", 0, num_activations, 2 * j)]
    return TokenCodec(slots)


def cnn_codec(num_blocks: int, num_normal_ops: int, num_reduce_ops: int) -> TokenCodec:
    slots, d = [], 0
    for kind, num_ops in (("normal_op", num_normal_ops), ("reduce_op", num_reduce_ops)):
        for j in range(num_blocks):
            for _ in range(2):
                slots += [Slot("input", 0, j + 2, d), Slot(kind, 0, num_ops, d + 1)]
                d += 2
    return TokenCodec(slots)


def generic_codec(decision_sizes: Sequence[int]) -> TokenCodec:
    slots = [Slot(f"d{i}", 0, n, i) for i, n in enumerate(decision_sizes)]
    if len(slots) % 2:
        slots.append(Slot("pad", 0, 1, None))
    return TokenCodec(slots)


def codec_for(space: Any) -> TokenCodec:
    """The layout of ``space``'s cells (its class picks it; unknown spaces get the generic one)."""
    sizes = list(space.decision_sizes)
    name = type(space).__name__
    if name == "RNNSpace":
        return rnn_codec((len(sizes) + 1) // 2, sizes[0])
    if name == "CNNSpace":
        return cnn_codec(len(sizes) // 8, sizes[1], sizes[len(sizes) // 2 + 1])
    return generic_codec(sizes)
