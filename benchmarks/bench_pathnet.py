"""Speed of PathNet's tournament (experiments/pathnet/tournament.py) at each style's size, on synthetic 28x28 images.

    python -m benchmarks.bench_pathnet [--styles paper,tf] [--reps N] [--threads N] [--json FILE]

One *generation* is one tournament: two paths, each trained for ``T`` minibatches. Each style runs as
``--pathnet_style`` sets it (paper: L = 3 layers of M = 10 ReLU modules of 20 units, N = 3 drawn with
repeats, T = 50 batches of 16 drawn with replacement, salt-and-pepper noise per batch; tf: the same sizes
with the TF code's skip/ReLU/residual modules averaged over M, N distinct modules, batches from a shuffle,
noise drawn once). Printed per style (median / min / max over ``--reps`` after one warm-up):

* ``generations_per_s`` / ``generations_per_cpu_s``: tournaments per second of wall-clock and of process CPU
  time (two ``train_path`` calls, the mutation; CPU time is the steadier figure on a shared machine);
* ``step_ms`` / ``step_ms_cpu``: one training minibatch of ``train_path`` (noise, forward, backward,
  the guarded SGD step), wall-clock and process CPU time;
* ``frozen_step_ms``: the same step with A's path frozen (PathNet's variant B: the gradient mask) and,
  for tf, run beside every path of B.

Synthetic data keeps the figure independent of the dataset; the cost does not depend on pixel values.
No figure is asserted anywhere; compare runs taken under similar loads (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path as FilePath
from typing import Any

import torch

from benchmarks.bench_util import loadavg, summary, timed2
from experiments.pathnet.tournament import BinaryTask, evolve, make_step, noisy_once, train_path
from models.pathnet import Path


def synthetic_task(n: int = 2000) -> BinaryTask:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 784, generator=g), torch.randint(2, (n,), generator=g)
    return BinaryTask("synthetic", x, y, x[:200], y[:200], 0.0, 1.0)


def bench_style(style: str, reps: int) -> dict[str, Any]:
    import config
    from modes.pathnet import pathnet_configs

    net_cfg, cfg = pathnet_configs(config.parse_args(["--mode=pathnet", f"--pathnet_style={style}",
                                                      "--pathnet_max_generations=1", "--pathnet_converge=1"]))
    task, g = synthetic_task(), torch.Generator().manual_seed(1)
    if cfg.data == "tf":
        task = noisy_once(task, cfg.noise, g)
    L, M, N = net_cfg.layers, net_cfg.modules, net_cfg.active
    net, frozen = net_cfg.network(784), net_cfg.network(784)
    step, frozen_step = make_step(net, cfg.lr), make_step(frozen, cfg.lr)
    a_path, b_path = Path.random(g, L, M, N, True), Path.random(g, L, M, N, True)
    frozen.freeze(a_path)
    beside = b_path.union(a_path) if net_cfg.frozen_active else b_path
    results: dict[str, list[float]] = {"generations_per_s": [], "generations_per_cpu_s": [], "step_ms": [],
                                       "step_ms_cpu": [], "frozen_step_ms": []}
    for rep in range(reps + 1):
        wall, cpu = timed2(lambda: train_path(net, b_path, 0, task, cfg, step, g))
        gen, gen_cpu = timed2(lambda: evolve(net, 0, task, cfg, g, N))  # one tournament (and the population's draw)
        frozen_wall, _ = timed2(lambda: train_path(frozen, beside, 1, task, cfg, frozen_step, g))
        if rep:  # the first repetition warms up
            results["generations_per_s"].append(1 / gen)
            results["generations_per_cpu_s"].append(1 / gen_cpu)
            results["step_ms"].append(1000 * wall / cfg.batches)
            results["step_ms_cpu"].append(1000 * cpu / cfg.batches)
            results["frozen_step_ms"].append(1000 * frozen_wall / cfg.batches)
    return {k: summary(v) for k, v in results.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--styles", type=str, default="paper,tf")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=str, default="")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"threads": args.threads, "loadavg_start": loadavg()}
    for style in args.styles.split(","):
        out[style] = bench_style(style, args.reps)
    out["loadavg_end"] = loadavg()
    for key, value in out.items():
        if isinstance(value, dict):
            for name, figures in value.items():
                print(f"{key:>6} {name:>18}: {figures}")
        else:
            print(f"{key:>25}: {value}")
    if args.json:
        FilePath(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
