"""The 32-cell recurrent space of the ranking benchmark (Yu et al., ICLR 2020, "space_2"), on the ENAS cell.

Small enough to train every cell alone (the ground truth a weight-sharing search is scored against),
large enough that ranking its cells is not trivial. In the project's cell (models/rnn_arch.py) it is
``--num_blocks=3`` with two decisions fixed:

* node 0 reads ``x_t`` and ``h_{t-1}`` with ``tanh`` (fixed: Yu et al.'s node 0, the DARTS cell's
  fixed first step, is a tanh highway of the input and the previous state, as the ENAS node 0 is);
* node 1 reads node 0 (fixed) with one of {tanh, ReLU, sigmoid, identity};
* node 2 reads node 0 or node 1 with one of the same four;

so 4 x (2 x 4) = 32 cells. The controller's decision layout is the 3-node one with one-way choices
for the fixed ones ``[1, 1, 4, 2, 4]``, so every sampler works unchanged and a uniform sampler draws
every cell with probability 1/32. One difference from Yu et al.'s DARTS-style cell: the output here
is the project's (the mean of the loose ends: node 2 alone when it reads node 1, nodes 1 and 2 when
it reads node 0), theirs the mean of nodes 1 and 2 (docs/fidelity.md).

Every cell has a stable id ``c00`` ... ``c31``: its index in :func:`all_cells`, which enumerates
(activation of node 1, parent of node 2, activation of node 2) in that nesting order.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import replace
from typing import Any

import torch

from data.text import Corpus
from models import rnn_arch
from spaces import rnn
from spaces.base import SpacePlugin
from models.rnn_arch import RNNArch
from spaces.rnn import RNNSpace, RNNSpaceConfig

ACTIVATIONS = ("tanh", "ReLU", "sigmoid", "identity")  # node 0's (fixed) first
NUM_BLOCKS = 3
DECISION_SIZES = [1, 1, len(ACTIVATIONS), 2, len(ACTIVATIONS)]


def all_cells() -> list[RNNArch]:
    """The 32 cells, in id order."""
    return [rnn_arch.decode(list(tokens), list(ACTIVATIONS))
            for tokens in itertools.product(*(range(n) for n in DECISION_SIZES))]


def cell_id(arch: RNNArch) -> str:
    """``c00`` ... ``c31``; a ValueError for a cell outside the space."""
    try:
        return f"c{all_cells().index(arch):02d}"
    except ValueError:
        raise ValueError(f"cell {arch} is not in the 32-cell space (node 0 tanh, node 1 reads node 0, 3 nodes, "
                         f"activations {', '.join(ACTIVATIONS)})") from None


class RNN32Space(RNNSpace):
    """The ENAS recurrent space restricted to the 32 cells; data, losses and metrics are the RNN space's."""

    def __init__(self, corpus: Corpus, cfg: RNNSpaceConfig, device: torch.device) -> None:
        super().__init__(corpus, replace(cfg, num_blocks=NUM_BLOCKS, shared_rnn_activations=ACTIVATIONS), device)

    @property
    def decision_sizes(self) -> list[int]:
        return list(DECISION_SIZES)

    def arch_from_dict(self, d: dict[str, Any]) -> RNNArch:
        arch = RNNArch.from_dict(d)
        cell_id(arch)  # refuses a cell of the wider space
        return arch

    def cells(self) -> list[RNNArch]:
        return all_cells()


def from_options(args: argparse.Namespace, device: torch.device) -> RNNSpace:
    """The ranking benchmark's 32 cells on the ``--dataset`` corpus (``spaces.SPACES``' entry)."""
    return rnn.from_options(args, device, RNN32Space)


PLUGIN = SpacePlugin(build=from_options, retraining=rnn.RETRAINING)
