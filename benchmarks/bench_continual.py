"""Speed of the continual loop at the published network size, and what each end-of-task importance costs.

    python -m benchmarks.bench_continual [--iters 200] [--strategies none,ewc,online_ewc,si,mas,wpl]
        [--samples 1000] [--json FILE]

The network is the protocol's (784 -> 400 -> 400 -> heads, batch 128, Adam; ``experiments.continual.run``), on
synthetic MNIST-shaped data (two classes per task, five tasks: the same shapes as split MNIST, no files
needed). For each strategy a first task is trained briefly so the penalty is active, then the second task
is timed: ``train_task`` with ``--iters`` iterations, whose end-of-task hook (the importance: EWC's Fisher,
MAS's output-norm gradients over ``--samples`` images, SI's path integral, WPL's consolidation) is timed
again on its own, as is the one evaluation of every task at the end. Iterations per second leave both out.
The importance's share is its time over a whole task at the protocol's 2000 iterations. Wall and process
CPU times are both given: on a machine shared with other jobs, CPU time is closer to an idle core's.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Callable

import torch

from data.tasks import split
from experiments.continual.run import ContinualConfig, evaluate, fresh_run, build_model, importance_data, train_task
from regularizers import TaskData

PROTOCOL_ITERS = 2000


class Quiet:
    def update(self, n: int) -> None: ...
    def set_postfix(self, **kw: object) -> None: ...


def clocked(fn: Callable[[], Any]) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def synthetic_split_mnist(n: int = 2000, seed: int = 0) -> Any:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 784, generator=g), torch.arange(n) % 10
    x[torch.arange(n), y * 7] += 4.0  # learnable
    return split(x, y, x[:500], y[:500], [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]], "task", (784,), "synthetic")


def bench(strategy: str, iters: int, samples: int) -> dict[str, float]:
    from modes.continual import scenario_values

    seq = synthetic_split_mnist()
    strength = {} if strategy == "none" else {strategy: scenario_values(strategy, "vandeven2019", "task")["strength"]}
    options = {"ewc": {"fisher": "predicted"}, "online_ewc": {"fisher": "predicted", "gamma": 0.8}}
    cfg = ContinualConfig([strategy], seeds=1, iters=iters, eval_every=iters, importance_samples=samples,
                          strengths=strength, options={k: v for k, v in options.items() if k == strategy})
    model, optim, reg = fresh_run(seq, cfg, 0, strategy, build_model(seq, cfg, 0).state_dict())
    train_task(model, optim, reg, strategy, seq, 0, cfg, 0, [], 0, Quiet())  # task 0: the penalty is active after
    task_wall, task_cpu = clocked(lambda: train_task(model, optim, reg, strategy, seq, 1, cfg, 0, [], iters, Quiet()))
    data = TaskData(model, importance_data(seq.tasks[1], samples, 0), {"head": seq.tasks[1].head})
    end_wall, end_cpu = clocked(lambda: reg.end_task(data)) if reg is not None else (0.0, 0.0)
    eval_wall, eval_cpu = clocked(lambda: [evaluate(model, t) for t in seq.tasks])
    step_wall, step_cpu = task_wall - end_wall - eval_wall, task_cpu - end_cpu - eval_cpu
    return {"iters_per_s": iters / step_wall, "iters_per_s_cpu": iters / step_cpu, "importance_s": end_wall,
            "importance_s_cpu": end_cpu,
            "importance_share": end_cpu / (PROTOCOL_ITERS * step_cpu / iters + end_cpu)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--strategies", default="none,ewc,online_ewc,si,mas,wpl")
    p.add_argument("--samples", type=int, default=1000, help="EWC's and MAS's importance samples (the default's)")
    p.add_argument("--json", default="")
    args = p.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    rows = {s: bench(s, args.iters, args.samples) for s in args.strategies.split(",")}
    print(f"threads 1, load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; {args.iters} iterations")
    print("| strategy | iterations/s (wall) | iterations/s (CPU) | importance s (wall) | importance s (CPU) | "
          f"importance share of a {PROTOCOL_ITERS}-iteration task (CPU) |")
    print("|---|---|---|---|---|---|")
    for s, r in rows.items():
        print(f"| {s} | {r['iters_per_s']:.1f} | {r['iters_per_s_cpu']:.1f} | {r['importance_s']:.2f} | "
              f"{r['importance_s_cpu']:.2f} | {100 * r['importance_share']:.1f} % |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"iters": args.iters, "samples": args.samples, "load": load, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
