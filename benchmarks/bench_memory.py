"""Where the RNN search's memory goes: resident memory per phase, and what is alive at the allocator's peak.

    python -m benchmarks.bench_memory --size paper|small|tiny [--threads N] [--no-malloc-tune] [--no-alloc-profile]

Builds the search's RNN trainer as ``bench_rnn.py`` does (the shared model, the search's WPL with its
Fisher and anchor tables, the REINFORCE sampler) and prints:

* the persistent tables, from their sizes: parameters (embedding/decoder, node 0, edges), WPL's
  Fisher and anchors;
* resident memory (``VmRSS``) after the imports, after building, and the peak (``VmHWM``, reset
  through ``/proc/self/clear_refs`` before each phase where the kernel allows it) of a plain shared
  batch, a WPL batch and a Fisher refresh, each after a warm-up of every phase;
* with the allocation profile (default), the bytes the tensors hold at their peak during one WPL
  batch and one Fisher refresh, above what was alive when the phase started, grouped by the
  operator (or autograd node) that allocated them: the transient part of the peak, by owner.

The difference between the resident peak and the persistent tables plus the transient peak is the
interpreter, the libraries and what the allocator keeps (``utils.keep_freed_memory`` keeps freed
blocks in the heap; ``--no-malloc-tune`` shows the process without it).
"""

from __future__ import annotations

import argparse
import collections
import sys
from typing import Any, Callable

import torch

from benchmarks import bench_util as U
from benchmarks.bench_rnn import build_trainer, fisher_refresh, shared_batch
from utils import keep_freed_memory

MIB = float(1 << 20)


def status_mib(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` of this process from ``/proc/self/status`` (MiB; 0 where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` 5); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def owner(path: tuple[str, ...]) -> str:
    """A readable owner for an allocation: its autograd node (backward) or outermost operator, and the
    innermost operator that is not an allocation primitive."""
    plain = [n for n in path if n not in ("aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty",
                                          "aten::new_empty_strided", "aten::resize_", "aten::zeros", "aten::new_zeros")]
    outer = next((n.replace("autograd::engine::evaluate_function: ", "bwd ") for n in path if n.startswith("autograd::")),
                 plain[0] if plain else (path[0] if path else "?"))
    inner = plain[-1] if plain else (path[-1] if path else "?")
    return outer if inner == outer else f"{outer} / {inner}"


def allocation_peak(fn: Callable[[], Any]) -> tuple[float, dict[str, float]]:
    """Run ``fn`` under the profiler's memory events; the peak of the bytes allocated during it and
    still alive (MiB), and those bytes grouped by :func:`owner` at that moment."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events: list[tuple[int, int, int, tuple[str, ...]]] = []

    def walk(node: Any) -> None:
        if type(node.extra_fields).__name__ == "_ExtraFields_Allocation":
            path, p = [], node.parent
            while p is not None:
                path.append(p.name)
                p = p.parent
            events.append((node.start_time_ns, node.extra_fields.ptr, node.extra_fields.alloc_size, tuple(reversed(path))))
        for child in node.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    events.sort(key=lambda e: e[0])
    live: dict[int, tuple[int, str]] = {}
    total = peak = 0
    at_peak: dict[int, tuple[int, str]] = {}
    for _, ptr, size, path in events:
        if size > 0:
            live[ptr] = (size, owner(path))
            total += size
            if total > peak:
                peak, at_peak = total, dict(live)
        elif ptr in live:  # a block allocated before the phase started is not counted when freed
            total -= live.pop(ptr)[0]
    groups: dict[str, float] = collections.defaultdict(float)
    for size, name in at_peak.values():
        groups[name] += size / MIB
    return peak / MIB, dict(sorted(groups.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=list(U.SIZES), default="small")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-malloc-tune", dest="malloc_tune", action="store_false")
    p.add_argument("--no-alloc-profile", dest="alloc_profile", action="store_false",
                   help="skip the allocation profile (it runs one more WPL batch and Fisher refresh)")
    p.add_argument("--top", type=int, default=12, help="owners listed per allocation peak")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tuned = keep_freed_memory() if args.malloc_tune else False
    out: dict[str, Any] = {"size": args.size, "threads": torch.get_num_threads(), "malloc_tuned": tuned,
                           "loadavg_start": U.loadavg(), "rss_imports_mib": status_mib("VmRSS")}
    s = U.SIZES[args.size]
    build = argparse.Namespace(seed=args.seed, amp=False, compile=False, cuda_graphs=False, preset="paper",
                               controller_device="cpu", plain_cell=False)
    trainer, wpl = build_trainer(s, build)
    model = trainer.space.model
    arch = trainer.space.random_arch(torch.Generator().manual_seed(args.seed))
    numel = {"parameters": sum(q.numel() for q in model.parameters()),
             "  embedding = decoder": model.encoder.weight.numel() + model.decoder.bias.numel(),
             "  edges": sum(q.numel() for q in model.edges.parameters()),
             "WPL Fisher": sum(t.numel() for t in wpl.flat(wpl.fisher)),
             "WPL anchors": sum(t.numel() for t in wpl.flat(wpl.anchor)),
             "gradients of one architecture": sum(q.numel() for q in model.parameters()) - sum(
                 q.numel() for name, e in model.edges.items() if name not in trainer.space.groups_for(arch)
                 for q in e.parameters())}
    out["tables_mib"] = {k: v * 4 / MIB for k, v in numel.items()}
    out["rss_built_mib"] = status_mib("VmRSS")
    for _ in range(2):  # warm-up: every phase twice (the allocator's heap reaches its steady size)
        shared_batch(trainer, arch, None)
        shared_batch(trainer, arch, wpl)
        fisher_refresh(trainer, arch, wpl)
    out["rss_warm_mib"] = status_mib("VmRSS")
    out["peak_rss_warmup_mib"] = U.peak_rss_mib()  # before any reset: the peak of building and warming up
    can_reset = reset_peak()
    phases = {"plain batch": lambda: shared_batch(trainer, arch, None), "WPL batch": lambda: shared_batch(trainer, arch, wpl),
              "Fisher refresh": lambda: fisher_refresh(trainer, arch, wpl)}
    out["phase_peak_rss_mib"] = {}
    for name, fn in phases.items():
        reset_peak()
        fn()
        out["phase_peak_rss_mib"][name] = status_mib("VmHWM")
    out["peak_rss_mib"] = max(out["peak_rss_warmup_mib"], *out["phase_peak_rss_mib"].values())
    if args.alloc_profile:
        for name in ("WPL batch", "Fisher refresh"):
            peak, groups = allocation_peak(phases[name])
            out[f"alloc_peak_mib {name}"] = peak
            out[f"alloc_owners {name}"] = groups
    out["loadavg_end"] = U.loadavg()

    print(f"\n== bench_memory --size {args.size} (threads {out['threads']}, malloc tuned {tuned}, "
          f"peak reset {'per phase' if can_reset else 'not allowed: whole-process peaks'}) ==")
    for k, v in out["tables_mib"].items():
        print(f"{k:40s} {v:9.1f} MiB")
    print(f"{'RSS after imports':40s} {out['rss_imports_mib']:9.1f} MiB")
    print(f"{'RSS after building (model, WPL, sampler)':40s} {out['rss_built_mib']:9.1f} MiB")
    print(f"{'RSS after warm-up':40s} {out['rss_warm_mib']:9.1f} MiB")
    print(f"{'peak RSS of building and the warm-up':40s} {out['peak_rss_warmup_mib']:9.1f} MiB")
    for k, v in out["phase_peak_rss_mib"].items():
        print(f"{'peak RSS, ' + k:40s} {v:9.1f} MiB")
    print(f"{'peak RSS (all of the above)':40s} {out['peak_rss_mib']:9.1f} MiB")
    for name in ("WPL batch", "Fisher refresh"):
        if f"alloc_peak_mib {name}" in out:
            print(f"\ntensors allocated during one {name} and alive at its peak: {out[f'alloc_peak_mib {name}']:.1f} MiB")
            for owner_name, mib in list(out[f"alloc_owners {name}"].items())[:args.top]:
                print(f"  {mib:8.1f} MiB  {owner_name}")
    print(f"load average: {out['loadavg_start']} -> {out['loadavg_end']}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
