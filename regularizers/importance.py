"""Per-sample gradient statistics over a task's data, for end-of-task importances (EWC, MAS).

``torch.func`` gives every sample's own gradient in one vectorised call (``vmap(grad(...))``), so
the mean of ``g^2`` (a diagonal Fisher) or of ``|g|`` (MAS) is exact per sample, not the square
of a batch mean. The model runs in eval mode (no dropout, batch norm on running statistics) while
the statistic is taken.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from regularizers.base import TaskData

Score = Callable[[Tensor, Tensor], Tensor]  # (logits of one sample, its label) -> scalar
LABELS = ("data", "sampled", "predicted")  # where mean_per_sample's labels come from


def log_likelihood(logits: Tensor, label: Tensor) -> Tensor:
    return -F.cross_entropy(logits.unsqueeze(0), label.unsqueeze(0))


def squared_output_norm(logits: Tensor, label: Tensor) -> Tensor:
    return logits.square().sum()


def mean_squared_output_norm(logits: Tensor) -> Tensor:
    """MAS's objective over a batch: the mean over samples (every leading index of ``logits``, e.g.
    each token of a language model's ``(T, B, V)`` outputs) of ``squared_output_norm``."""
    return logits.flatten(0, -2).square().sum(-1).mean()


def mean_per_sample(task: TaskData, params: Sequence[Tensor], score: Score, statistic: str,
                    max_samples: int, labels: str = "data", seed: int = 0) -> list[Tensor]:
    """Mean over up to ``max_samples`` samples of ``g^2`` (``statistic="square"``) or ``|g|`` (``"abs"``).

    ``g`` is the gradient of ``score(f(x), y)`` with respect to each of ``params``. ``labels`` says which
    ``y``: ``"data"`` (the empirical Fisher), ``"sampled"`` from the model's predictive distribution (the
    Fisher information proper) or ``"predicted"``, the model's most likely class (van de Ven & Tolias's
    and Hsu et al.'s code: the mode of that distribution, no sampling noise).
    """
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {LABELS}, got {labels!r}")
    model = task.model
    names = {id(p): n for n, p in model.named_parameters()}
    missing = [p for p in params if id(p) not in names]
    if missing:
        raise ValueError("every regularised parameter must belong to the task's model")
    wanted = [names[id(p)] for p in params]
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in set(wanted)}
    fixed.update({n: b for n, b in model.named_buffers()})

    def sample_score(free: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, {**fixed, **free}, (x.unsqueeze(0),), task.kwargs)[0]
        return score(logits, y)

    per_sample = vmap(grad(sample_score), in_dims=(None, 0, 0))
    free = {n: p.detach() for n, p in zip(wanted, params)}
    sums = [torch.zeros_like(p) for p in params]
    generator = torch.Generator().manual_seed(seed)
    seen = 0
    was_training = model.training
    model.eval()
    try:
        for x, y in task.batches:
            x, y = x[: max_samples - seen], y[: max_samples - seen]
            if labels != "data":
                with torch.no_grad():
                    logits = model(x, **task.kwargs)
                if labels == "predicted":
                    y = logits.argmax(-1).to(y.device)
                else:
                    probs = F.softmax(logits, dim=-1)
                    y = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(y.device)
            grads = per_sample(free, x, y)
            for total, name in zip(sums, wanted):
                g = grads[name]
                total += (g.square() if statistic == "square" else g.abs()).sum(0)
            seen += len(x)
            if seen >= max_samples:
                break
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("no samples to estimate an importance from")
    return [s / seen for s in sums]
