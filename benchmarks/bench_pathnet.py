"""Speed of PathNet's tournament (experiments/pathnet.py) on synthetic binary 28x28 images.

    python -m benchmarks.bench_pathnet [--reps N] [--threads N] [--json FILE]

One *generation* is one tournament: two paths, each trained for ``T`` minibatches (the paper's
defaults: L = 3 layers of M = 10 modules of 20 units, N = 3 active, T = 50 batches of 16, SGD,
salt-and-pepper noise 0.5). Printed (median / min / max over ``--reps`` after one warm-up):

* ``step_ms`` / ``step_ms_cpu``: one training minibatch of ``train_path`` (noise, forward, backward,
  the guarded SGD step), wall-clock and process CPU time;
* ``generation_s``: one tournament (two ``train_path`` calls and the mutation);
* ``frozen_step_ms``: the same step with A's path frozen (PathNet's variant B: the gradient mask).

Synthetic data keeps the figure independent of the dataset; the cost does not depend on pixel values.
No figure is asserted anywhere; compare runs taken under similar loads (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path as FilePath

import torch

from benchmarks.bench_util import loadavg, summary, timed2
from experiments.pathnet import (
    BinaryTask,
    EvolutionConfig,
    make_step,
    tournament,
    train_path,
)
from models.pathnet import Path, PathNet

L, M, UNITS, N = 3, 10, 20, 3
CFG = EvolutionConfig(population=64, batches=50, batch_size=16, lr=0.05, converge=2.0, max_generations=1,
                      noise=0.5, mutation_bound="wrap")


def synthetic_task(n: int = 2000) -> BinaryTask:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 784, generator=g), torch.randint(2, (n,), generator=g)
    return BinaryTask("synthetic", x, y, x[:200], y[:200], -0.42, 2.82)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=str, default="")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    task, g = synthetic_task(), torch.Generator().manual_seed(1)
    net = PathNet(784, L, M, UNITS, [2, 2])
    step = make_step(net, CFG.lr)
    population = [Path.random(g, L, M, N) for _ in range(CFG.population)]
    frozen = PathNet(784, L, M, UNITS, [2, 2])
    frozen.freeze(population[0])
    frozen_step = make_step(frozen, CFG.lr)
    load = loadavg()

    def fitness(path: Path) -> float:
        return train_path(net, path, 0, task, CFG, step, g)

    results: dict[str, list[float]] = {"step_ms": [], "step_ms_cpu": [], "generation_s": [], "frozen_step_ms": []}
    for rep in range(args.reps + 1):
        wall, cpu = timed2(lambda: fitness(population[1]))
        gen, _ = timed2(lambda: tournament(population, fitness, g, M, 1 / (N * L), "wrap", 2.0, 1))
        frozen_wall, _ = timed2(lambda: train_path(frozen, population[2], 1, task, CFG, frozen_step, g))
        if rep:  # the first repetition warms up
            results["step_ms"].append(1000 * wall / CFG.batches)
            results["step_ms_cpu"].append(1000 * cpu / CFG.batches)
            results["generation_s"].append(gen)
            results["frozen_step_ms"].append(1000 * frozen_wall / CFG.batches)
    out = {"threads": args.threads, "loadavg_start": load, "loadavg_end": loadavg(),
           **{k: summary(v) for k, v in results.items()}}
    for key, value in out.items():
        print(f"{key:>16}: {value}")
    if args.json:
        FilePath(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
