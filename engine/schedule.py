"""Optimisers and learning-rate schedules built from a search space's :class:`~spaces.base.OptimSpec`."""

from __future__ import annotations

import math
from typing import Any

import torch

from spaces.base import OptimSpec


def build_optimizer(spec: OptimSpec, params: Any, kind: str = "sgd") -> torch.optim.Optimizer:
    """``kind`` is ``"sgd"`` (with the spec's momentum and Nesterov flag) or ``"adam"``."""
    if kind == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov,
                           weight_decay=spec.weight_decay)


def cosine(lr_max: float, lr_min: float, epoch: float, max_epoch: int) -> float:
    """Cosine annealing from ``lr_max`` at epoch 0 to ``lr_min`` at ``max_epoch``."""
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * epoch / max(1, max_epoch)))


def scheduled_lr(spec: OptimSpec, epoch: float, max_epoch: int) -> float:
    """The spec's learning rate at ``epoch`` (a fraction within an epoch where the caller sets it per step):
    cosine, or step decay ``lr * decay ** k`` after ``decay_after``; times the final anneal where the spec has one."""
    if spec.schedule == "cosine":
        lr = cosine(spec.lr, spec.lr_min, epoch, max_epoch)
    else:
        lr = spec.lr * spec.decay ** max(0, math.floor(epoch - spec.decay_after + 1))
    return lr * anneal_factor(spec.anneal, epoch, max_epoch)


def anneal_factor(anneal: float, epoch: float, max_epoch: int) -> float:
    """1 until the last ``anneal`` fraction of ``max_epoch`` epochs, then falling linearly to 0 at the end.

    Why: at a budget of a few epochs and SGD's lr 20, the weights at the end are one sample of a noisy walk
    (a cell's validation perplexity moves by 20-50 % between consecutive shared steps, docs/ranking.md);
    annealing the step size makes the end a measurement of the architecture instead.
    """
    if anneal <= 0:
        return 1.0
    return min(1.0, max(0.0, (max_epoch - epoch) / (anneal * max_epoch)))
