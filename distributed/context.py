"""Who this process is in a data-parallel job, and the process group's lifetime.

Every worker, whether ``torchrun`` or our own launcher (:mod:`distributed.launch`) started it, learns its
place from the same environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``), so there is one worker code path. The current :class:`World` is module state because
the data streams, the evaluation and the run directory all ask it, and threading it through every
constructor would change every plug-in's signature for a value that never varies within a process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from utils import UserError


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` workers (``local_rank``: its index on its own node)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where collectives' small tensors live (NCCL reduces CUDA tensors only)

    @property
    def active(self) -> bool:
        """More than one worker: collectives run and data is sharded."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only worker that writes the run directory and logs at INFO."""
        return self.rank == 0

    def part(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (shares differ by at most one item)."""
        return slice(self.rank * n // self.size, (self.rank + 1) * n // self.size)


_world = World()


def world() -> World:
    return _world


def from_env() -> World:
    """The world the launcher's environment describes (a single process when it describes none)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return World(rank, size, int(os.environ.get("LOCAL_RANK", str(rank))))


def backend_for(requested: str, device: torch.device) -> str:
    """``auto``: NCCL for CUDA devices, gloo otherwise."""
    if requested != "auto":
        return requested
    return "nccl" if device.type == "cuda" else "gloo"


def start(w: World, backend: str, timeout_s: float, device: torch.device) -> None:
    """Join the process group of ``w`` (nothing when it has one worker); collectives time out after
    ``timeout_s`` so that a rank that hangs ends the job instead of stalling it forever."""
    global _world
    if w.active:
        if backend == "nccl" and device.type != "cuda":
            raise UserError(f"--dist_backend=nccl needs a CUDA device per rank, and rank {w.rank} runs on {device}: "
                            f"use --dist_backend=gloo (or auto)")
        if timeout_s <= 0:
            raise UserError(f"--dist_timeout={timeout_s:g}: the seconds a collective waits must be positive")
        try:
            dist.init_process_group(backend, rank=w.rank, world_size=w.size, timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as err:  # DistError, DistStoreError (a peer or the store never came)
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise UserError(f"rank {w.rank} of {w.size} could not join the process group at {where} within "
                            f"--dist_timeout={timeout_s:g} s ({reason}): are all {w.size} workers started?") from err
    _world = World(w.rank, w.size, w.local_rank, str(device) if backend == "nccl" else "cpu")


def finish() -> None:
    """A worker's clean end: wait for every rank, then leave the group.

    Without the barrier the first rank to leave (rank 0 hosts the store) can take the store away while
    a slower rank is still leaving; that rank then aborts after its work is done ("terminate called
    without an active exception", SIGABRT), and the launcher reports a finished job as failed: 4 of 20
    finished two-rank jobs on the CPU did so (``python -m benchmarks.stress_dist_exit``)."""
    if _world.active and dist.is_available() and dist.is_initialized():
        dist.barrier()
    stop()


def stop() -> None:
    """Leave the process group, if any (every exit path of a worker calls it)."""
    global _world
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _world = World()


def peer_failure(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because another rank died or timed out (gloo raises a
    plain RuntimeError naming its transport; NCCL and the store raise ``DistError``)."""
    text = str(err)
    return isinstance(err, getattr(dist, "DistError", ())) or any(
        mark in text for mark in ("gloo", "NCCL", "Timed out", "timed out", "Connection closed", "Connection reset"))
