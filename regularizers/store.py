"""The quadratic store every importance-weighted regulariser here shares.

For each named group of parameters (one group per shared edge or op in the search, one per layer
in a task sequence) the store keeps an importance ``Omega`` (a diagonal Fisher, a path integral,
an output sensitivity, ...) and an anchor copy ``theta*`` of the weights, and evaluates

    (s / 2) * sum_i Omega_i * (theta_i - theta*_i)^2

for the groups a model uses, either as a differentiable value or by adding its gradient
``s * Omega * (theta - theta*)`` straight into ``.grad`` with chunked ``torch._foreach_*`` work.
The store owns no parameters (it is not an ``nn.Module``) and has its own ``state_dict``.
"""

from __future__ import annotations

import logging
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

CHUNK = 1 << 18  # elements per chunk of the direct penalty gradient (1 MiB in fp32: the scratch stays in L2)
log = logging.getLogger("wpl")


class QuadraticStore:
    """Importances and anchors for named parameter groups, with the quadratic penalty.

    ``importance_key`` names the importance table in ``state_dict`` keys (``<key>/<group>/<i>``);
    WPL keeps ``"fisher"`` so that checkpoints written before the store existed still load.
    """

    importance_key = "importance"
    # Lazy anchors (a subclass sets True): a group's anchor is a view of its weights until
    # ``hold_anchors`` copies it out, which the subclass calls before the group's weights can change;
    # ``refresh_anchors`` then drops the copies. Right where every weight change of a group is preceded
    # by the subclass's hook and every anchor refresh covers all groups (the search: the anchors move
    # to the weights after every architecture, and only that architecture's groups train in between),
    # the values are those of a full copy, with one copy per *trained* group instead of one per group.
    lazy_anchors = False

    def __init__(self, groups: Mapping[str, Sequence[nn.Parameter]]) -> None:
        if not groups:
            raise ValueError("a regulariser needs at least one parameter group")
        self.params: dict[str, list[nn.Parameter]] = {k: list(v) for k, v in groups.items()}
        self.importance = {k: [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in v]
                           for k, v in self.params.items()}
        copy = not self.lazy_anchors
        self.anchor = {k: [p.detach().clone() if copy else p.detach() for p in v] for k, v in self.params.items()}
        self.held: set[str] = set()  # lazy anchors: the groups whose anchors are copies
        self._versions = self._stamp()
        self._warned_moved = False
        # The chunked penalty gradient's two buffers per dtype and device, kept between calls instead of
        # two CHUNK-sized allocations (2 MiB in fp32) at every step.
        self._scratch: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    # ----------------------------------------------------------------------------------- helpers
    def gather(self, names: Iterable[str]) -> tuple[list[nn.Parameter], list[Tensor], list[Tensor]]:
        """Parameters, importances and anchors of ``names`` (de-duplicated, in order)."""
        params: list[nn.Parameter] = []
        importance: list[Tensor] = []
        anchor: list[Tensor] = []
        for name in dict.fromkeys(names):
            if name not in self.params:
                raise KeyError(f"unknown regulariser group {name!r}")
            if self.lazy_anchors and name not in self.held and self._moved(name):
                self.hold_anchors([name])
            params += self.params[name]
            importance += self.importance[name]
            anchor += self.anchor[name]
        return params, importance, anchor

    @staticmethod
    def flat(table: Mapping[str, Sequence[Tensor]]) -> list[Tensor]:
        return [t for tensors in table.values() for t in tensors]

    # ---------------------------------------------------------------------------------- penalty
    def quadratic(self, names: Iterable[str], scale: float) -> Tensor:
        """Differentiable ``scale/2 * sum Omega (theta - theta*)^2`` over ``names``."""
        params, importance, anchor = self.gather(names)
        if not params:
            return torch.zeros(())
        terms = [(f * (p - a).square()).sum() for p, f, a in zip(params, importance, anchor)]
        return 0.5 * scale * torch.stack(terms).sum()

    @torch.no_grad()
    def add_quadratic_grad_(self, names: Iterable[str], scale: float) -> Tensor:
        """Add ``scale * Omega * (theta - theta*)`` into ``.grad``; return the penalty (detached 0-d).

        The same gradient ``quadratic(...).backward()`` would add, without a second autograd graph.
        On the CPU large tensors go through in cache-sized chunks with two small scratch buffers, so
        the work reads theta, theta*, Omega and the gradient once, writes the gradient once, and
        allocates nothing the size of the weights; small ones take whole-tensor foreach ops. On a GPU
        every tensor takes the foreach ops: a few launches for all of them, where chunks would launch
        four kernels per MiB (about 400 per paper-size batch), and its caches are not what chunks fit.
        """
        params, importance, anchor = self.gather(names)
        if not params:
            return torch.zeros(())
        grads: list[Tensor] = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        dots: list[Tensor] = []
        large = [i for i, p in enumerate(params) if p.device.type == "cpu" and p.numel() > CHUNK
                 and p.is_contiguous() and grads[i].is_contiguous()
                 and importance[i].is_contiguous() and anchor[i].is_contiguous()
                 and p.dtype == grads[i].dtype == importance[i].dtype == anchor[i].dtype]
        small = sorted(set(range(len(params))) - set(large))
        if small:
            diff = torch._foreach_sub([params[i].detach() for i in small], [anchor[i] for i in small])
            weighted = torch._foreach_mul([importance[i] for i in small], diff)
            dots += [torch.vdot(w.flatten(), d.flatten()) for w, d in zip(weighted, diff)]
            torch._foreach_add_([grads[i] for i in small], weighted, alpha=scale)
        for i in large:
            p = params[i]
            key = (p.dtype, p.device)
            if key not in self._scratch:
                self._scratch[key] = (p.new_empty(CHUNK), p.new_empty(CHUNK))
            scratch_d, scratch_w = self._scratch[key]
            pf, ff, af, gf = (t.view(-1) for t in (p.detach(), importance[i], anchor[i], grads[i]))
            for start in range(0, pf.numel(), CHUNK):
                stop = min(start + CHUNK, pf.numel())
                d = torch.sub(pf[start:stop], af[start:stop], out=scratch_d[: stop - start])
                w = torch.mul(ff[start:stop], d, out=scratch_w[: stop - start])
                dots.append(torch.dot(w, d))
                gf[start:stop].add_(w, alpha=scale)
        return 0.5 * scale * torch.stack(dots).sum()

    # ---------------------------------------------------------------------------- bookkeeping
    @torch.no_grad()
    def refresh_anchors(self) -> None:
        """Set every anchor ``theta*`` to the current weights (lazy anchors: views of them again)."""
        if not self.lazy_anchors:
            torch._foreach_copy_(self.flat(self.anchor), [p.detach() for p in self.flat(self.params)])
            return
        for name in self.held:
            self.anchor[name] = [p.detach() for p in self.params[name]]
        self.held.clear()
        self._versions = self._stamp()

    def _stamp(self) -> dict[str, list[int]]:
        """Every weight's in-place version counter (an optimiser step moves it)."""
        return {k: [p._version for p in v] for k, v in self.params.items()}

    def _moved(self, name: str) -> bool:
        return [p._version for p in self.params[name]] != self._versions[name]

    @torch.no_grad()
    def hold_anchors(self, names: Iterable[str]) -> None:
        """Lazy anchors: copy the anchors of ``names`` out of the weights, which are about to change.

        A group whose weights moved since the last refresh without this call (a step outside the
        hooks) has lost its old anchor; it is anchored at its current weights, with one warning line
        when its importance is not zero (before WPL starts, the weights train without the hooks and
        the importance is zero: the first architecture after the start is anchored at its weights).
        """
        if not self.lazy_anchors:
            return
        for name in dict.fromkeys(names):
            if name in self.held:
                continue
            if not self._warned_moved and self._moved(name) and any(bool(f.any()) for f in self.importance[name]):
                self._warned_moved = True  # (with a zero importance the old anchor weighed nothing)
                log.warning("%s: weights of group %r changed outside the regulariser's hooks since the last anchor "
                            "refresh; anchored at the current weights", type(self).__name__, name)
            self.anchor[name] = [p.detach().clone() for p in self.params[name]]
            self.held.add(name)

    @torch.no_grad()
    def set_importance(self, name: str, values: Sequence[Tensor]) -> None:
        """Replace the importance of group ``name`` by ``values`` (one tensor per parameter, same shapes).

        For importances estimated outside the hooks, e.g. a Fisher computed once from a trained model.
        """
        if name not in self.importance:
            raise KeyError(f"unknown regulariser group {name!r}")
        stored = self.importance[name]
        if len(values) != len(stored) or any(v.shape != s.shape for v, s in zip(values, stored)):
            raise ValueError(f"importance of {name!r} needs shapes {[tuple(s.shape) for s in stored]}, "
                             f"got {[tuple(v.shape) for v in values]}")
        torch._foreach_copy_(stored, list(values))

    @torch.no_grad()
    def zero_importance(self) -> None:
        torch._foreach_zero_(self.flat(self.importance))

    @torch.no_grad()
    def importance_stats(self, names: Iterable[str]) -> tuple[float, float]:
        """Mean per-tensor norm and largest entry of the importance of ``names``."""
        _, importance, _ = self.gather(names)
        if not importance:
            return 0.0, 0.0
        norms = torch.stack(torch._foreach_norm(importance))
        peak = torch.stack([f.max() for f in importance]).max()
        return float(norms.mean()), float(peak)

    # ------------------------------------------------------------------------------------ state
    def tables(self) -> dict[str, dict[str, list[Tensor]]]:
        """Every tensor table that ``state_dict`` saves, by key prefix (subclasses add their own)."""
        return {self.importance_key: self.importance, "anchor": self.anchor}

    def state_dict(self) -> dict[str, Tensor]:
        state: dict[str, Tensor] = {}
        for kind, table in self.tables().items():
            for name, tensors in table.items():
                for i, t in enumerate(tensors):
                    state[f"{kind}/{name}/{i}"] = t.detach().clone()
        return state

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        own = QuadraticStore.state_dict(self)  # the tables only: subclasses add and pop their scalars
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"{type(self).__name__} state does not match: missing {missing[:3]}, unexpected {unexpected[:3]}")
        tables = self.tables()
        for key, value in state.items():
            kind, name, i = key.rsplit("/", 2)
            target = tables[kind][name][int(i)]
            if target.shape != value.shape:
                raise ValueError(f"{type(self).__name__} state {key}: shape {tuple(value.shape)} != {tuple(target.shape)}")
            if kind == "anchor" and self.lazy_anchors and name not in self.held:
                if torch.equal(target, value.to(target.device, target.dtype)):
                    continue  # the anchor is the weights (a view): nothing to load
                self.anchor[name] = [p.detach().clone() for p in self.params[name]]
                self.held.add(name)
                target = self.anchor[name][int(i)]
            target.copy_(value)
        self._versions = self._stamp()
