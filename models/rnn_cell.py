"""The unrolled recurrent cell: one fused autograd node, and the plain step-by-step reference.

The unrolled cell is one autograd node (``_UnrolledCell``). Its forward runs the time loop with
preallocated buffers (no autograd graph, no allocation and no host synchronisation per step) and
keeps what the backward needs: every node's state h_j, gate c_j and activation f_j = f(a_j). Its
backward runs the time loop for the activation gradients only, storing each node's
pre-activation gradient; the weight gradients then come from one matmul per edge over many time
steps, dW = dpre[T*B, 2 hid]^T @ h_in[T*B, hid], instead of one small matmul per step.

Per node, with pre = h_in @ W^T = [z_c | a]:  c = sigmoid(z_c), f = act(a),
  h = c * f + (1 - c) * h_in  (computed as h_in + c * (f - h_in))
  dz_c = sigmoid'(c) * g * (f - h_in),   da = act'(f) * g * c,   dh_in = g - g * c + dpre @ W
and act' is read from f for every activation (tanh: 1 - f^2, sigmoid: f (1 - f), ReLU: f > 0).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from models.rnn_arch import ACTIVATIONS, RNNArch

HIDDEN_NORM_CLIP = 25.0
# Time steps whose pre-activation gradients the backward keeps per node (node 0: all of them) before
# folding them into the weight gradients: 7 of 35 at the paper's size holds 37 MiB of them instead
# of 205 MiB, with products of 448 rows, large enough to run at the full matmul rate.
TIME_CHUNK = 7

class Plan:
    """What the unrolled cell needs to know about an architecture (hashable parts only)."""

    def __init__(self, arch: RNNArch, next_state: str) -> None:
        self.acts = arch.activations
        self.parents = (-1, *arch.parents)  # node 0 reads the previous hidden state
        self.n = arch.num_nodes
        self.loose = tuple(arch.loose_ends)
        self.last = next_state == "last"
        # The backward visits nodes from the last to the first; the first child it meets of each
        # parent writes the parent's gradient, the others add to it.
        seen: set[int] = set()
        self.first_child = [False] * self.n
        for j in range(self.n - 1, 0, -1):
            self.first_child[j] = self.parents[j] not in seen
            seen.add(self.parents[j])


def _act_forward(name: str, a: Tensor, out: Tensor) -> Tensor:
    if name == "tanh":
        return torch.tanh(a, out=out)
    if name == "sigmoid":
        return torch.sigmoid(a, out=out)
    if name == "ReLU":
        return torch.clamp(a, min=0.0, out=out)
    return out.copy_(a)


def _act_backward(name: str, grad: Tensor, f: Tensor, out: Tensor) -> None:
    """``out = grad * act'(a)``, with ``act'`` read from ``f = act(a)`` (autograd's own kernels)."""
    if name == "tanh":
        torch.ops.aten.tanh_backward.grad_input(grad, f, grad_input=out)
    elif name == "sigmoid":
        torch.ops.aten.sigmoid_backward.grad_input(grad, f, grad_input=out)
    elif name == "ReLU":
        torch.ops.aten.threshold_backward.grad_input(grad, f, 0, grad_input=out)
    else:
        out.copy_(grad)


def act_grad(name: str, grad: Tensor, f: Tensor) -> Tensor:
    """``grad * act'(a)`` with ``act'`` read from ``f = act(a)``, as pure tensor ops (for ``torch.compile``)."""
    if name == "tanh":
        return grad * (1 - f * f)
    if name == "sigmoid":
        return grad * (f * (1 - f))
    if name == "ReLU":
        return torch.where(f > 0, grad, torch.zeros_like(grad))
    return grad


class _Kernels:
    """The per-node elementwise work, eager: every result written into a preallocated buffer."""

    @staticmethod
    def node_forward(act: str, pre: Tensor, h_in: Tensor, c: Tensor, f: Tensor, h: Tensor, tmp: Tensor) -> None:
        hid = h.size(-1)
        torch.sigmoid(pre[:, :hid], out=c)
        _act_forward(act, pre[:, hid:], f)
        torch.sub(f, h_in, out=tmp)
        torch.addcmul(h_in, c, tmp, out=h)

    @staticmethod
    def node_backward(act: str, g: Tensor, h_in: Tensor, c: Tensor, f: Tensor, dpre: Tensor, gin: Tensor,
                      tmp: Tensor) -> None:
        """Writes the node's pre-activation gradient into ``dpre`` and ``g * (1 - c)`` into ``gin``."""
        hid = g.size(-1)
        torch.sub(f, h_in, out=tmp)
        tmp.mul_(g)
        torch.ops.aten.sigmoid_backward.grad_input(tmp, c, grad_input=dpre[:, :hid])
        if act == "identity":
            gc = torch.mul(g, c, out=dpre[:, hid:])
        else:
            gc = torch.mul(g, c, out=tmp)
            _act_backward(act, gc, f, dpre[:, hid:])
        torch.sub(g, gc, out=gin)


class CompiledKernels:
    """The same work as ``_Kernels`` through ``torch.compile``d pure functions (one fused kernel each
    on a GPU); results are copied into the same buffers. Compiled lazily, once per activation."""

    def __init__(self, **compile_options: Any) -> None:
        self.options = {"dynamic": False, **compile_options}
        self._fwd: dict[str, Callable[..., Any]] = {}
        self._bwd: dict[str, Callable[..., Any]] = {}

    def _get(self, table: dict[str, Callable[..., Any]], act: str, backward: bool) -> Callable[..., Any]:
        if act not in table:
            fn = ACTIVATIONS[act]

            def forward(pre: Tensor, h_in: Tensor) -> tuple[Tensor, Tensor, Tensor]:
                hid = h_in.size(-1)
                c = torch.sigmoid(pre[:, :hid])
                f = fn(pre[:, hid:])
                return c, f, h_in + c * (f - h_in)

            def backward_(g: Tensor, h_in: Tensor, c: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
                gc = g * c
                return torch.cat([g * (f - h_in) * (c * (1 - c)), act_grad(act, gc, f)], -1), g - gc

            table[act] = torch.compile(backward_ if backward else forward, **self.options)
        return table[act]

    def node_forward(self, act: str, pre: Tensor, h_in: Tensor, c: Tensor, f: Tensor, h: Tensor, tmp: Tensor) -> None:
        c_, f_, h_ = self._get(self._fwd, act, False)(pre, h_in)
        c.copy_(c_), f.copy_(f_), h.copy_(h_)

    def node_backward(self, act: str, g: Tensor, h_in: Tensor, c: Tensor, f: Tensor, dpre: Tensor, gin: Tensor,
                      tmp: Tensor) -> None:
        dpre_, gin_ = self._get(self._bwd, act, True)(g, h_in, c, f)
        dpre.copy_(dpre_), gin.copy_(gin_)


EAGER = _Kernels()


def _mm(a: Tensor, b_t: Tensor, out: Tensor, add: Tensor | None = None) -> None:
    """``out = add + a @ b_t`` (``b_t`` may be a transposed view); in ``b_t``'s dtype when that is lower."""
    if b_t.dtype != out.dtype:  # autocast: matmul in bf16 / fp16, elementwise work in fp32
        res = a.to(b_t.dtype) @ b_t
        out.copy_(res if add is None else res + add)
    elif add is None:
        torch.mm(a, b_t, out=out)
    else:
        torch.addmm(add, a, b_t, out=out)


def _clip_scale(norm: Tensor) -> Tensor:
    """Rows with a norm above the clip are rescaled to it (tensor ops only: no host sync)."""
    return (HIDDEN_NORM_CLIP / norm.clamp_min(1e-6)).clamp(max=1.0)


def clip_backward(state: Tensor, norm: Tensor, dh: Tensor, coef: Tensor) -> Tensor:
    """The gradient w.r.t. ``state`` of ``state * _clip_scale(|state|)`` given the one ``dh`` of the result.

    Where the clip is active the scale depends on the state: d scale = -(C / |s|^3) s^T ds.
    ``coef`` is a (batch, 1) scratch buffer."""
    ratio = HIDDEN_NORM_CLIP / norm.clamp_min(1e-6)
    torch.sum(state * dh, dim=-1, keepdim=True, out=coef)
    coef.mul_(ratio).div_(norm * norm).neg_().masked_fill_(ratio > 1.0, 0.0)
    return torch.addcmul(dh * ratio.clamp(max=1.0), state, coef)


def _unroll(plan: Plan, x_proj: Tensor, h0: Tensor, w_h0: Tensor, w_edges: Sequence[Tensor], save: bool,
            kernels: Any) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Forward through every time step; with ``save``, keep the buffers the backward reads."""
    steps, batch, hid = x_proj.size(0), h0.size(0), h0.size(1)
    n = plan.n
    new = h0.new_empty
    keep = steps if save else 1
    # One buffer per node (not one for all nodes): each stays under glibc's mmap threshold, so the
    # allocator reuses its memory from step to step instead of page-faulting fresh pages.
    nodes = [new(keep, batch, hid) for _ in range(n)]
    gates = [new(keep, batch, hid) for _ in range(n)]
    acts = [new(keep, batch, hid) for _ in range(n)]
    states = new(steps + 1 if save else 2, batch, hid)  # the hidden state entering each step
    norms = new(steps if save else 1, batch, 1)
    raw = new(steps, batch, hid)
    pre, tmp = new(batch, 2 * hid), new(batch, hid)
    states[0].copy_(h0)
    w_t = [w_h0.t()] + [w.t() for w in w_edges]
    k = len(plan.loose)
    for t in range(steps):
        s = t if save else 0
        h_prev = states[t if save else t % 2]
        for j in range(n):
            h_in = h_prev if j == 0 else nodes[plan.parents[j]][s]
            _mm(h_in, w_t[j], pre, x_proj[t] if j == 0 else None)
            kernels.node_forward(plan.acts[j], pre, h_in, gates[j][s], acts[j][s], nodes[j][s], tmp)
        out = raw[t]
        if k == 1:
            out.copy_(nodes[plan.loose[0]][s])
        else:
            torch.add(nodes[plan.loose[0]][s], nodes[plan.loose[1]][s], out=out)
            for l in plan.loose[2:]:
                out.add_(nodes[l][s])
            out.div_(k)
        state = nodes[n - 1][s] if plan.last else out
        norm = torch.linalg.vector_norm(state, dim=-1, keepdim=True, out=norms[s])
        torch.mul(state, _clip_scale(norm), out=states[t + 1 if save else (t + 1) % 2])
    hidden = states[steps if save else steps % 2].clone()
    saved = [*nodes, *gates, *acts, states, norms] if save else []
    return raw, hidden, saved


class _UnrolledCell(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, plan: Plan, kernels: Any, x_proj: Tensor, h0: Tensor, w_h0: Tensor,
                *w_edges: Tensor) -> tuple[Tensor, Tensor]:
        raw, hidden, saved = _unroll(plan, x_proj, h0, w_h0, w_edges, True, kernels)
        ctx.plan, ctx.kernels, ctx.x_dtype = plan, kernels, x_proj.dtype
        # Saved through autograd (not as ctx attributes), so they are freed right after the backward
        # (unless retain_graph) even while the caller still holds the loss.
        ctx.save_for_backward(raw, *saved, w_h0, *w_edges)
        return raw, hidden

    @staticmethod
    def backward(ctx: Any, grad_raw: Tensor | None, grad_hidden: Tensor | None) -> tuple[Tensor | None, ...]:
        plan, kernels = ctx.plan, ctx.kernels
        n = plan.n
        raw, *saved = ctx.saved_tensors
        nodes, gates, acts = saved[:n], saved[n:2 * n], saved[2 * n:3 * n]
        states, norms, w_h0, *w_edges = saved[3 * n:]
        steps, batch, hid = raw.shape
        weights = [w_h0, *w_edges]  # dh_in = dpre @ W, W row-major (2 hid, hid)
        needs = ctx.needs_input_grad
        new = raw.new_empty
        # Pre-activation gradients: node 0's for every step (they are the gradient of x_proj), the
        # others' for TIME_CHUNK steps, folded into the weight gradients as each chunk completes.
        chunk = min(TIME_CHUNK, steps)
        dpre = [new(steps if j == 0 else chunk, batch, 2 * hid) for j in range(n)]
        d_weights: list[Tensor | None] = [None] * n
        grads = new(n, batch, hid)  # gradient w.r.t. each node's state at the current step
        gin, tmp, coef = new(batch, hid), new(batch, hid), new(batch, 1)
        dh = grad_hidden.to(raw.dtype).clone() if grad_hidden is not None else raw.new_zeros(batch, hid)
        if grad_raw is None:
            grad_raw = raw.new_zeros(raw.shape)
        k = len(plan.loose)
        for t in range(steps - 1, -1, -1):
            # The clip: hidden = state * scale, scale = min(1, C / max(|state|, 1e-6)).
            state = nodes[n - 1][t] if plan.last else raw[t]
            d_state = clip_backward(state, norms[t], dh, coef)
            g_out = grad_raw[t] + d_state if not plan.last else grad_raw[t]
            if k > 1:
                g_out = g_out / k
            node_grad: list[Tensor | None] = [None] * n
            for l in plan.loose:
                node_grad[l] = g_out
            if plan.last:
                node_grad[n - 1] = g_out + d_state
            for j in range(n - 1, -1, -1):
                g = node_grad[j]
                assert g is not None
                p = plan.parents[j]
                h_in = states[t] if j == 0 else nodes[p][t]
                d = dpre[j][t if j == 0 else t % chunk]
                kernels.node_backward(plan.acts[j], g, h_in, gates[j][t], acts[j][t], d, gin, tmp)
                w = weights[j]
                if j == 0:
                    if t > 0 or ctx.needs_input_grad[3]:  # the gradient w.r.t. the previous hidden state
                        _mm_acc(gin, d, w, out=dh, first=True)
                else:
                    target = grads[p]
                    _mm_acc(gin, d, w, out=target, first=plan.first_child[j])
                    node_grad[p] = target
            if t % chunk == 0 or t == 0:  # steps [t, t + rows) done: fold them into the weight gradients
                rows = min(chunk, steps - t)
                for j in range(n):
                    if needs[4 + j]:
                        h_in = states[t:t + rows] if j == 0 else nodes[plan.parents[j]][t:t + rows]
                        d = dpre[j][t:t + rows] if j == 0 else dpre[j][:rows]
                        d_weights[j] = _mm_t(d.reshape(rows * batch, 2 * hid), h_in.reshape(rows * batch, hid),
                                             weights[j].dtype, d_weights[j])
        d_weights = [d if d is None else d.to(w.dtype) for d, w in zip(d_weights, weights)]
        d_x = dpre[0].to(ctx.x_dtype) if needs[2] else None
        d_h0 = dh if needs[3] else None
        return (None, None, d_x, d_h0, *d_weights)


def _mm_acc(gin: Tensor, dpre: Tensor, w: Tensor, out: Tensor, first: bool) -> None:
    """``out = (0 if first else out) + gin + dpre @ w``."""
    if w.dtype != out.dtype:
        res = (dpre.to(w.dtype) @ w).to(out.dtype) + gin
        out.copy_(res) if first else out.add_(res)
    elif first:
        torch.addmm(gin, dpre, w, out=out)
    else:
        out.add_(gin)
        out.addmm_(dpre, w)


def _mm_t(dpre: Tensor, h_in: Tensor, dtype: torch.dtype, acc: Tensor | None) -> Tensor:
    """Weight gradient over a chunk of time steps, ``dpre^T @ h_in`` (2 hid, hid), added to ``acc``
    (the earlier chunks') when given; a lower ``dtype`` (autocast) multiplies in it and sums in fp32."""
    if dtype != dpre.dtype:
        res = (dpre.to(dtype).t() @ h_in.to(dtype)).to(dpre.dtype)
        return res if acc is None else acc.add_(res)
    return dpre.t() @ h_in if acc is None else acc.addmm_(dpre.t(), h_in)


def _plain_unroll(plan: Plan, x_proj: Tensor, hidden: Tensor, w_h0: Tensor, w_edges: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """The cell step by step with ordinary autograd ops (the reference formulation; slow)."""
    hid = hidden.size(1)
    acts = [ACTIVATIONS[a] for a in plan.acts]
    weights = [w_h0, *w_edges]
    outputs = []
    for t in range(x_proj.size(0)):
        nodes: list[Tensor] = []
        for j in range(plan.n):
            h_in = hidden if j == 0 else nodes[plan.parents[j]]
            pre = h_in @ weights[j].t()
            if j == 0:
                pre = x_proj[t] + pre
            c = torch.sigmoid(pre[:, :hid])
            nodes.append(c * acts[j](pre[:, hid:]) + (1 - c) * h_in)
        output = torch.stack([nodes[j] for j in plan.loose]).mean(0) if len(plan.loose) > 1 else nodes[plan.loose[0]]
        state = nodes[-1] if plan.last else output
        hidden = state * _clip_scale(state.norm(dim=-1, keepdim=True))
        outputs.append(output)
    return torch.stack(outputs), hidden


def run_cell(plan: Plan, kernels: Any, fused: bool, x_proj: Tensor, hidden: Tensor, w_h0: Tensor,
             w_edges: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The cell over every time step: (outputs (time, batch, hid), state for the next slice)."""
    if not fused:
        return _plain_unroll(plan, x_proj, hidden, w_h0, w_edges)
    device_type = x_proj.device.type
    low = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    if hidden.dtype in (torch.bfloat16, torch.float16):
        hidden = hidden.float()
    with torch.autocast(device_type, enabled=False):
        if low is not None:  # autocast: the matmuls in the low precision, the elementwise work in fp32
            w_h0, w_edges = w_h0.to(low), [w.to(low) for w in w_edges]
        tensors = (x_proj, hidden, w_h0, *w_edges)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return _UnrolledCell.apply(plan, kernels, *tensors)
        raw, hidden, _ = _unroll(plan, x_proj, hidden, w_h0, w_edges, False, kernels)
        return raw, hidden
