"""Weight Plasticity Loss (Benyahia, Yu et al., ICML 2019) as one self-contained component.

WPL protects shared weights that mattered to previously trained models. It keeps, for each named
group of parameters (one group per shared edge or op), a diagonal Fisher estimate ``F`` built from
squared gradients and an anchor copy ``theta*`` of the weights, and penalises

    (s / 2) * sum_i F_i * (theta_i - theta*_i)^2

for the groups a sampled architecture uses. Two arithmetics exist (``mode``):

* ``"loss"`` -- the textbook form: ``F`` is a clipped moving average of ``g^2`` and ``s = alpha``.
* ``"compound"`` -- the arithmetic of the code behind the paper's figures: after the same moving
  average and clip, the *stored* Fisher is multiplied by ``alpha`` on every update and ``s = 1``.
  With ``(1 - lambda) * alpha > 1`` the stored Fisher therefore grows geometrically until the clip
  holds it at norm ``clip * alpha``.

Everything is vectorised over tensors with ``torch._foreach_*``; nothing loops over elements.
The object owns no parameters, so it is not an ``nn.Module``; it has its own ``state_dict``.
"""

from __future__ import annotations

import math
from typing import Iterable, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

Mode = Literal["compound", "loss"]
MODES: tuple[str, ...] = ("compound", "loss")
_CHUNK = 1 << 18  # elements per chunk of the direct penalty gradient (1 MiB in fp32: the scratch stays in L2)


def alpha_schedule(
    epoch: int,
    alpha: float,
    decay: float,
    decay_after: float,
    decay_mode: int,
    floor: float,
) -> float:
    """WPL strength for ``epoch`` (0-based).

    ``k = max(0, floor(epoch - decay_after + 1))`` decay steps have happened; mode 1 is linear
    (``alpha - decay * k``), mode 2 geometric (``alpha * decay ** k``). Once decay has started the
    value never drops below ``floor``.
    """
    k = max(0, math.floor(epoch - decay_after + 1))
    if k == 0:
        return alpha
    if decay_mode == 1:
        value = alpha - decay * k
    elif decay_mode == 2:
        value = alpha * decay**k
    else:
        raise ValueError(f"alpha_decay_mode must be 1 (linear) or 2 (geometric), got {decay_mode}")
    return max(value, floor)


class WPL:
    """Fisher and anchor state for named parameter groups, with the WPL penalty.

    Life cycle in a search: ``penalty``/``add_penalty_grad_`` while a sampled architecture trains,
    ``update_fisher`` from that architecture's gradients after its step, ``refresh_anchors`` after
    every step, ``reset`` at scheduled epochs.
    """

    def __init__(
        self,
        groups: Mapping[str, Sequence[nn.Parameter]],
        *,
        lambda_fisher: float = 0.9,
        clip_by_norm: float = 0.0,
        momentum: bool = True,
        mode: Mode = "compound",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"WPL mode must be one of {MODES}, got {mode!r}")
        if not groups:
            raise ValueError("WPL needs at least one parameter group")
        self.params: dict[str, list[nn.Parameter]] = {k: list(v) for k, v in groups.items()}
        self.lambda_fisher = lambda_fisher
        self.clip_by_norm = clip_by_norm
        self.momentum = momentum
        self.mode: Mode = mode
        self.fisher = {k: [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in v]
                       for k, v in self.params.items()}
        self.anchor = {k: [p.detach().clone() for p in v] for k, v in self.params.items()}

    # ----------------------------------------------------------------------------------- helpers
    def _gather(self, names: Iterable[str]) -> tuple[list[nn.Parameter], list[Tensor], list[Tensor]]:
        params: list[nn.Parameter] = []
        fisher: list[Tensor] = []
        anchor: list[Tensor] = []
        for name in dict.fromkeys(names):  # de-duplicate, keep order
            if name not in self.params:
                raise KeyError(f"unknown WPL group {name!r}")
            params += self.params[name]
            fisher += self.fisher[name]
            anchor += self.anchor[name]
        return params, fisher, anchor

    def _all(self, table: Mapping[str, list[Tensor]]) -> list[Tensor]:
        return [t for tensors in table.values() for t in tensors]

    def penalty_scale(self, alpha: float) -> float:
        """Factor in front of ``1/2 sum F (theta - theta*)^2``: alpha in loss mode, 1 in compound mode."""
        return alpha if self.mode == "loss" else 1.0

    # ---------------------------------------------------------------------------------- penalty
    def penalty(self, names: Iterable[str], alpha: float) -> Tensor:
        """Differentiable penalty for ``names`` (use ``add_penalty_grad_`` on hot paths)."""
        params, fisher, anchor = self._gather(names)
        if not params:
            return torch.zeros(())
        terms = [(f * (p - a).square()).sum() for p, f, a in zip(params, fisher, anchor)]
        return 0.5 * self.penalty_scale(alpha) * torch.stack(terms).sum()

    @torch.no_grad()
    def add_penalty_grad_(self, names: Iterable[str], alpha: float) -> Tensor:
        """Add the penalty's gradient ``s * F * (theta - theta*)`` straight into ``.grad``.

        Returns the penalty value (a detached 0-d tensor, no host synchronisation). This is the
        same gradient ``penalty(...).backward()`` would add, without a second autograd graph.

        Large tensors go through in cache-sized chunks with two small scratch buffers, so the work
        reads theta, theta*, F and the gradient once, writes the gradient once, and allocates nothing
        the size of the weights; small ones take whole-tensor foreach ops.
        """
        params, fisher, anchor = self._gather(names)
        if not params:
            return torch.zeros(())
        scale = self.penalty_scale(alpha)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        dots: list[Tensor] = []
        # Small or unusually laid out tensors: whole-tensor foreach ops (their temporaries are small).
        large = [i for i, p in enumerate(params) if p.numel() > _CHUNK and p.is_contiguous() and p.grad.is_contiguous()
                 and fisher[i].is_contiguous() and anchor[i].is_contiguous()
                 and p.dtype == p.grad.dtype == fisher[i].dtype == anchor[i].dtype]
        small = sorted(set(range(len(params))) - set(large))
        if small:
            diff = torch._foreach_sub([params[i].detach() for i in small], [anchor[i] for i in small])
            weighted = torch._foreach_mul([fisher[i] for i in small], diff)
            dots += [torch.vdot(w.flatten(), d.flatten()) for w, d in zip(weighted, diff)]
            torch._foreach_add_([params[i].grad for i in small], weighted, alpha=scale)
        scratch: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}
        for i in large:
            p = params[i]
            key = (p.dtype, p.device)
            if key not in scratch:
                scratch[key] = (p.new_empty(_CHUNK), p.new_empty(_CHUNK))
            scratch_d, scratch_w = scratch[key]
            pf, ff, af, gf = (t.view(-1) for t in (p.detach(), fisher[i], anchor[i], p.grad))
            for start in range(0, pf.numel(), _CHUNK):
                stop = min(start + _CHUNK, pf.numel())
                d = torch.sub(pf[start:stop], af[start:stop], out=scratch_d[: stop - start])
                w = torch.mul(ff[start:stop], d, out=scratch_w[: stop - start])
                dots.append(torch.dot(w, d))
                gf[start:stop].add_(w, alpha=scale)
        return 0.5 * scale * torch.stack(dots).sum()

    # ----------------------------------------------------------------------------------- fisher
    @torch.no_grad()
    def update_fisher(self, names: Iterable[str], alpha: float) -> None:
        """Fold the current ``.grad`` of the groups ``names`` into their Fisher.

        ``F <- (1 - lambda) F + lambda g^2`` (momentum) or ``F <- F + lambda g^2``; each tensor whose
        norm exceeds ``clip_by_norm`` (when > 0) is rescaled to that norm; in compound mode the
        result is then multiplied by ``alpha``. A parameter without a gradient counts as ``g = 0``.
        """
        params, fisher, _ = self._gather(names)
        if not params:
            return
        if self.momentum:
            torch._foreach_mul_(fisher, 1.0 - self.lambda_fisher)
        with_grad = [(f, p.grad) for f, p in zip(fisher, params) if p.grad is not None]  # g = 0 adds nothing
        if with_grad:
            torch._foreach_addcmul_([f for f, _ in with_grad], [g for _, g in with_grad], [g for _, g in with_grad],
                                    value=self.lambda_fisher)
        factor = alpha if self.mode == "compound" else 1.0
        if self.clip_by_norm > 0:
            # Per-tensor clip, then (compound) alpha: one multiplication by clip_scale * alpha per tensor.
            norms = torch.stack(torch._foreach_norm(fisher))
            scales = (self.clip_by_norm / norms).clamp(max=1.0) * factor  # norm 0 gives inf, clamped to 1
            torch._foreach_mul_(fisher, list(scales.unbind()))
        elif factor != 1.0:
            torch._foreach_mul_(fisher, factor)

    @torch.no_grad()
    def refresh_anchors(self) -> None:
        """Set every anchor ``theta*`` to the current weights."""
        torch._foreach_copy_(self._all(self.anchor), [p.detach() for p in self._all(self.params)])

    @torch.no_grad()
    def reset(self) -> None:
        """Zero every Fisher tensor (the paper's periodic reset)."""
        torch._foreach_zero_(self._all(self.fisher))

    @torch.no_grad()
    def fisher_stats(self, names: Iterable[str]) -> tuple[float, float]:
        """Mean per-tensor norm and largest entry of the stored Fisher of ``names``."""
        _, fisher, _ = self._gather(names)
        if not fisher:
            return 0.0, 0.0
        norms = torch.stack(torch._foreach_norm(fisher))
        peak = torch.stack([f.max() for f in fisher]).max()
        return float(norms.mean()), float(peak)

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Tensor]:
        state: dict[str, Tensor] = {}
        for kind, table in (("fisher", self.fisher), ("anchor", self.anchor)):
            for name, tensors in table.items():
                for i, t in enumerate(tensors):
                    state[f"{kind}/{name}/{i}"] = t.detach().clone()
        return state

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"WPL state does not match: missing {missing[:3]}, unexpected {unexpected[:3]}")
        for key, value in state.items():
            kind, name, i = key.split("/")
            target = (self.fisher if kind == "fisher" else self.anchor)[name][int(i)]
            if target.shape != value.shape:
                raise ValueError(f"WPL state {key}: shape {tuple(value.shape)} != {tuple(target.shape)}")
            target.copy_(value)
