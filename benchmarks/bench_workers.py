"""Throughput of a protocol's independent units: parallel single-threaded workers against one process.

Every long protocol (ranking, continual tables, PathNet seeds, sweeps) runs its units through
``experiments.workers.run_units``. This benchmark runs the same ``--units`` units three ways and
prints the wall-clock time of each and the ratios:

* ``serial, 1 thread``: ``run_units(workers=1)``, every unit in this process, single-threaded;
* ``serial, N threads``: the same units called one after another with N intra-op threads (what one
  multi-threaded run per unit would do);
* ``N workers``: ``run_units(workers=N)``, N spawned single-threaded processes.

A unit is the ranking benchmark's kind of work: ``--batches`` shared training batches of the project's
RNN (by default its width 64 and 3 nodes; batch 64 x 35, 10,000 words, synthetic text) through the
search trainer. The records of the serial and parallel runs are compared (they must be equal: each unit is
single-threaded and seeded wherever it runs). Run it on an otherwise idle machine::

    python -m benchmarks.bench_workers --units 4 --batches 40 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from experiments.workers import Unit, run_units

SHAPE = dict(ntokens=10_000, batch=64, bptt=35, cnn_filters=8, cnn_repeat=1, cnn_modules=3, cnn_blocks=3, cnn_batch=4,
             cnn_image=16)


def rnn_unit(batches: int, seed: int, hid: int = 64, nodes: int = 3) -> dict[str, Any]:
    """``batches`` shared training batches of one sampled cell; the last loss and the weights' sum."""
    import torch

    from benchmarks import bench_rnn
    from benchmarks.bench_util import Size

    args = argparse.Namespace(seed=seed, amp=False, compile=False, cuda_graphs=False, controller_device="cpu",
                              preset="paper", plain_cell=False)
    trainer, _ = bench_rnn.build_trainer(Size(hid=hid, num_blocks=nodes, **SHAPE), args)
    arch = trainer.space.random_arch(torch.Generator().manual_seed(seed))
    for _ in range(batches):
        bench_rnn.shared_batch(trainer, arch, None)
    return {"weights_sum": float(sum(p.detach().double().sum() for p in trainer.space.model.parameters()))}


def units(args: argparse.Namespace) -> list[Unit]:
    kwargs = {"batches": args.batches, "hid": args.hid, "nodes": args.nodes}
    return [Unit(f"rnn/s{i}", "benchmarks.bench_workers:rnn_unit", {**kwargs, "seed": i}) for i in range(args.units)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--units", type=int, default=4)
    p.add_argument("--batches", type=int, default=40, help="training batches per unit")
    p.add_argument("--hid", type=int, default=64, help="the RNN's width (the ranking benchmark's: 64)")
    p.add_argument("--nodes", type=int, default=3, help="the cell's nodes (the ranking space's: 3)")
    p.add_argument("--workers", type=int, default=2, help="worker processes, and the threads of the serial N-thread run")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    import torch

    from benchmarks import bench_util as U

    work = Path(tempfile.mkdtemp(prefix="bench_workers_"))
    out: dict[str, Any] = {"units": args.units, "batches": args.batches, "hid": args.hid, "nodes": args.nodes,
                           "workers": args.workers, "cpus": os.cpu_count(),
                           "loadavg_start": U.loadavg()}
    try:
        start = time.perf_counter()
        serial = run_units(units(args), work / "serial.jsonl", workers=1, desc="serial, 1 thread")
        out["serial_1thread_s"] = time.perf_counter() - start
        threads = torch.get_num_threads()
        torch.set_num_threads(args.workers)
        start = time.perf_counter()
        for unit in units(args):
            rnn_unit(**unit.kwargs)
        out["serial_nthreads_s"] = time.perf_counter() - start
        torch.set_num_threads(threads)
        start = time.perf_counter()
        parallel = run_units(units(args), work / "parallel.jsonl", workers=args.workers,
                             desc=f"{args.workers} workers")
        out["workers_s"] = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["records_equal"] = all(serial[k]["record"] == parallel[k]["record"] for k in serial)
    out["speedup_vs_serial_1thread"] = out["serial_1thread_s"] / out["workers_s"]
    out["speedup_vs_serial_nthreads"] = out["serial_nthreads_s"] / out["workers_s"]
    out["loadavg_end"] = U.loadavg()
    n = args.workers
    print(f"== bench_workers: {args.units} units x {args.batches} batches (width {args.hid}, {args.nodes} nodes), {out['cpus']} CPUs, "
          f"load {out['loadavg_start']} -> {out['loadavg_end']} ==")
    print(f"serial, 1 thread   {out['serial_1thread_s']:8.1f} s")
    print(f"serial, {n} threads  {out['serial_nthreads_s']:8.1f} s")
    print(f"{n} workers          {out['workers_s']:8.1f} s   speed-up {out['speedup_vs_serial_1thread']:.2f}x over serial "
          f"1 thread, {out['speedup_vs_serial_nthreads']:.2f}x over serial {n} threads")
    print(f"records of the serial and parallel runs equal: {out['records_equal']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    if not out["records_equal"]:
        sys.exit("bench_workers: the parallel run's records differ from the serial run's")
    return out


if __name__ == "__main__":
    main()
