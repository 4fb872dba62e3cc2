"""Mean cross-entropy over a large vocabulary that keeps one logits-sized tensor for its backward.

``F.cross_entropy`` saves the log-probabilities (a second logits-sized tensor beside the logits the
caller still holds) and its backward allocates two more (the gradient of the log-probabilities, then
that of the logits). At the paper's RNN size each is 64 x 35 x 10,000 floats = 85 MiB, and together
they make the largest block of a training step's memory peak. Here the forward keeps the logits
(already alive) and one log-sum-exp per row; the backward writes ``softmax - onehot`` straight into
the one gradient it returns. Rows go through in chunks, so no other logits-sized temporary exists.
Same value and gradient as ``F.cross_entropy`` within float rounding (tests/test_rnn.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

ROWS = 256  # rows per chunk: 10 MB of a 10,000-word vocabulary in fp32


class _TokenCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor) -> Tensor:
        lse = logits.new_empty(logits.size(0))
        for start in range(0, logits.size(0), ROWS):
            torch.logsumexp(logits[start:start + ROWS], 1, out=lse[start:start + ROWS])
        picked = logits.gather(1, targets[:, None]).squeeze(1)
        ctx.save_for_backward(logits, lse, targets)
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        logits, lse, targets = ctx.saved_tensors
        scale = grad / logits.size(0)
        out = torch.empty_like(logits)
        for start in range(0, logits.size(0), ROWS):
            rows = slice(start, start + ROWS)
            torch.sub(logits[rows], lse[rows, None], out=out[rows]).exp_().mul_(scale)
        at = targets[:, None]
        out.scatter_(1, at, out.gather(1, at) - scale)  # one target per row: no accumulation, deterministic
        return out, None


def token_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """``F.cross_entropy(logits, targets)`` (mean over rows; ``logits`` (rows, vocabulary), fp32) with
    one logits-sized tensor kept for the backward; other dtypes and no-grad calls take ``F.cross_entropy``."""
    if logits.dtype != torch.float32 or not (torch.is_grad_enabled() and logits.requires_grad):
        return F.cross_entropy(logits, targets)
    return _TokenCrossEntropy.apply(logits, targets)
