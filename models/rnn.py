"""The shared recurrent model: every edge of every cell, dropouts, output normalisation, decoder.

The cell itself (fused kernel and plain reference) is in ``models.rnn_cell``, the architecture
codec in ``models.rnn_arch``. Defaults follow the paper's public code (DropConnect on node 0's
hidden-to-hidden weights only, a batch norm on the cell output at every time step, biased input
projections, the last node carried to the next step); ``docs/fidelity.md`` lists each choice with
the ENAS paper's alternative and the option that selects it.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.rnn_arch import RNNArch
from models.rnn_cell import EAGER, CompiledKernels, Plan, run_cell
from models.rnn_graph import ArchTensors, CellGraphs, arch_tensors, run_graphed
from models.rnn_graph_fused import FusedNodes

WDROP_SCOPES = ("node0", "all")
OUTPUT_NORMS = ("batchnorm", "none")
NEXT_STATES = ("last", "avg")


def keep_mask(like: Tensor, shape: Sequence[int], p: float) -> Tensor:
    """A dropout mask: ``1 / (1 - p)`` with probability ``1 - p``, else 0 (``like``'s dtype and device).

    Drawn as ``rand >= p``, the distribution of ``F.dropout``'s ``bernoulli_``: on the CPU that one is
    single-threaded and about 4x slower, and the DropConnect masks (24M entries per batch at paper
    size) cost a tenth of a training step with it.
    """
    return like.new_empty(shape).uniform_().ge_(p).mul_(1.0 / (1.0 - p))


def embedded_dropout(embed: nn.Embedding, words: Tensor, p: float) -> Tensor:
    """Drop whole word types (rows of the embedding), rescaling the rest (Gal & Ghahramani).

    Row ``w`` of the masked table is ``weight[w] * mask[w]``, so the rows are masked after the lookup
    instead of masking the whole (vocabulary x embed) table first: same values, same random draws.
    """
    if p == 0:
        return embed(words)
    mask = keep_mask(embed.weight, (embed.weight.size(0), 1), p)
    return F.embedding(words, embed.weight) * F.embedding(words, mask)


def drop_connect(w: Tensor, p: float) -> Tensor:
    """DropConnect on a weight matrix (``wdrop``): every entry kept with probability ``1 - p``, rescaled."""
    return w if p == 0 else w * keep_mask(w, w.shape, p)


def locked_dropout(x: Tensor, p: float) -> Tensor:
    """Dropout with one mask per sequence, shared by every time step. ``x`` is (time, batch, dim)."""
    if p == 0:
        return x
    return x * keep_mask(x, (1, x.size(1), x.size(2)), p)


class StepBatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` applied to every time step of a (time, batch, hid) sequence in turn.

    The paper's code normalises the cell output of each time step with one ``BatchNorm1d``: in
    training mode every step uses its own batch statistics and moves the running statistics once.
    Here all steps are normalised in one call (per-(step, unit) statistics over the batch) and the
    running statistics take the closed form of the same ``T`` sequential updates::

        r_T = (1 - m)^T r_0 + sum_t m (1 - m)^(T - 1 - t) s_t

    so the values equal a per-step loop (a test pins it) without ``T`` small kernels.
    """

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        steps, batch, hid = x.shape
        if not self.training:
            return F.batch_norm(x.reshape(steps * batch, hid), self.running_mean, self.running_var,
                                self.weight, self.bias, False, 0.0, self.eps).view(steps, batch, hid)
        if batch < 2:
            raise ValueError("the output batch norm needs at least 2 sequences per batch in training mode")
        flat = x.transpose(0, 1).reshape(batch, steps * hid)  # one "feature" per (step, unit)
        y = F.batch_norm(flat, None, None, self.weight.repeat(steps), self.bias.repeat(steps), True, 0.0, self.eps)
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            decay = (1 - m) ** torch.arange(steps - 1, -1, -1, dtype=x.dtype, device=x.device)  # (1-m)^(T-1-t)
            mean = x.detach().mean(1)  # (time, hid)
            var = x.detach().var(1, unbiased=True)
            keep = (1 - m) ** steps
            self.running_mean.mul_(keep).add_(m * (decay[:, None] * mean).sum(0))
            self.running_var.mul_(keep).add_(m * (decay[:, None] * var).sum(0))
            self.num_batches_tracked.add_(steps)
        return y.view(batch, steps, hid).transpose(0, 1)


class RNNOutput(NamedTuple):
    logits: Tensor  # (time, batch, ntokens)
    hidden: Tensor  # (batch, hid): state for the next slice
    raw: Tensor  # (time, batch, hid): cell outputs before dropout (for TAR)
    dropped: Tensor  # (time, batch, hid): cell outputs after dropout (for AR)


class SharedRNN(nn.Module):
    """Every edge of every possible cell, plus the embedding and (tied) decoder they share.

    ``wdrop_scope`` says which weights DropConnect touches: ``node0`` (the paper's code) drops node 0's
    hidden-to-hidden weights ``W_hc``/``W_hh`` only; ``all`` drops those and every edge's weights.
    ``output_norm="batchnorm"`` normalises the cell output at every time step (``StepBatchNorm``);
    ``input_bias`` gives node 0's input projections a bias; ``next_state`` is the state carried to
    the next time step (``last`` node, or ``avg`` of the loose ends). The module tree depends only on
    these arguments (never on the run mode), so a checkpoint loads in every mode.

    ``fused`` (default True) runs the unrolled cell as one autograd node; False runs the plain
    step-by-step autograd formulation, which computes the same function. ``enable_compile()`` routes
    the cell's elementwise work through ``torch.compile`` (``--compile``). ``enable_cuda_graphs()``
    runs the cell on a CUDA device as captured graphs with the architecture as data
    (``models.rnn_graph``, ``--cuda_graphs``); it then takes the place of the compiled kernels there.
    """

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
        next_state: str = "last",
        wdrop_scope: str = "node0",
        output_norm: str = "batchnorm",
        input_bias: bool = True,
    ) -> None:
        super().__init__()
        if tie_weights and embed != hid:
            raise ValueError(f"tie_weights needs shared_embed == shared_hid (got {embed} and {hid})")
        for name, value, allowed in (("next_state", next_state, NEXT_STATES), ("wdrop_scope", wdrop_scope, WDROP_SCOPES),
                                     ("output_norm", output_norm, OUTPUT_NORMS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        self.hid = hid
        self.num_blocks = num_blocks
        self.dropout, self.dropoute, self.dropouti, self.wdrop = dropout, dropoute, dropouti, wdrop
        self.next_state, self.wdrop_scope = next_state, wdrop_scope
        self.fused = True
        self._kernels: Any = EAGER
        self._plans: dict[RNNArch, Plan] = {}
        self.cuda_graphs: CellGraphs | None = None
        self.fused_nodes: FusedNodes | None = None
        self._arch_data: dict[tuple[RNNArch, torch.device], ArchTensors] = {}
        self.encoder = nn.Embedding(ntokens, embed)
        # Node 0: rows [0, hid) produce c_0, rows [hid, 2 hid) the candidate h_0.
        self.w_x0 = nn.Parameter(torch.empty(2 * hid, embed))
        self.b_x0 = nn.Parameter(torch.empty(2 * hid)) if input_bias else None
        self.w_h0 = nn.Parameter(torch.empty(2 * hid, hid))
        self.edges = nn.ModuleDict()
        for j in range(1, num_blocks):
            for i in range(j):
                edge = nn.Module()
                edge.w_c = nn.Parameter(torch.empty(hid, hid))
                edge.w_h = nn.Parameter(torch.empty(hid, hid))
                self.edges[self.edge_name(i, j)] = edge
        self.output_norm = StepBatchNorm(hid) if output_norm == "batchnorm" else None
        self.decoder = nn.Linear(hid, ntokens)
        # Every parameter, the batch norm's scale and shift included, from U(-0.025, 0.025) (the
        # paper's code and ENAS): the output norm starts close to zero, so early logits are small.
        for p in self.parameters():
            nn.init.uniform_(p, -0.025, 0.025)
        nn.init.zeros_(self.decoder.bias)  # as the paper's code
        if tie_weights:
            self.decoder.weight = self.encoder.weight

    @staticmethod
    def edge_name(i: int, j: int) -> str:
        return f"{i}_{j}"

    def edge_groups(self) -> dict[str, list[nn.Parameter]]:
        """WPL parameter groups: one per edge, holding its ``W^c`` and ``W^h``."""
        return {name: [edge.w_c, edge.w_h] for name, edge in self.edges.items()}

    def prune_to(self, arch: RNNArch) -> SharedRNN:
        """Delete, in place, every edge ``arch`` never runs, and return ``self`` (final training).

        The remaining parameters keep their names, so the pruned model computes ``arch`` with this
        same forward and its state_dict is the shared one restricted to ``arch``: shared weights
        transfer by name (``spaces.base.load_shared_weights``).
        """
        used = {self.edge_name(i, j) for i, j in arch.edges}
        for name in [n for n in self.edges if n not in used]:
            del self.edges[name]
        return self

    def count_parameters(self, arch: RNNArch) -> int:
        """Parameters ``arch`` computes with (tied weights once): all but the edges it does not run."""
        used = {self.edge_name(i, j) for i, j in arch.edges}
        unused = sum(p.numel() for name, edge in self.edges.items() if name not in used for p in edge.parameters())
        return sum(p.numel() for p in self.parameters()) - unused

    def init_hidden(self, batch_size: int) -> Tensor:
        return self.w_h0.new_zeros(batch_size, self.hid)

    def enable_compile(self, **compile_options: Any) -> None:
        """Run the cell's per-node elementwise work through ``torch.compile`` (compiled on first use;
        ``compile_options`` go to ``torch.compile``, e.g. ``backend="eager"`` to check the tracing only)."""
        self._kernels = CompiledKernels(**compile_options)

    def enable_cuda_graphs(self, limit: int = 8, fuse: bool = False) -> CellGraphs:
        """On a CUDA device, run the cell as CUDA graphs (one capture per shape, ``limit`` kept); ``fuse``:
        each node's elementwise work in them as one compiled kernel (``models.rnn_graph_fused``)."""
        self.cuda_graphs = CellGraphs(limit)
        self.fused_nodes = FusedNodes() if fuse else None
        return self.cuda_graphs

    def _arch_tensors(self, arch: RNNArch, device: torch.device) -> ArchTensors:
        data = self._arch_data.get((arch, device))
        if data is None:
            if len(self._arch_data) > 4096:
                self._arch_data.clear()
            cpu = arch_tensors(self._plan(arch))
            data = self._arch_data[(arch, device)] = ArchTensors(*(t.to(device) for t in cpu))
        return data

    def _plan(self, arch: RNNArch) -> Plan:
        plan = self._plans.get(arch)
        if plan is None:
            if len(self._plans) > 4096:
                self._plans.clear()
            plan = self._plans[arch] = Plan(arch, self.next_state)
        return plan

    def forward(self, inputs: Tensor, hidden: Tensor, arch: RNNArch) -> RNNOutput:
        """Run ``arch`` over ``inputs`` (time, batch) from ``hidden`` (batch, hid)."""
        if arch.num_nodes != self.num_blocks:
            raise ValueError(f"architecture has {arch.num_nodes} nodes, the shared model {self.num_blocks}")
        training = self.training
        wdrop = self.wdrop if training else 0.0
        emb = embedded_dropout(self.encoder, inputs, self.dropoute if training else 0.0)
        emb = locked_dropout(emb, self.dropouti if training else 0.0)
        x_proj = F.linear(emb, self.w_x0, self.b_x0)  # node 0's input projections for all time steps at once
        w_h0 = drop_connect(self.w_h0, wdrop)
        # One fused (2 hid, hid) matrix per used edge: a single matmul gives both c_j and h_j inputs.
        edges = [self.edges[self.edge_name(i, j)] for i, j in arch.edges]
        edge_drop = wdrop if self.wdrop_scope == "all" else 0.0
        w_edges = [drop_connect(torch.cat([edge.w_c, edge.w_h]), edge_drop) for edge in edges]
        plan = self._plan(arch)
        with torch.profiler.record_function("SharedRNN.cell"):  # benchmarks count the cell's operators by it
            if self.cuda_graphs is not None and self.fused and x_proj.is_cuda:
                raw, hidden = run_graphed(self.cuda_graphs, plan, self._arch_tensors(arch, x_proj.device), x_proj,
                                          hidden, w_h0, w_edges, self.fused_nodes)
            else:
                raw, hidden = run_cell(plan, self._kernels, self.fused, x_proj, hidden, w_h0, w_edges)
        if self.output_norm is not None:
            raw = self.output_norm(raw)
        dropped = locked_dropout(raw, self.dropout if training else 0.0)
        return RNNOutput(self.decoder(dropped), hidden, raw, dropped)
