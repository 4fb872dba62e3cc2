"""Shared pieces of the search benchmark (bench_search.py): sizes, timers, synthetic data, reference matmuls.

Every timed region starts and ends with a CUDA synchronisation when ``DEVICE`` (set by
bench_search.py's ``--device``) is a GPU.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class Size:
    ntokens: int
    hid: int
    num_blocks: int
    batch: int
    bptt: int
    cnn_filters: int
    cnn_repeat: int
    cnn_modules: int
    cnn_blocks: int
    cnn_batch: int
    cnn_image: int


SIZES = {
    "paper": Size(10_000, 1000, 12, 64, 35, 384, 5, 3, 5, 32, 32),
    "small": Size(10_000, 256, 12, 64, 35, 96, 2, 3, 5, 32, 32),
    "tiny": Size(200, 32, 4, 8, 12, 24, 1, 3, 3, 4, 16),
}
ALPHA = 60.0  # the paper command's --alpha_fisher (compound mode, Fisher clip 10)


# ------------------------------------------------------------------------------------ helpers
DEVICE = torch.device("cpu")  # --device; every timed region ends (and starts) with a CUDA synchronisation


def now() -> float:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_gpu_mib() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if DEVICE.type == "cuda" else 0.0


def timed(fn: Callable[[], Any]) -> float:
    start = now()
    fn()
    return now() - start


def timed2(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of ``fn()``."""
    wall, cpu = now(), time.process_time()
    fn()
    return now() - wall, time.process_time() - cpu


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average: {loadavg()}"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def matmul_gflops(m: int, k: int, n: int, calls: int = 3, keep: bool = True) -> tuple[float, float]:
    """Rate of an ``[m x k] @ [k x n]`` fp32 matmul (operands reused, warm), per wall-clock second
    and per CPU second: the median of ``calls`` timings of enough products to last ~0.1 s. Without
    ``keep`` the operands are dropped afterwards (they would otherwise count in the peak RSS)."""
    a, b = _MM_CACHE.setdefault((m, k, n), (torch.randn(m, k, device=DEVICE), torch.randn(k, n, device=DEVICE)))
    if not keep:
        del _MM_CACHE[(m, k, n)]
    out = torch.empty(m, n, device=DEVICE)
    flop = 2.0 * m * k * n
    inner = max(1, int(5e9 / flop))  # about 0.1 s at 50 GFLOP/s

    def run() -> None:
        for _ in range(inner):
            torch.mm(a, b, out=out)

    run()
    times = [timed2(run) for _ in range(calls)]
    wall = statistics.median(t[0] for t in times)
    cpu = statistics.median(t[1] for t in times)
    return flop * inner / wall / 1e9, flop * inner / max(cpu, 1e-9) / 1e9


_MM_CACHE: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def rnn_step_flops(s: Size) -> float:
    """Matmul FLOPs of one training batch: (cell + decoder) forward, x3 for forward + backward."""
    tokens = s.bptt * s.batch
    cell = tokens * (2 * 2 * s.hid * s.hid  # node 0's input projection (embed = hid)
                     + s.num_blocks * 2 * 2 * s.hid * s.hid)  # W_h0 and one fused (2 hid x hid) per edge
    decoder = tokens * 2 * s.hid * s.ntokens
    return 3.0 * (cell + decoder)


def rnn_matmuls(s: Size, training: bool) -> list[tuple[int, int, int, int]]:
    """The fp32 matmuls of one batch through the fused cell (``models/rnn_cell.py``) and the decoder,
    as ``(m, k, n, count)`` for ``[m x k] @ [k x n]``: the forward, and with ``training`` the backward.

    Why shapes and not one rate: the recurrence forces one ``[B x hid] @ [hid x 2 hid]`` product per
    node and time step (and its transpose in the backward), and on a CPU that shape runs well below a
    ``[T*B x hid]`` product's rate; only the input projection, the decoder and the weight gradients
    (folded over ``TIME_CHUNK`` steps) see many rows. The FLOPs sum to :func:`rnn_step_flops` less
    the one product into the initial state, which needs no gradient (``tests/test_bench_arithmetic.py``
    records the products a real batch dispatches and compares).
    """
    from models.rnn_cell import TIME_CHUNK

    tb, h, steps = s.batch * s.bptt, s.hid, s.bptt * s.num_blocks
    chunk = min(TIME_CHUNK, s.bptt)
    forward = [(tb, h, 2 * h, 1),  # node 0's input projection, every step at once
               (s.batch, h, 2 * h, steps),  # W_h0 and one edge per node, step by step
               (tb, h, s.ntokens, 1)]  # the decoder
    if not training:
        return forward
    full, rest = divmod(s.bptt, chunk)
    backward = [(tb, 2 * h, h, 1), (2 * h, tb, h, 1),  # input projection: d input, d weight
                (s.batch, 2 * h, h, steps - 1),  # d h_in = dpre @ W, step by step (none into the detached h0)
                (2 * h, s.batch * chunk, h, s.num_blocks * full),  # d W, folded per chunk of time steps
                (tb, s.ntokens, h, 1), (s.ntokens, tb, h, 1)]  # the decoder: d input, d weight
    if rest:
        backward.append((2 * h, s.batch * rest, h, s.num_blocks))
    return forward + backward


def roofline_s(matmuls: list[tuple[int, int, int, int]]) -> tuple[float, float]:
    """Seconds (wall-clock, CPU) that ``matmuls`` take at the rate each shape runs at alone, measured
    now in this process: the floor for a step made of them, whatever its elementwise work."""
    wall = cpu = 0.0
    for m, k, n, count in matmuls:
        rate, rate_cpu = matmul_gflops(m, k, n, keep=False)
        wall += count * 2.0 * m * k * n / rate / 1e9
        cpu += count * 2.0 * m * k * n / rate_cpu / 1e9
    return wall, cpu


def synthetic_corpus(s: Size, seed: int) -> Any:
    from data.text import Corpus

    g = torch.Generator().manual_seed(seed)
    n_train = s.batch * (s.bptt * 8 + 1)
    n_valid = s.batch * (s.bptt * 8 + 1)
    words = [f"w{i}" for i in range(s.ntokens)]
    return Corpus(words, torch.randint(s.ntokens, (n_train,), generator=g),
                  torch.randint(s.ntokens, (n_valid,), generator=g), torch.randint(s.ntokens, (s.bptt * 4,), generator=g))


def preset_fields(cfg_type: type, preset: str) -> dict[str, Any]:
    """The values ``--preset`` gives the fields of a space configuration (config.PRESETS)."""
    import dataclasses

    import config

    names = {f.name for f in dataclasses.fields(cfg_type)}
    return {k: v for k, v in config.PRESETS[preset].items() if k in names}



# ------------------------------------------------------------------------- launches per step
CELL_MARKS = ("SharedRNN.cell", "UnrolledCellBackward", "GraphedCellBackward")  # forward label, backward nodes
LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch",
            "cudaMemcpyAsync", "cudaMemsetAsync")


# ATen operators that launch no kernel: views and allocations; and those that compute only when they
# must copy, which then shows as a computing operator nested below them (not so: ``to`` a dtype a tensor
# already has, a ``reshape`` that is a ``view``).
NO_KERNEL = frozenset(f"aten::{name}" for name in (
    "view", "select", "slice", "transpose", "t", "as_strided", "unsqueeze", "squeeze", "expand", "expand_as",
    "permute", "alias", "detach", "narrow", "unbind", "split", "chunk", "view_as", "_unsafe_view",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "resize_", "lift_fresh"))
COPY_IF_NEEDED = frozenset(("aten::to", "aten::reshape", "aten::contiguous", "aten::type_as"))


def profile_counts(fn: Callable[[], Any]) -> dict[str, float]:
    """What one call of ``fn`` dispatches, from ``torch.profiler``: measurable without a GPU.

    * ``ops``: outermost ATen operators (the per-op Python and dispatcher cost on any device);
      ``kernel_ops``: those of them that compute (views and allocations left out: ``NO_KERNEL``),
      each one kernel or more on a GPU; ``cell_ops``: those inside the RNN cell (its forward and its
      autograd node), the part a CUDA graph replays in one launch;
    * on CUDA also ``launches`` (kernel, graph, copy and memset launches the host made), ``kernels``
      (device activities, graph-replayed kernels included where the profiler sees them),
      ``kernel_s`` (their summed time) and ``syncs`` (host synchronisations, counted by
      ``torch.cuda.set_sync_debug_mode`` in a second, unprofiled call).
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
    counts = {"ops": 0.0, "kernel_ops": 0.0, "cell_ops": 0.0}
    kernels, kernel_us, launches = 0, 0.0, 0
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            kernels += 1
            kernel_us += e.time_range.elapsed_us()
            continue
        if e.name in LAUNCHES:
            launches += 1
            continue
        compiled = e.name.startswith("Torch-Compiled Region")  # the project's compiled regions: one kernel each
        if not (e.name.startswith("aten::") or compiled):
            continue
        nested = in_cell = False
        parent = e.cpu_parent
        while parent is not None:
            nested = nested or parent.name.startswith("aten::")
            in_cell = in_cell or any(mark in parent.name for mark in CELL_MARKS)
            parent = parent.cpu_parent
        if compiled:
            counts["kernel_ops"] += not nested
        elif not nested:
            counts["ops"] += 1
            counts["kernel_ops"] += e.name not in NO_KERNEL and (
                e.name not in COPY_IF_NEEDED or any(c.name not in NO_KERNEL for c in e.cpu_children))
            counts["cell_ops"] += in_cell
    if DEVICE.type == "cuda":
        counts.update(launches=launches, kernels=kernels, kernel_s=kernel_us / 1e6, syncs=count_syncs(fn))
    return counts


def count_syncs(fn: Callable[[], Any]) -> int:
    """Host synchronisations during ``fn()``, as ``torch.cuda.set_sync_debug_mode("warn")`` reports them."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)
