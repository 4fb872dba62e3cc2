"""The ENAS micro search space (Pham et al. 2018, section 2.3): one normal and one reduction cell.

A cell reads the outputs of the two previous cells (its inputs 0 and 1) and has ``num_blocks``
nodes. Node ``j`` picks two inputs among the cell inputs and the earlier nodes (indices below
``j + 2``, node ``j`` being index ``j + 2``) and one op for each, and joins the two results.
A reduction cell halves the resolution (the ops reading its inputs have stride 2) and doubles the
channels. The network is ``num_modules`` modules of ``num_repeat_normal`` normal cells with a
reduction cell between modules, then a linear classifier.

``CNNStyle`` holds every modelling choice where the paper's public code (kcyu2014/multi-model-forgetting,
models/shared_cnn.py and models/cnn_layers.py; the defaults) and ENAS (``CNNStyle.enas()``, this
project's model before the fidelity change) differ:

============  ======================================================  ========================================
choice        paper's code (default)                                  ENAS
============  ======================================================  ========================================
stem          none: the first two cells read the images               3x3 conv + BN to the first width
cell_inputs   ``ops``: the ops reading a cell input map its channels  ``calibrate``: a 1x1 conv (or factorized
              and resolution themselves (``models.cnn_ops``)          reduce) per input, then c -> c ops
depthwise     ``grouped``: one grouped conv + affine BN               ``separable``: depthwise + pointwise + BN
node_combine  ``avg``: a node averages its two inputs                 ``sum``
cell_output   ``last``: the last node                                 ``concat`` of the loose ends + 1x1 conv
classifier    ``flatten``: linear on the flattened final feature map  ``gap``: ReLU, global average pool, linear
============  ======================================================  ========================================

With ``cell_output="last"``, nodes the last node does not depend on contribute nothing: they are not
run (the paper's code runs them and discards them).

Weight sharing: every (cell, node, input, op) owns its op module, so every architecture is a
subset of one shared model and only the sampled ops run.

Batch norm always normalises with the statistics of the batch at hand, in eval mode too (no running
statistics), as ENAS's shared micro child does (it forces ``is_training=True`` while searching) and as
the paper's code does (``track_running_stats=False``). Running statistics would be shared state that
every sampled architecture overwrites: an op's statistics would describe whichever inputs it last saw,
evaluations would measure that staleness, and the forgetting metric would count drift that no weight
penalty can prevent.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.cnn_ops import DEPTHWISE, OPS, BatchStatsNorm, FactorizedReduce, batch_norm, cat_channels, make_op, relu_conv_bn

__all__ = ["OPS", "CNNArch", "CNNStyle", "Cell", "FactorizedReduce", "SharedCNN", "cat_channels", "live_nodes", "make_op"]

Node = tuple[tuple[int, str], tuple[int, str]]  # ((input_a, op_a), (input_b, op_b))
CellSpec = tuple[Node, ...]
CELL_TYPES = ("normal", "reduce")


def loose_ends(cell: CellSpec) -> list[int]:
    """Nodes that no later node reads: they form the cell's output."""
    read = {i for node in cell for i, _ in node}
    return [j for j in range(len(cell)) if j + 2 not in read]


@dataclass(frozen=True)
class CNNArch:
    """A normal and a reduction cell; node ``j`` of a cell is ``((input_a, op_a), (input_b, op_b))``."""

    normal: CellSpec
    reduce: CellSpec

    def __post_init__(self) -> None:
        if len(self.normal) != len(self.reduce) or not self.normal:
            raise ValueError(f"both cells need the same number (>= 1) of nodes, got {len(self.normal)} and {len(self.reduce)}")
        for kind, cell in self.cells().items():
            for j, node in enumerate(cell):
                if len(node) != 2:
                    raise ValueError(f"{kind} node {j} needs two (input, op) pairs, got {node!r}")
                for i, op in node:
                    if not 0 <= i < j + 2:
                        raise ValueError(f"{kind} node {j} cannot read input {i} (valid: 0..{j + 1})")
                    if op not in OPS:
                        raise ValueError(f"{kind} node {j}: unknown op {op!r}; known: {list(OPS)}")

    @property
    def num_blocks(self) -> int:
        return len(self.normal)

    def cells(self) -> dict[str, CellSpec]:
        return {"normal": self.normal, "reduce": self.reduce}

    def to_dict(self) -> dict[str, Any]:
        return {"type": "micro_cnn", **{kind: [[[i, op] for i, op in node] for node in cell] for kind, cell in self.cells().items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CNNArch:
        if d.get("type") != "micro_cnn":
            raise ValueError(f"not a micro-CNN architecture: type={d.get('type')!r}")
        cells = [tuple(tuple((int(i), str(op)) for i, op in node) for node in d[kind]) for kind in CELL_TYPES]
        return cls(*cells)  # type: ignore[arg-type]

    def __str__(self) -> str:
        def cell_str(cell: CellSpec) -> str:
            return " ".join(f"n{j}={a}({i})+{b}({k})" for j, ((i, a), (k, b)) in enumerate(cell))

        return f"normal: {cell_str(self.normal)} | reduce: {cell_str(self.reduce)}"


def decision_sizes(num_blocks: int, num_normal_ops: int, num_reduce_ops: int) -> list[int]:
    """Controller layout: normal then reduction cell; per node input_a, op_a, input_b, op_b."""
    return [size for num_ops in (num_normal_ops, num_reduce_ops) for j in range(num_blocks)
            for size in (j + 2, num_ops, j + 2, num_ops)]


def decode(tokens: Sequence[int], normal_ops: Sequence[str], reduce_ops: Sequence[str]) -> CNNArch:
    if len(tokens) % 8:
        raise ValueError(f"{len(tokens)} tokens are not whole nodes of two cells (4 tokens per node)")
    half = len(tokens) // 2
    cells = []
    for ops, part in ((normal_ops, tokens[:half]), (reduce_ops, tokens[half:])):
        cells.append(tuple(((int(part[k]), ops[part[k + 1]]), (int(part[k + 2]), ops[part[k + 3]]))
                           for k in range(0, len(part), 4)))
    return CNNArch(*cells)  # type: ignore[arg-type]


def encode(arch: CNNArch, normal_ops: Sequence[str], reduce_ops: Sequence[str]) -> list[int]:
    tokens: list[int] = []
    for ops, cell in ((normal_ops, arch.normal), (reduce_ops, arch.reduce)):
        index = {op: n for n, op in enumerate(ops)}
        for (i, a), (k, b) in cell:
            tokens += [i, index[a], k, index[b]]
    return tokens


@contextmanager
def batched(model: nn.Module, groups: int) -> Iterator[None]:
    """Within it, a forward of ``model`` (a ``SharedCNN``, pruned, averaged or wrapped) takes its images as
    ``groups`` equal batches, each normalised with its own statistics (``BatchStatsNorm``): the logits
    are those of the batches run one by one."""
    norms = [m for m in model.modules() if isinstance(m, BatchStatsNorm)]
    for m in norms:
        m.groups = groups
    try:
        yield
    finally:
        for m in norms:
            m.groups = 1


def live_nodes(cell: CellSpec, output: str) -> list[int]:
    """The nodes a cell's output depends on: all of them, or with ``output="last"`` the last node's ancestors."""
    if output != "last":
        return list(range(len(cell)))  # every node is a loose end or read by a later node
    live, todo = set(), [len(cell) - 1]
    while todo:
        j = todo.pop()
        if j not in live:
            live.add(j)
            todo += [i - 2 for i, _ in cell[j] if i >= 2]
    return sorted(live)


@dataclass(frozen=True)
class CNNStyle:
    """The modelling choices of the module docstring's table; the defaults are the paper code's."""

    stem: bool = False
    cell_inputs: str = "ops"
    depthwise: str = "grouped"
    node_combine: str = "avg"
    cell_output: str = "last"
    classifier: str = "flatten"

    def __post_init__(self) -> None:
        for name, allowed in (("cell_inputs", ("ops", "calibrate")), ("depthwise", DEPTHWISE),
                              ("node_combine", ("avg", "sum")), ("cell_output", ("last", "concat", "avg")),
                              ("classifier", ("flatten", "gap"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"cell style {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    @classmethod
    def enas(cls, **changes: Any) -> CNNStyle:
        """ENAS's choices (this project's model before the fidelity change), with ``changes`` applied."""
        return replace(cls(stem=True, cell_inputs="calibrate", depthwise="separable", node_combine="sum",
                           cell_output="concat", classifier="gap"), **changes)


class Cell(nn.Module):
    """Every op of every (node, input) of one cell position; ``forward`` runs one cell spec."""

    def __init__(self, num_blocks: int, c_pp: int, c_p: int, channels: int, *, reduction: bool,
                 input0_reduced: bool, ops: Sequence[str], style: CNNStyle = CNNStyle()) -> None:
        super().__init__()
        self.reduction, self.style, self.output, self.channels = reduction, style, style.cell_output, channels
        adapt = style.cell_inputs == "ops"
        if adapt:
            if reduction and input0_reduced:
                raise ValueError("a reduction cell cannot read an input of twice the resolution of its other input")
            self.pre0: nn.Module = nn.Identity()  # the ops reading the inputs map their channels and resolution
            self.pre1: nn.Module = nn.Identity()
            widths, strides = (c_pp, c_p), (2 if reduction or input0_reduced else 1, 2 if reduction else 1)
        else:
            if input0_reduced:
                self.pre0 = FactorizedReduce(c_pp, channels, affine=True)
            else:
                self.pre0 = relu_conv_bn(c_pp, channels) if c_pp != channels else nn.Identity()
            self.pre1 = relu_conv_bn(c_p, channels) if c_p != channels else nn.Identity()
            widths, strides = (channels, channels), (2 if reduction else 1,) * 2

        def op(name: str, i: int) -> nn.Module:
            c_in, stride = (widths[i], strides[i]) if i < 2 else (channels, 1)
            return make_op(name, c_in, channels, stride, depthwise=style.depthwise, adapt=adapt)

        # nodes[j][i][op]: the op of node j applied to input i
        self.nodes = nn.ModuleList(nn.ModuleList(nn.ModuleDict({name: op(name, i) for name in ops}) for i in range(j + 2))
                                   for j in range(num_blocks))
        if style.cell_output == "concat":
            # One 1x1 projection over all nodes; a cell uses the input columns of its loose ends (ENAS).
            self.project = nn.Parameter(torch.empty(channels, num_blocks * channels, 1, 1))
            nn.init.kaiming_uniform_(self.project, a=math.sqrt(5))
            self.project_bn = batch_norm(channels, affine=True)

    def forward(self, s0: Tensor, s1: Tensor, cell: CellSpec) -> Tensor:
        live = live_nodes(cell, self.output)
        read = {i for j in live for i, _ in cell[j]}
        states: list[Tensor | None] = [self.pre0(s0) if 0 in read else None, self.pre1(s1) if 1 in read else None]
        average = self.style.node_combine == "avg"
        for j, ((ia, oa), (ib, ob)) in enumerate(cell):
            if j not in live:
                states.append(None)
                continue
            first = self.nodes[j][ia][oa](states[ia])
            if (ia, oa) == (ib, ob):  # the same module on the same tensor: run it once
                states.append(first if average else 2 * first)
            else:
                both = first + self.nodes[j][ib][ob](states[ib])
                states.append(both * 0.5 if average else both)
        if self.output == "last":
            return states[-1]  # type: ignore[return-value]
        loose = loose_ends(cell)
        outs = [states[j + 2] for j in loose]
        if self.output == "avg":
            return outs[0] if len(outs) == 1 else torch.stack(outs).mean(0)  # type: ignore[arg-type,return-value]
        c = self.channels
        weight = self.project.view(c, -1, c)[:, loose].reshape(c, len(loose) * c, 1, 1)
        return self.project_bn(F.conv2d(F.relu(cat_channels(outs)), weight))  # type: ignore[arg-type]


class SharedCNN(nn.Module):
    """(Stem,) modules of normal cells with reduction cells between them, and the classifier."""

    def __init__(self, in_channels: int, num_classes: int, num_blocks: int, final_channels: int, num_modules: int,
                 num_repeat_normal: int, normal_ops: Sequence[str], reduce_ops: Sequence[str], style: CNNStyle = CNNStyle(),
                 *, image_size: tuple[int, int] = (32, 32), channels_last: bool = False) -> None:
        super().__init__()
        if min(num_blocks, num_modules, num_repeat_normal) < 1:
            raise ValueError("num_blocks, num_modules and num_repeat_normal must be >= 1")
        scale = 2 ** (num_modules - 1)
        if final_channels % scale or final_channels < scale:
            raise ValueError(f"final channels {final_channels} must be a multiple of 2^(modules - 1) = {scale}")
        unknown = sorted((set(normal_ops) | set(reduce_ops)) - set(OPS))
        if unknown:
            raise ValueError(f"unknown ops {unknown}; known: {list(OPS)}")
        self.num_blocks, self.style = num_blocks, style
        c = final_channels // scale
        if style.stem:
            self.stem: nn.Module = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False), batch_norm(c, affine=True))
            c_pp = c_p = c
        else:  # the first two cells read the images themselves (the paper's code)
            self.stem = nn.Identity()
            c_pp = c_p = in_channels
        self.cells = nn.ModuleList()
        height, width = image_size
        input0_reduced = False
        for module in range(num_modules):
            kinds = ([True] if module > 0 else []) + [False] * num_repeat_normal
            for reduction in kinds:
                if reduction:
                    c, height, width = c * 2, (height + 1) // 2, (width + 1) // 2  # every stride-2 op rounds up
                self.cells.append(Cell(num_blocks, c_pp, c_p, c, reduction=reduction, input0_reduced=input0_reduced,
                                       ops=reduce_ops if reduction else normal_ops, style=style))
                c_pp, c_p, input0_reduced = c_p, c, reduction
        features = c * height * width if style.classifier == "flatten" else c
        self.classifier = nn.Linear(features, num_classes)
        self._grouped = set(self.op_groups())
        # Channels-last: the CPU's (oneDNN's) depthwise and 1x1 convolutions, batch norms and pooling
        # run faster on NHWC tensors; images are converted on the way in, every layer keeps the layout.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    @staticmethod
    def group_name(cell: int, node: int, inp: int, op: str) -> str:
        return f"cell{cell}.node{node}.in{inp}.{op}"

    def op_groups(self) -> dict[str, list[nn.Parameter]]:
        """WPL parameter groups: one per op module that has parameters (pooling and identity have none)."""
        groups = {}
        for c, cell in enumerate(self.cells):
            for j, node in enumerate(cell.nodes):
                for i, ops in enumerate(node):
                    for op, module in ops.items():
                        params = list(module.parameters())
                        if params:
                            groups[self.group_name(c, j, i, op)] = params
        return groups

    def groups_for(self, arch: CNNArch) -> list[str]:
        """The groups of the parameterised ops ``arch`` runs, cell by cell."""
        names = []
        for c, cell in enumerate(self.cells):
            spec = arch.reduce if cell.reduction else arch.normal
            names += [self.group_name(c, j, i, op) for j in live_nodes(spec, cell.output) for i, op in spec[j]]
        return [name for name in dict.fromkeys(names) if name in self._grouped]

    def prune_to(self, arch: CNNArch) -> SharedCNN:
        """Delete, in place, every op ``arch`` never runs, and return ``self`` (final training).

        Ops of nodes the cell output does not depend on go too (with output ``last``), and so does the
        calibration of a cell input nobody reads. The rest keeps its names, so the pruned model computes
        ``arch`` with this same forward and its state_dict is the shared one restricted to ``arch``.
        """
        for cell in self.cells:
            spec = arch.reduce if cell.reduction else arch.normal
            live = live_nodes(spec, cell.output)
            for j, node in enumerate(spec):
                for i, ops in enumerate(cell.nodes[j]):
                    for op in [op for op in ops if (i, op) not in node or j not in live]:
                        del ops[op]
            read = {i for j in live for i, _ in spec[j]}
            if 0 not in read:  # a cell input nobody reads is never calibrated
                cell.pre0 = nn.Identity()
            if 1 not in read:
                cell.pre1 = nn.Identity()
        self._grouped = set(self.op_groups())
        return self

    def count_parameters(self, arch: CNNArch) -> int:
        """Parameters of this model that ``arch``'s inference uses, once pruned to it: all of them but the
        concat projection's columns of nodes that are not cell outputs (they are sliced away)."""
        total = sum(p.numel() for p in self.parameters())
        for cell in self.cells:
            spec = arch.reduce if cell.reduction else arch.normal
            if cell.output == "concat":
                total -= cell.channels**2 * (len(spec) - len(loose_ends(spec)))
        return total

    def forward(self, images: Tensor, arch: CNNArch) -> Tensor:
        """Logits of ``arch`` for ``images`` (N, C, H, W); only the sampled ops run."""
        if arch.num_blocks != self.num_blocks:
            raise ValueError(f"architecture has {arch.num_blocks} nodes per cell, the shared model {self.num_blocks}")
        s0 = s1 = self.stem(images.contiguous(memory_format=self.memory_format))
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, arch.reduce if cell.reduction else arch.normal)
        if self.style.classifier == "flatten":
            return self.classifier(s1.flatten(1))
        return self.classifier(F.adaptive_avg_pool2d(F.relu(s1), 1).flatten(1))
