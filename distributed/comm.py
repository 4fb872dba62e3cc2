"""The collectives of data-parallel training, each a no-op (returning its input) in a single process.

Gradients: every rank trains the same architecture on its shard, so the set of parameters that received
a gradient is the same on every rank (weight sharing leaves most of the shared model without one in a
step). Those gradients, and the loss, travel as one flat bucket in one ``all_reduce``: no per-parameter
calls, no DDP wrapper (whose unused-parameter detection would walk the whole graph every step and
whose hooks assume one fixed module). ``STATS`` counts the bytes and seconds it costs.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from distributed.context import world
from utils import UserError


class RanksDiverged(UserError):
    """Two ranks hold different values of something that must be identical everywhere."""


@dataclass
class CommStats:
    """What the gradient all-reduce has cost in this process (read by the benchmark)."""

    calls: int = 0
    bytes: int = 0
    seconds: float = 0.0


STATS = CommStats()


def average_gradients(params: Sequence[nn.Parameter], loss: Tensor, buffers: Sequence[Tensor] = ()) -> Tensor:
    """Replace each ``.grad`` of ``params`` and each of ``buffers`` by its mean over the ranks; return the
    ranks' mean ``loss``.

    ``buffers`` are the running statistics a training forward has just updated from this rank's shard
    (batch norms); their mean keeps them identical on every rank (exactly the one-process running mean,
    since that update is linear in the batch mean). A non-finite loss on any rank makes the mean
    non-finite, so every rank skips the same steps.
    """
    w = world()
    if not w.active:
        return loss
    targets = [p.grad for p in params if p.grad is not None] + list(buffers)
    start = time.perf_counter()
    bucket = torch.cat([*(t.reshape(-1).to(params[0].dtype) for t in targets), loss.reshape(1).to(params[0].dtype)])
    dist.all_reduce(bucket)
    bucket /= w.size
    offset = 0
    for t in targets:
        n = t.numel()
        t.copy_(bucket[offset:offset + n].view_as(t))
        offset += n
    STATS.calls += 1
    STATS.bytes += bucket.numel() * bucket.element_size()
    STATS.seconds += time.perf_counter() - start
    return bucket[-1].to(loss.dtype)


def sum_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over the ranks, in place."""
    if world().active:
        dist.all_reduce(tensor)
    return tensor


def mean_(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over the ranks, in place."""
    w = world()
    if w.active:
        dist.all_reduce(tensor)
        tensor /= w.size
    return tensor


def sum_values(values: Sequence[float], sharded: bool = True) -> list[float]:
    """The ranks' sums of each of ``values`` (float64); ``sharded=False`` (every rank computed the whole
    thing) returns them as they are."""
    if not world().active or not sharded:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=world().device)
    dist.all_reduce(t)
    return t.tolist()


def from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object: a time stamp, a run id)."""
    if not world().active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a file the others read)."""
    if world().active:
        dist.barrier()


def gather_rows(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order (a carried state of the whole batch)."""
    w = world()
    if not w.active:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(w.size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def fingerprint(state: Any) -> Tensor:
    """Two float64 numbers that differ when any number in ``state`` (nested dicts, lists, tensors,
    floats: a ``state_dict``) differs: a sum and a position-weighted sum."""
    total = torch.zeros(2, dtype=torch.float64)
    for t in _numbers(state):
        flat = t.detach().reshape(-1).double().cpu()
        total[0] += flat.sum()
        total[1] += (flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64).sin()).sum()
    return total


def _numbers(state: Any) -> Iterator[Tensor]:
    if torch.is_tensor(state):
        if state.numel() and not state.is_complex():
            yield state
    elif isinstance(state, dict):
        for key in sorted(state, key=str):
            yield from _numbers(state[key])
    elif isinstance(state, (list, tuple)):
        for item in state:
            yield from _numbers(item)
    elif isinstance(state, (int, float)) and not isinstance(state, bool):
        yield torch.tensor([float(state)])


def text_fingerprint(text: str) -> Tensor:
    return torch.tensor([float(zlib.crc32(text.encode())), 0.0], dtype=torch.float64)


def agree(what: str, values: Tensor) -> None:
    """Raise :class:`RanksDiverged` unless every rank holds exactly ``values`` (two small all-reduces)."""
    if not world().active:
        return
    high = values.to(world().device, torch.float64).clone()
    low = -high
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MAX)
    if not torch.equal(high, -low):
        raise RanksDiverged(f"the ranks' {what} differ (rank {world().rank} sees a mismatch): every rank must run "
                            f"the same code, options and data; rerun with the same command on every node")
