"""The unrolled cell with the architecture as data, replayed as one CUDA graph per shape.

Why: on a GPU the eager unrolled cell (``models.rnn_cell``) is launch-bound. At paper size (12 nodes,
BPTT 35) one training batch launches about 7,400 kernels whose work adds up to a few percent of the
step: the GPU waits for Python. A CUDA graph replays a captured sequence of kernels for the cost of
one launch, but only a fixed sequence, and every batch of the search runs another architecture.
So here the architecture is data, not control flow:

* node ``j`` reads its parent's state with ``index_select`` on a (nodes, batch, hid) buffer, the
  parent index being a device tensor;
* its activation is one ``index_select`` from a scratch buffer where the matmul wrote its input and
  the three other candidates sit beside it (each computed by the same kernel as the eager cell, so
  the selected values are bit for bit the eager ones); the backward picks the derivative the same way;
* the loose ends are averaged with a 0/1 mask over the nodes, and in the backward each node gathers
  its children's gradients and its share of the output's with one (1 x n+1) @ (n+1 x batch*hid)
  product over a 0/1 matrix;
* the weights of every node are stacked into one (n, 2 hid, hid) tensor.

The same kernels then serve every sampled cell of a given shape (time steps, batch, width, nodes,
dtypes), and ``CellGraphs`` captures each of the three passes (inference, training forward,
backward) once per shape. Without a GPU the same functions run eagerly (the tests compare them
with the eager cell on the CPU); there the eager cell is faster and stays the default.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from models.rnn_cell import Plan, _clip_scale, _mm, clip_backward

if TYPE_CHECKING:
    from models.rnn_graph_fused import FusedNodes

ACT_ORDER = ("tanh", "sigmoid", "ReLU", "identity")
# Where each activation's value sits in the forward's per-node scratch (batch, 6, hid): the matmul's two
# halves (gate input, then the activation input ``a``: the identity's value), their sigmoids (the
# gate, sigmoid(a): one kernel), tanh(a), relu(a); and its derivative in the backward's scratch
# (batch, 4, hid): the identity's (the incoming gradient), then tanh's, sigmoid's, relu's.
FORWARD_SLOT = {"tanh": 4, "sigmoid": 3, "ReLU": 5, "identity": 1}
BACKWARD_SLOT = {"tanh": 1, "sigmoid": 2, "ReLU": 3, "identity": 0}


class ArchTensors(NamedTuple):
    """An architecture as tensors (all on the CPU until copied into a graph's inputs)."""

    parent: Tensor  # (n,) int64: each node's parent (node 0: 0, unused; it reads the previous state)
    fwd_slot: Tensor  # (n,) int64: where node j's activation value sits in the forward's scratch
    bwd_slot: Tensor  # (n,) int64: where its derivative times the gradient sits in the backward's
    loose: Tensor  # (n,) float: 1 on the loose ends
    inv_k: Tensor  # () float: 1 / number of loose ends
    child: Tensor  # (n, n + 1) float: child[p, c] = 1 where node c reads node p; child[p, n] = loose[p]


def arch_tensors(plan: Plan) -> ArchTensors:
    n = plan.n
    parent = torch.tensor([max(p, 0) for p in plan.parents], dtype=torch.int64)
    fwd = torch.tensor([FORWARD_SLOT[a] for a in plan.acts], dtype=torch.int64)
    bwd = torch.tensor([BACKWARD_SLOT[a] for a in plan.acts], dtype=torch.int64)
    loose = torch.zeros(n)
    loose[list(plan.loose)] = 1.0
    child = torch.zeros(n, n + 1)
    for c in range(1, n):
        child[plan.parents[c], c] = 1.0
    child[:, n] = loose
    return ArchTensors(parent, fwd, bwd, loose, torch.tensor(1.0 / len(plan.loose)), child)


def unroll(arch: ArchTensors, last: bool, x_proj: Tensor, h0: Tensor, weights: Tensor, save: bool,
           fused: FusedNodes | None = None) -> tuple[Tensor, ...]:
    """Forward through every time step, as ``rnn_cell._unroll`` but with ``arch`` as data.

    ``weights`` is (n, 2 hid, hid): node 0's hidden-to-hidden matrix, then each node's edge matrix.
    Per node and step, inference runs 7 kernels: the parent's gather, the matmul (into the scratch's
    first two slots), both sigmoids in one, tanh and relu, one gather of the chosen activation, and the
    highway mix ``h_in + c * (f - h_in)`` as one ``lerp``. Training runs 9: it keeps the gate (a copy)
    and the mix's difference for the backward, so the mix is a subtraction and an ``addcmul``.
    ``fused`` does each node's elementwise work in one compiled kernel instead (``rnn_graph_fused``).
    Returns ``(raw, hidden)`` and, with ``save``, the buffers the backward reads:
    ``nodes, gates, acts, diffs`` (time, n, batch, hid), ``states`` (time + 1, batch, hid), ``norms``.
    """
    steps, batch, hid = x_proj.size(0), h0.size(0), h0.size(1)
    n = weights.size(0)
    new = h0.new_empty
    keep = steps if save else 1
    nodes, acts = new(keep, n, batch, hid), new(keep, n, batch, hid)
    if save:  # what only the backward reads
        gates, diffs = new(keep, n, batch, hid), new(keep, n, batch, hid)
    states = new(steps + 1 if save else 2, batch, hid)
    norms = new(steps if save else 1, batch, 1)
    raw = new(steps, batch, hid)
    scratch = new(batch, 6, hid)  # gate input, a, the gate, sigmoid(a), tanh(a), relu(a)
    pre = scratch[:, :2].view(batch, 2 * hid)  # the matmul's output, in place
    a, both, gate = scratch[:, 1], scratch[:, 2:4], scratch[:, 2]
    states[0].copy_(h0)
    w_t = weights.transpose(1, 2)
    mean_row = (arch.loose * arch.inv_k).to(h0.dtype).view(1, n)  # the loose ends' mean as one product
    for t in range(steps):
        s = t if save else 0
        h_prev = states[t if save else t % 2]
        for j in range(n):
            h_in = h_prev if j == 0 else nodes[s].index_select(0, arch.parent[j:j + 1])[0]
            _mm(h_in, w_t[j], pre, x_proj[t] if j == 0 else None)
            if fused is not None:
                if save:
                    fused.train(pre, h_in, arch.fwd_slot[j:j + 1], gates[s, j], acts[s, j], diffs[s, j], nodes[s, j])
                else:
                    fused.infer(pre, h_in, arch.fwd_slot[j:j + 1], nodes[s, j])
                continue
            torch.sigmoid(scratch[:, :2], out=both)
            torch.tanh(a, out=scratch[:, 4])
            torch.clamp(a, min=0.0, out=scratch[:, 5])
            torch.index_select(scratch, 1, arch.fwd_slot[j:j + 1], out=acts[s, j].view(batch, 1, hid))
            if save:
                gates[s, j].copy_(gate)
                torch.sub(acts[s, j], h_in, out=diffs[s, j])
                torch.addcmul(h_in, gates[s, j], diffs[s, j], out=nodes[s, j])
            else:
                torch.lerp(h_in, acts[s, j], gate, out=nodes[s, j])
        torch.mm(mean_row, nodes[s].view(n, batch * hid), out=raw[t].view(1, batch * hid))
        state = nodes[s, n - 1] if last else raw[t]
        norm = torch.linalg.vector_norm(state, dim=-1, keepdim=True, out=norms[s])
        torch.mul(state, _clip_scale(norm), out=states[t + 1 if save else (t + 1) % 2])
    hidden = states[steps if save else steps % 2].clone()
    if not save:
        return raw, hidden
    return raw, hidden, nodes, gates, acts, diffs, states, norms


def unroll_backward(arch: ArchTensors, last: bool, weights: Tensor, raw: Tensor, nodes: Tensor, gates: Tensor,
                    acts: Tensor, diffs: Tensor, states: Tensor, norms: Tensor, grad_raw: Tensor, grad_hidden: Tensor,
                    fused: FusedNodes | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients ``(d_x_proj, d_h0, d_weights)`` of ``unroll``'s outputs, the architecture as data.

    The arithmetic of ``rnn_cell._UnrolledCell.backward``: per step, from the last node to the first,
    each node's gradient is its share of the output's plus what its children sent back, gathered in
    one (1 x n+1) @ (n+1 x batch*hid) product over the 0/1 child matrix whose last column is the loose
    ends (row n of ``contrib`` holds the output's gradient). Per node 10 kernels: that product, the
    gate's two, the activations' four and one gather of the chosen one, the input's and the matmul.
    """
    steps, batch, hid = raw.shape
    n = weights.size(0)
    new = raw.new_empty
    dpre = new(n, steps, batch, 2 * hid)
    contrib = raw.new_zeros(n + 1, batch, hid)  # what each node sends to its parent; row n: the output's share
    flat = contrib.view(n + 1, batch * hid)
    g, gin, tmp, coef = new(batch, hid), new(batch, hid), new(batch, hid), new(batch, 1)
    scratch = new(batch, 4, hid)  # g * c (the identity's), then tanh's, sigmoid's and relu's derivatives times it
    gc = scratch[:, 0]
    dh = grad_hidden.to(raw.dtype).clone()
    child = arch.child.to(raw.dtype)
    for t in range(steps - 1, -1, -1):
        d_state = clip_backward(nodes[t, n - 1] if last else raw[t], norms[t], dh, coef)
        contrib[:n].zero_()
        torch.mul(grad_raw[t] if last else grad_raw[t] + d_state, arch.inv_k, out=contrib[n])
        for j in range(n - 1, -1, -1):
            torch.mm(child[j:j + 1], flat, out=g.view(1, batch * hid))
            if last and j == n - 1:
                g.add_(d_state)
            c, f, d = gates[t, j], acts[t, j], dpre[j, t]
            if fused is not None:
                fused.backward(g, diffs[t, j], c, f, arch.bwd_slot[j:j + 1], d, gin)
            else:
                torch.mul(diffs[t, j], g, out=tmp)
                torch.ops.aten.sigmoid_backward.grad_input(tmp, c, grad_input=d[:, :hid])
                torch.mul(g, c, out=gc)
                torch.ops.aten.tanh_backward.grad_input(gc, f, grad_input=scratch[:, 1])
                torch.ops.aten.sigmoid_backward.grad_input(gc, f, grad_input=scratch[:, 2])
                torch.ops.aten.threshold_backward.grad_input(gc, f, 0, grad_input=scratch[:, 3])
                torch.index_select(scratch, 1, arch.bwd_slot[j:j + 1], out=d.view(batch, 2, hid)[:, 1:])
                torch.sub(g, gc, out=gin)
            w = weights[j]
            if w.dtype != raw.dtype:  # autocast: the matmul in the weights' precision
                res = (d.to(w.dtype) @ w).to(raw.dtype) + gin
                (dh if j == 0 else contrib[j]).copy_(res)
            else:
                torch.addmm(gin, d, w, out=dh if j == 0 else contrib[j])
    d_weights = weights.new_empty(weights.shape)
    for j in range(n):
        h_in = states[:steps] if j == 0 else nodes.index_select(1, arch.parent[j:j + 1])[:, 0]
        lhs, rhs = dpre[j].view(steps * batch, 2 * hid), h_in.reshape(steps * batch, hid)
        torch.mm(lhs.t().to(weights.dtype), rhs.to(weights.dtype), out=d_weights[j])
    return dpre[0], dh, d_weights


class CellGraphs:
    """One CUDA graph per (pass, shapes, dtypes), least recently used dropped past ``limit``.

    ``run(kind, fn, inputs)`` copies ``inputs`` into the graph's own input buffers, replays it and
    returns clones of its outputs (the next replay overwrites the graph's buffers, and autograd may
    keep a forward's outputs until its backward). The first call of a shape runs ``fn`` once on a
    side stream (cuBLAS workspaces, the allocator's pool) and captures the second run.
    """

    def __init__(self, limit: int = 8) -> None:
        self.limit = limit
        self._cache: OrderedDict[tuple[Any, ...], tuple[Any, tuple[Tensor, ...], tuple[Tensor, ...]]] = OrderedDict()
        self.captures = 0
        self.replays = 0

    def run(self, kind: str, fn: Callable[..., tuple[Tensor, ...]], inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        device = next(t.device for t in inputs if t.is_cuda)
        key = (kind, device, *((tuple(t.shape), t.dtype) for t in inputs))
        entry = self._cache.get(key)
        if entry is None:
            entry = self._capture(fn, inputs, device)
            self._cache[key] = entry
            while len(self._cache) > self.limit:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
            for buffer, value in zip(entry[1], inputs):
                buffer.copy_(value, non_blocking=True)
        graph, _, outputs = entry
        graph.replay()
        self.replays += 1
        return tuple(o.clone() for o in outputs)

    def _capture(self, fn: Callable[..., tuple[Tensor, ...]], inputs: tuple[Tensor, ...], device: torch.device
                 ) -> tuple[Any, tuple[Tensor, ...], tuple[Tensor, ...]]:
        static = tuple(t.detach().to(device, copy=True) for t in inputs)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            fn(*static)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads (TensorBoard) may run
            outputs = fn(*static)
        self.captures += 1
        return graph, static, outputs


class _GraphedCell(torch.autograd.Function):
    """``unroll`` forward and ``unroll_backward`` as one autograd node; each pass a graph replay
    when ``graphs`` is given, eager otherwise (the CPU tests)."""

    @staticmethod
    def forward(ctx: Any, graphs: CellGraphs | None, fused: FusedNodes | None, last: bool, arch: ArchTensors,
                x_proj: Tensor, h0: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        def fwd(x: Tensor, h: Tensor, w: Tensor, *a: Tensor) -> tuple[Tensor, ...]:
            return unroll(ArchTensors(*a), last, x, h, w, True, fused)

        inputs = (x_proj, h0, weights, *arch)
        out = graphs.run(f"train-{last}-{fused is not None}", fwd, inputs) if graphs is not None else fwd(*inputs)
        raw, hidden, *saved = out
        ctx.graphs, ctx.fused, ctx.last, ctx.x_dtype = graphs, fused, last, x_proj.dtype
        ctx.save_for_backward(weights, raw, *saved, *arch)
        return raw, hidden

    @staticmethod
    def backward(ctx: Any, grad_raw: Tensor | None, grad_hidden: Tensor | None) -> tuple[Tensor | None, ...]:
        weights, raw, nodes, gates, acts, diffs, states, norms, *arch = ctx.saved_tensors
        last, fused = ctx.last, ctx.fused
        grad_raw = raw.new_zeros(raw.shape) if grad_raw is None else grad_raw.to(raw.dtype)
        grad_hidden = raw.new_zeros(states.shape[1:]) if grad_hidden is None else grad_hidden

        def bwd(w: Tensor, r: Tensor, nd: Tensor, gt: Tensor, ac: Tensor, df: Tensor, st: Tensor, nm: Tensor,
                gr: Tensor, gh: Tensor, *a: Tensor) -> tuple[Tensor, ...]:
            return unroll_backward(ArchTensors(*a), last, w, r, nd, gt, ac, df, st, nm, gr, gh, fused)

        inputs = (weights, raw, nodes, gates, acts, diffs, states, norms, grad_raw, grad_hidden, *arch)
        graphs: CellGraphs | None = ctx.graphs
        kind = f"backward-{last}-{fused is not None}"
        d_x, d_h0, d_w = graphs.run(kind, bwd, inputs) if graphs is not None else bwd(*inputs)
        needs = ctx.needs_input_grad
        return (None, None, None, None, d_x.to(ctx.x_dtype) if needs[4] else None, d_h0 if needs[5] else None,
                d_w if needs[6] else None)


def run_graphed(graphs: CellGraphs | None, plan: Plan, arch: ArchTensors, x_proj: Tensor, hidden: Tensor,
                w_h0: Tensor, w_edges: list[Tensor], fused: FusedNodes | None = None) -> tuple[Tensor, Tensor]:
    """The cell over every time step with ``arch`` as data (on ``x_proj``'s device): outputs and the
    state for the next slice, as ``rnn_cell.run_cell``; ``graphs`` None runs the same passes eagerly,
    ``fused`` each node's elementwise work as one compiled kernel.

    Under autocast the matmuls run in the low precision and the elementwise work in fp32, as there.
    """
    device_type = x_proj.device.type
    low = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    if hidden.dtype in (torch.bfloat16, torch.float16):
        hidden = hidden.float()
    with torch.autocast(device_type, enabled=False):
        weights = torch.stack([w_h0, *w_edges])
        if low is not None:
            weights = weights.to(low)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x_proj, hidden, weights)):
            return _GraphedCell.apply(graphs, fused, plan.last, arch, x_proj, hidden, weights)

        def infer(x: Tensor, h: Tensor, w: Tensor, *a: Tensor) -> tuple[Tensor, ...]:
            return unroll(ArchTensors(*a), plan.last, x, h, w, False, fused)

        inputs = (x_proj, hidden, weights, *arch)
        kind = f"infer-{plan.last}-{fused is not None}"
        raw, hidden = graphs.run(kind, infer, inputs) if graphs is not None else infer(*inputs)
        return raw, hidden
