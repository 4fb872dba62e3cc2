"""The ENAS micro search space (Pham et al. 2018, section 2.3): one normal and one reduction cell.

A cell reads the outputs of the two previous cells (its inputs 0 and 1) and has ``num_blocks``
nodes. Node ``j`` picks two inputs among the cell inputs and the earlier nodes (indices below
``j + 2``, node ``j`` being index ``j + 2``) and one op for each, and sums the two results. The nodes
no other node reads (the loose ends) form the cell's output: concatenated and projected back to the
cell's width by a 1x1 convolution (ENAS, the default), or averaged.

A reduction cell halves the resolution (the ops reading its inputs have stride 2) and doubles the
channels. Inputs are calibrated only when they do not fit: a 1x1 convolution when the channels
differ, a factorized reduce when input 0 comes from before a reduction (twice the resolution).

The network is a stem convolution, ``num_modules`` modules of ``num_repeat_normal`` normal cells
with a reduction cell between modules, ReLU, global average pooling and a linear classifier.

Weight sharing: every (cell, node, input, op) owns its op module, so every architecture is a
subset of one shared model and only the sampled ops run.

Batch norm always normalises with the statistics of the batch at hand, in eval mode too (no running
statistics), as ENAS's shared micro child does (it forces ``is_training=True`` while searching). Running
statistics would be shared state that every sampled architecture overwrites: an op's statistics
would describe whichever inputs it last saw, evaluations would measure that staleness, and the
forgetting metric would count drift that no weight penalty can prevent. Batch norms inside the searched ops have no affine parameters (as in
ENAS/DARTS searches: an op's parameters are its convolutions); the always-used stem, calibrations and
output projections keep affine batch norms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Node = tuple[tuple[int, str], tuple[int, str]]  # ((input_a, op_a), (input_b, op_b))
CellSpec = tuple[Node, ...]
CELL_TYPES = ("normal", "reduce")


def batch_norm(channels: int, affine: bool) -> nn.BatchNorm2d:
    """Batch norm on batch statistics only (see the module docstring)."""
    return nn.BatchNorm2d(channels, affine=affine, track_running_stats=False)


class _ChannelCat(torch.autograd.Function):
    """``torch.cat`` along channels whose backward hands every input a dense gradient.

    Autograd's own cat backward passes each input a channel slice of the output's gradient: a
    strided view that the batch norms behind it take a slow path for (on the CPU, in channels-last,
    their backward is 6-10x slower than on a dense gradient). One copy per input is much cheaper.
    """

    @staticmethod
    def forward(ctx: Any, *tensors: Tensor) -> Tensor:
        ctx.sizes = [t.size(1) for t in tensors]
        return torch.cat(tensors, 1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, ...]:
        layout = torch.channels_last if grad.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return tuple(g.contiguous(memory_format=layout) for g in grad.split(ctx.sizes, 1))


def cat_channels(tensors: Sequence[Tensor]) -> Tensor:
    return _ChannelCat.apply(*tensors)


class FactorizedReduce(nn.Module):
    """Halve the resolution without skipping pixels: two stride-2 1x1 convs, one shifted by a pixel.

    Both are written as a subsample followed by a stride-1 1x1 conv (the same function and the same
    parameters): oneDNN's weight gradient of a strided 1x1 conv in channels-last layout corrupts the heap
    on AVX2-only CPUs (torch 2.14.1), and the subsample reads the pixels without a padded copy anyway.
    """

    def __init__(self, c_in: int, c_out: int, affine: bool = False) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(c_in, c_out // 2, 1, bias=False)  # reads the even pixels
        self.conv_b = nn.Conv2d(c_in, c_out - c_out // 2, 1, bias=False)  # reads the odd pixels (below)
        self.bn = batch_norm(c_out, affine)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        a = self.conv_a(x[:, :, ::2, ::2])  # pixels (2i, 2j)
        # Pixels (2i + 1, 2j + 1): a stride-2 conv of x shifted by one pixel, zero-padded at the end
        # when a side is odd. Subsampling first reads the same pixels without a padded copy of x
        # (whose backward is a strided gradient several times slower to work with).
        b = self.conv_b(x[:, :, 1::2, 1::2])
        if b.shape[-2:] != a.shape[-2:]:
            b = F.pad(b, (0, a.size(-1) - b.size(-1), 0, a.size(-2) - b.size(-2)))
        return self.bn(cat_channels([a, b]))


def relu_conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    """Channel calibration of a cell input: ReLU, 1x1 conv, batch norm."""
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False), batch_norm(c_out, affine=True))


def depthwise(channels: int, kernel: int, stride: int) -> nn.Sequential:
    """The paper code's ``depthwise_KxK``: ReLU, depthwise KxK conv, pointwise 1x1 conv, batch norm."""
    return nn.Sequential(
        nn.ReLU(),
        nn.Conv2d(channels, channels, kernel, stride=stride, padding=kernel // 2, groups=channels, bias=False),
        nn.Conv2d(channels, channels, 1, bias=False),
        batch_norm(channels, affine=False),
    )


def sep_conv(channels: int, kernel: int, stride: int) -> nn.Sequential:
    """ENAS's separable convolution: the depthwise unit twice (only the first one strided)."""
    return nn.Sequential(depthwise(channels, kernel, stride), depthwise(channels, kernel, 1))


# Every op maps (channels, stride) to a module from ``channels`` to ``channels`` channels.
OPS: dict[str, Callable[[int, int], nn.Module]] = {
    "identity": lambda c, s: nn.Identity() if s == 1 else FactorizedReduce(c, c),
    "avg3x3": lambda c, s: nn.AvgPool2d(3, stride=s, padding=1, count_include_pad=False),
    "max3x3": lambda c, s: nn.MaxPool2d(3, stride=s, padding=1),
    "depthwise_3x3": lambda c, s: depthwise(c, 3, s),
    "depthwise_5x5": lambda c, s: depthwise(c, 5, s),
    "sep_conv_3x3": lambda c, s: sep_conv(c, 3, s),
    "sep_conv_5x5": lambda c, s: sep_conv(c, 5, s),
}


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
    def from_dict(cls, d: dict[str, Any]) -> "CNNArch":
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


class Cell(nn.Module):
    """Every op of every (node, input) of one cell position; ``forward`` runs one cell spec."""

    def __init__(self, num_blocks: int, c_pp: int, c_p: int, channels: int, *, reduction: bool,
                 input0_reduced: bool, ops: Sequence[str], output: str) -> None:
        super().__init__()
        if output not in ("concat", "avg"):
            raise ValueError(f"cell output must be 'concat' or 'avg', got {output!r}")
        self.reduction, self.output, self.channels = reduction, output, channels
        if input0_reduced:
            self.pre0: nn.Module = FactorizedReduce(c_pp, channels, affine=True)
        else:
            self.pre0 = relu_conv_bn(c_pp, channels) if c_pp != channels else nn.Identity()
        self.pre1 = relu_conv_bn(c_p, channels) if c_p != channels else nn.Identity()
        # nodes[j][i][op]: the op of node j applied to input i (stride 2 on a reduction cell's inputs)
        self.nodes = nn.ModuleList(
            nn.ModuleList(nn.ModuleDict({op: OPS[op](channels, 2 if reduction and i < 2 else 1) for op in ops})
                          for i in range(j + 2))
            for j in range(num_blocks))
        if output == "concat":
            # One 1x1 projection over all nodes; a cell uses the input columns of its loose ends (ENAS).
            self.project = nn.Parameter(torch.empty(channels, num_blocks * channels, 1, 1))
            nn.init.kaiming_uniform_(self.project, a=math.sqrt(5))
            self.project_bn = batch_norm(channels, affine=True)

    def forward(self, s0: Tensor, s1: Tensor, cell: CellSpec) -> Tensor:
        read = {i for node in cell for i, _ in node}
        states: list[Tensor | None] = [self.pre0(s0) if 0 in read else None, self.pre1(s1) if 1 in read else None]
        for j, ((ia, oa), (ib, ob)) in enumerate(cell):
            first = self.nodes[j][ia][oa](states[ia])
            # the same (input, op) twice is the same module on the same tensor: run it once
            states.append(2 * first if (ia, oa) == (ib, ob) else first + self.nodes[j][ib][ob](states[ib]))
        loose = loose_ends(cell)
        outs = [states[j + 2] for j in loose]
        if self.output == "avg":
            return outs[0] if len(outs) == 1 else torch.stack(outs).mean(0)
        c = self.channels
        weight = self.project.view(c, -1, c)[:, loose].reshape(c, len(loose) * c, 1, 1)
        return self.project_bn(F.conv2d(F.relu(cat_channels(outs)), weight))


class SharedCNN(nn.Module):
    """Stem, modules of normal cells with reduction cells between them, pooling and classifier."""

    def __init__(self, in_channels: int, num_classes: int, num_blocks: int, final_channels: int, num_modules: int,
                 num_repeat_normal: int, normal_ops: Sequence[str], reduce_ops: Sequence[str], cell_output: str = "concat",
                 *, channels_last: bool = False) -> None:
        super().__init__()
        if min(num_blocks, num_modules, num_repeat_normal) < 1:
            raise ValueError("num_blocks, num_modules and num_repeat_normal must be >= 1")
        scale = 2 ** (num_modules - 1)
        if final_channels % scale or final_channels < scale:
            raise ValueError(f"final channels {final_channels} must be a multiple of 2^(modules - 1) = {scale}")
        unknown = sorted((set(normal_ops) | set(reduce_ops)) - set(OPS))
        if unknown:
            raise ValueError(f"unknown ops {unknown}; known: {list(OPS)}")
        self.num_blocks = num_blocks
        c = final_channels // scale
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False), batch_norm(c, affine=True))
        self.cells = nn.ModuleList()
        c_pp, c_p, input0_reduced = c, c, False
        for module in range(num_modules):
            kinds = ([True] if module > 0 else []) + [False] * num_repeat_normal
            for reduction in kinds:
                c = c * 2 if reduction else c
                self.cells.append(Cell(num_blocks, c_pp, c_p, c, reduction=reduction, input0_reduced=input0_reduced,
                                       ops=reduce_ops if reduction else normal_ops, output=cell_output))
                c_pp, c_p, input0_reduced = c_p, c, reduction
        self.classifier = nn.Linear(c, num_classes)
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
        names = (self.group_name(c, j, i, op) for c, cell in enumerate(self.cells)
                 for j, node in enumerate(arch.reduce if cell.reduction else arch.normal) for i, op in node)
        return [name for name in dict.fromkeys(names) if name in self._grouped]

    def forward(self, images: Tensor, arch: CNNArch) -> Tensor:
        """Logits of ``arch`` for ``images`` (N, C, H, W); only the sampled ops run."""
        if arch.num_blocks != self.num_blocks:
            raise ValueError(f"architecture has {arch.num_blocks} nodes per cell, the shared model {self.num_blocks}")
        s0 = s1 = self.stem(images.contiguous(memory_format=self.memory_format))
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, arch.reduce if cell.reduction else arch.normal)
        return self.classifier(F.adaptive_avg_pool2d(F.relu(s1), 1).flatten(1))
