"""``python main.py --num_gpu=N ...`` (N > 1): start N local workers and watch them, as torchrun would.

The workers are the same ``main.py`` command started with torchrun's environment variables (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` on a free local port), so a worker
started here and one started by ``torchrun`` run one code path. Plain subprocesses rather than
``torch.multiprocessing``: the launcher then only waits on process ids, sees any worker's exit at
once, forwards SIGTERM (schedulers stop jobs with it) and never imports a worker's state.

Faults: when a worker exits with an error (or is killed) while others still run, the others are
stopped (SIGTERM, then SIGKILL after a grace period) and one line names the worker; the job exits
with that worker's code. A worker that hangs is ended by the collectives' ``--dist_timeout``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

GRACE_S = 10.0  # how long stopped workers get to save and exit before SIGKILL
POLL_S = 0.1


def wanted(num_gpu: int) -> bool:
    """Whether this process should launch workers: ``--num_gpu > 1`` and not itself a worker."""
    return num_gpu > 1 and "WORLD_SIZE" not in os.environ


def free_port() -> int:
    """A TCP port free on this host right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_env(rank: int, nprocs: int, port: int, threads: int) -> dict[str, str]:
    env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nprocs),
           "LOCAL_WORLD_SIZE": str(nprocs), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


def exit_text(code: int) -> str:
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"


def shell_code(code: int) -> int:
    """A worker's return code as a shell reports it (128 + signal for a killed one)."""
    return 128 - code if code < 0 else code


def launch(argv: Sequence[str], nprocs: int, entry: Path) -> int:
    """Run ``entry`` with ``argv`` as ``nprocs`` workers; their common exit code, or the first failure's.

    Each worker gets ``cores / nprocs`` OpenMP threads unless ``OMP_NUM_THREADS`` is set (torchrun gives 1).
    """
    port = free_port()
    threads = max(1, (os.cpu_count() or 1) // nprocs)
    procs = [subprocess.Popen([sys.executable, str(entry), *argv], env=worker_env(r, nprocs, port, threads))
             for r in range(nprocs)]
    stopping: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        """SIGTERM goes to every worker; Ctrl-C's SIGINT already reached them (one process group)."""
        stopping.append(signum)
        for p in procs:
            if signum == signal.SIGTERM and p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return watch(procs, stopping)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        end(procs)


def watch(procs: list[subprocess.Popen], stopping: list[int]) -> int:
    """Wait until every worker has exited; on the first failure, stop the rest and name the failed rank."""
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            failed = [c for c in codes if c]
            return shell_code(failed[0]) if failed else 0
        bad = next(((r, c) for r, c in enumerate(codes) if c not in (None, 0)), None)
        if bad is not None and not stopping:
            rank, code = bad
            print(f"error: rank {rank} (pid {procs[rank].pid}) {exit_text(code)}; stopping the other "
                  f"{len(procs) - 1} rank(s). See its messages above; the run resumes from its last checkpoint "
                  f"with --resume=True", file=sys.stderr, flush=True)
            end(procs)
            return shell_code(code)
        time.sleep(POLL_S)


def end(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every worker still running, then SIGKILL those alive after ``GRACE_S``."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.time() + GRACE_S
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
