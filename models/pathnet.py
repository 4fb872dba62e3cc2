"""PathNet (Fernando et al. 2017): ``L`` layers of ``M`` modules; a path picks at most ``N`` per layer.

A :class:`Path` is data (an ``L x N`` table of module indices) with a JSON round trip, random
draws, the paper's mutation and a drawing. :class:`PathNet` keeps each layer's modules in one
``(M, units, inputs)`` weight tensor, so a forward pass gathers the active modules' rows and runs
them as one batched product; the outputs of a layer's active modules are summed (the paper), averaged
(``aggregate="mean"``) or summed and divided by ``M`` (``"mean_all"``, the public TF code: inactive modules
count as zeros). ``kinds="tf"`` is the TF code's module zoo: after the first layer, module ``m`` is an
identity (``m % 3 == 0``), a ReLU layer (1) or a residual ReLU layer (2). Each task has its own linear head.

Freezing (PathNet's transfer: task A's best path is fixed before task B) is a per-module mask:
:meth:`PathNet.mask_frozen_grads` zeroes the gradient rows of frozen modules after a backward pass,
so plain SGD leaves them exactly unchanged. :class:`ActiveRows` is the same plain SGD step touching only
a path's modules (what a tournament trains with when nothing else reads the whole gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from utils import UserError, render_dot

BOUNDS = ("wrap", "clip")
AGGREGATES = ("sum", "mean", "mean_all")
KINDS = ("relu", "tf")
INITS = ("torch", "tf")


@dataclass(frozen=True)
class Path:
    """``layers[l]`` lists the ``N`` module indices active in layer ``l`` (a repeated index counts once)."""

    layers: tuple[tuple[int, ...], ...]

    def modules(self, layer: int) -> list[int]:
        return sorted(set(self.layers[layer]))

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [list(layer) for layer in self.layers]}

    @classmethod
    def from_dict(cls, d: dict[str, Any], num_layers: int, num_modules: int) -> Path:
        layers = d.get("layers") if isinstance(d, dict) else None
        if (not isinstance(layers, list) or len(layers) != num_layers
                or not all(isinstance(row, list) and row and all(isinstance(m, int) and 0 <= m < num_modules for m in row)
                           for row in layers)):
            raise UserError(f"not a path of {num_layers} layers of modules 0..{num_modules - 1}: {str(d)[:120]}")
        return cls(tuple(tuple(row) for row in layers))

    @classmethod
    def random(cls, generator: torch.Generator, num_layers: int, num_modules: int, per_layer: int,
               distinct: bool = False) -> Path:
        """``per_layer`` draws per layer, with repeats (the paper's table) or ``distinct`` (the TF code's)."""
        if distinct:
            table = torch.stack([torch.randperm(num_modules, generator=generator)[:per_layer] for _ in range(num_layers)])
        else:
            table = torch.randint(num_modules, (num_layers, per_layer), generator=generator)
        return cls(tuple(tuple(int(m) for m in row) for row in table))

    def union(self, other: Path) -> Path:
        """Both paths' modules in every layer (the TF code runs task A's frozen path beside B's)."""
        return Path(tuple(tuple(sorted(set(a) | set(b))) for a, b in zip(self.layers, other.layers)))

    def mutate_tf(self, generator: torch.Generator, num_modules: int, per_layer: int) -> Path:
        """The public TF code's mutation (``pathnet.mutation``), on the set of active modules of each layer.

        Each active module, visited in increasing index order, moves with probability ``2 / (L N)`` (its
        ``int(rand * L * N) <= 1``) by an offset uniform in {-4, -3, -2, -1} (``randint(-2, 2) - 2``), clamped to
        ``0..M-1``; a module landing on an active one merges with it, so a path can shrink. One uniform and one
        offset are drawn per (layer, module) slot whatever the path, so two evolutions seeded alike stay in step.
        """
        num_layers = len(self.layers)
        u = torch.rand(num_layers, num_modules, generator=generator)
        offsets = torch.randint(-4, 0, (num_layers, num_modules), generator=generator)
        layers = []
        for layer in range(num_layers):
            active = set(self.layers[layer])
            for m in sorted(active):
                if float(u[layer, m]) * num_layers * per_layer < 2:
                    active.discard(m)
                    active.add(min(max(m + int(offsets[layer, m]), 0), num_modules - 1))
            layers.append(tuple(sorted(active)))
        return Path(tuple(layers))

    def mutate(self, generator: torch.Generator, num_modules: int, rate: float, bound: str = "wrap") -> Path:
        """Each index independently, with probability ``rate``, moves by an integer in [-2, 2].

        ``wrap`` keeps it inside ``0..M-1`` modulo ``M``; ``clip`` clamps it to the range. (The public TF
        code's mutation only ever shifts indices downwards; this one is symmetric, as the paper says.)
        """
        if bound not in BOUNDS:
            raise ValueError(f"mutation bound must be one of {BOUNDS}, got {bound!r}")
        flat = [m for layer in self.layers for m in layer]
        hit = torch.rand(len(flat), generator=generator) < rate
        offsets = torch.randint(-2, 3, (len(flat),), generator=generator)
        moved = [m + int(o) if h else m for m, h, o in zip(flat, hit.tolist(), offsets)]
        moved = [m % num_modules if bound == "wrap" else min(max(m, 0), num_modules - 1) for m in moved]
        n = len(self.layers[0])
        return Path(tuple(tuple(moved[i * n:(i + 1) * n]) for i in range(len(self.layers))))

    def draw(self, num_modules: int, path: FilePath, frozen: Path | None = None, title: str = "") -> FilePath:
        """The module grid with this path's modules filled (a frozen path's outlined in bold)."""
        lines = ["digraph pathnet {", "  rankdir=BT; node [shape=box, style=filled, fontsize=9, width=0.3, height=0.25];",
                 f'  label="{title}"; labelloc=t;']
        for layer in range(len(self.layers)):
            active, fixed = set(self.modules(layer)), set(frozen.modules(layer)) if frozen else set()
            lines.append(f"  subgraph layer{layer} {{ rank=same;")
            for m in range(num_modules):
                colour = "#4a90d9" if m in active else "#eeeeee"
                border = ", penwidth=3, color=\"#c0392b\"" if m in fixed else ""
                lines.append(f'    l{layer}m{m} [label="{m}", fillcolor="{colour}"{border}];')
            lines.append("  }")
            if layer:
                lines += [f"  l{layer - 1}m{a} -> l{layer}m{b} [arrowsize=0.4];"
                          for a in sorted(set(self.modules(layer - 1))) for b in sorted(active)]
        lines.append("}")
        return render_dot("\n".join(lines), path)


class PathNet(nn.Module):
    """The modular network: ``layers`` of ``num_modules`` ReLU modules of ``units`` each, one head per task."""

    def __init__(self, inputs: int, num_layers: int, num_modules: int, units: int, head_sizes: Sequence[int],
                 aggregate: str = "sum", kinds: str = "relu", init: str = "torch") -> None:
        super().__init__()
        for name, value, known in (("aggregate", aggregate, AGGREGATES), ("kinds", kinds, KINDS), ("init", init, INITS)):
            if value not in known:
                raise ValueError(f"{name} must be one of {known}, got {value!r}")
        self.num_layers, self.num_modules, self.units, self.aggregate = num_layers, num_modules, units, aggregate
        self.kinds, self.init = kinds, init
        sizes = [inputs] + [units] * (num_layers - 1)
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(num_modules, units, n)) for n in sizes)
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(num_modules, units)) for _ in sizes)
        self.heads = nn.ModuleList(nn.Linear(units, n) for n in head_sizes)
        self.register_buffer("frozen", torch.zeros(num_layers, num_modules, dtype=torch.bool))
        self.reset_modules(torch.ones(num_layers, num_modules, dtype=torch.bool), torch.Generator().manual_seed(0))

    @torch.no_grad()
    def reset_modules(self, which: Tensor, generator: torch.Generator) -> None:
        """Re-initialise the modules ``which[l, m]`` from ``generator`` (see :meth:`_init_`)."""
        for w, b, rows in zip(self.weights, self.biases, which):
            for m in rows.nonzero().flatten().tolist():
                self._init_(w[m], b[m], generator)

    @torch.no_grad()
    def reset_head(self, head: int, generator: torch.Generator) -> None:
        lin = self.heads[head]
        self._init_(lin.weight, lin.bias, generator)

    def _init_(self, w: Tensor, b: Tensor, generator: torch.Generator) -> None:
        """``torch``: PyTorch's Linear initialisation (uniform in +-1/sqrt(fan-in)); ``tf``: the TF code's
        truncated normal of std 0.1 (re-drawn beyond 2 std) and biases 0.1."""
        if self.init == "tf":
            nn.init.trunc_normal_(w, std=0.1, a=-0.2, b=0.2, generator=generator)
            b.fill_(0.1)
            return
        bound = 1 / math.sqrt(w.shape[-1])
        w.copy_(torch.rand(w.shape, generator=generator) * 2 * bound - bound)
        b.copy_(torch.rand(b.shape, generator=generator) * 2 * bound - bound)

    def mask(self, path: Path) -> Tensor:
        """``(L, M)`` booleans: the modules ``path`` uses."""
        out = torch.zeros(self.num_layers, self.num_modules, dtype=torch.bool)
        for layer in range(self.num_layers):
            out[layer, path.modules(layer)] = True
        return out

    def freeze(self, path: Path) -> None:
        self.frozen |= self.mask(path).to(self.frozen.device)

    def forward(self, x: Tensor, path: Path, head: int, rows: Sequence[tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """The logits of ``path`` on ``head``; ``rows``: the path's weights and biases per layer already
        gathered (:meth:`ActiveRows.leaves`), else they are indexed out of the stacked parameters."""
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            idx = path.modules(layer)
            w_act, b_act = rows[layer] if rows is not None else (w[idx], b[idx])
            # The active modules stacked into one (k * units, inputs) matrix: one product per layer.
            out = torch.relu(F.linear(x, w_act.flatten(0, 1), b_act.flatten()))
            out = out.view(len(x), len(idx), self.units)  # batch x active modules x units
            if layer and self.kinds == "tf":  # identity (m % 3 == 0), ReLU (1), residual ReLU (2)
                kind = torch.tensor([m % 3 for m in idx], device=x.device)[None, :, None]
                out = torch.where(kind == 0, x[:, None, :], out + (kind == 2) * x[:, None, :])
            if self.aggregate == "mean":
                x = out.mean(1)
            elif self.aggregate == "mean_all":
                x = out.sum(1) / self.num_modules
            else:  # no division by 1: two operators less per layer and step, the same values
                x = out.sum(1)
        return self.heads[head](x)

    @torch.no_grad()
    def mask_frozen_grads(self) -> None:
        """Zero the gradients of frozen modules (call between backward and the optimiser step)."""
        if not bool(self.frozen.any()):
            return
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            keep = (~self.frozen[layer]).to(w.dtype)
            if w.grad is not None:
                w.grad.mul_(keep[:, None, None])
            if b.grad is not None:
                b.grad.mul_(keep[:, None])

    def groups(self) -> dict[str, list[nn.Parameter]]:
        """One regulariser group per layer's modules (``layer.<l>``) and per head (``head.<t>``)."""
        out = {f"layer.{l}": [w, b] for l, (w, b) in enumerate(zip(self.weights, self.biases))}
        out.update({f"head.{t}": list(h.parameters()) for t, h in enumerate(self.heads)})
        return out


class ActiveRows:
    """One path's modules copied into small leaf tensors each step, and plain SGD written back to their rows.

    With the stacked ``(M, units, inputs)`` weights, a backward through ``w[idx]`` zero-fills and scatters a
    gradient for all ``M`` modules of a layer (at the paper's sizes a fresh 627 KB tensor per step) and SGD
    then updates all ``M``, though only the path's ``k <= N`` have a non-zero gradient.
    Here the forward runs on copies of the path's rows (:meth:`leaves`), the backward makes gradients of
    ``k`` modules only, and :meth:`sgd_` sets each row not frozen to ``row - lr * grad``: the arithmetic of
    ``torch.optim.SGD`` without momentum or weight decay, so the weights equal the full step's (the other
    modules, frozen ones included, bit for bit).
    """

    def __init__(self, net: PathNet, path: Path) -> None:
        self.net = net
        device = net.frozen.device
        self.index = [torch.tensor(path.modules(layer), device=device) for layer in range(net.num_layers)]
        # Positions (in the leaves) of the modules that train; None: all of them (no frozen module on the path).
        self.train: list[Tensor | None] = []
        for layer, idx in enumerate(self.index):
            keep = (~net.frozen[layer, idx]).nonzero().flatten()
            self.train.append(None if len(keep) == len(idx) else keep)
        self.rows: list[tuple[Tensor, Tensor]] = []

    @torch.no_grad()
    def leaves(self) -> list[tuple[Tensor, Tensor]]:
        """Fresh copies of the path's weights and biases per layer, leaves that collect their gradients."""
        self.rows = [(w.index_select(0, idx).requires_grad_(), b.index_select(0, idx).requires_grad_())
                     for w, b, idx in zip(self.net.weights, self.net.biases, self.index)]
        return self.rows

    @torch.no_grad()
    def sgd_(self, lr: float) -> None:
        """``row -= lr * grad`` on the last :meth:`leaves`, written back to the modules that are not frozen."""
        for (w_act, b_act), w, b, idx, keep in zip(self.rows, self.net.weights, self.net.biases, self.index, self.train):
            for leaf, full in ((w_act, w), (b_act, b)):
                if leaf.grad is None:
                    continue
                leaf.add_(leaf.grad, alpha=-lr)
                if keep is None:
                    full.index_copy_(0, idx, leaf)
                else:
                    full.index_copy_(0, idx[keep], leaf[keep])
