"""PathNet's transfer experiment: evolve task A, then task B four ways, paired over seeds.

For every seed and task pair ``A -> B``: A is evolved to convergence on a fresh network; then B is
evolved with

* ``pathnet``: A's best path frozen, every other module re-initialised (PathNet);
* ``scratch``: a fresh network;
* ``finetune``: A's network as it is, nothing frozen;
* ``wpl``: like ``pathnet`` but A's path protected softly by the WPL penalty
  ``alpha/2 * sum F (theta - theta_A)^2`` with ``F`` the squared minibatch gradients of A's loss on
  its path (WPL's importance) instead of frozen;
* two ablation arms (experiments/pathnet/ablation.py), each one change to ``pathnet``: ``keep`` (the
  modules off A's path keep A's trained weights instead of being re-initialised: not the paper's) and
  ``pathnet_active`` (A's frozen path runs beside every path of B, as the TF code does, whatever the style).

Every variant of a seed starts B from the same re-initialised modules and sees the same batches and
noise (one generator seeded by ``(seed, B)``), so the generations to converge are paired. With the TF
code's data (``cfg.data == "tf"``) each task's fixed noise is drawn once per seed; with its
``frozen_active``, A's frozen path runs beside every path of B (``pathnet`` and ``wpl``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch.nn import functional as F

from data.image import MNIST_MEAN, MNIST_STD
from data.tasks import load_mnist
from experiments.pathnet.tournament import BinaryTask, Evolution, TournamentConfig, accuracy, evolve, noisy, noisy_once
from models.pathnet import Path, PathNet
from regularizers.base import Regularizer
from utils import UserError

VARIANTS = ("pathnet", "scratch", "finetune", "wpl", "keep", "pathnet_active")
FROZEN = ("pathnet", "keep", "pathnet_active")  # A's path frozen; every variant but these two re-initialises the rest
FRESH_REST = ("pathnet", "wpl", "pathnet_active")  # the modules off A's path re-initialised as a fresh network has them


@dataclass(frozen=True)
class NetConfig:
    layers: int
    modules: int
    units: int
    active: int  # N: modules a path may use per layer
    aggregate: str
    wpl_alpha: float
    fisher_batches: int
    kinds: str = "relu"  # relu | tf (models.pathnet.PathNet)
    init: str = "torch"  # torch | tf
    frozen_active: bool = False  # the TF code: A's frozen path is active in every path of B

    def network(self, inputs: int) -> PathNet:
        return PathNet(inputs, self.layers, self.modules, self.units, [2, 2], self.aggregate, self.kinds, self.init)


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``"1v3,1v2"`` (one pair) or ``"1v3,1v2+4v5,6v7"`` (several) into ``[("1v3", "1v2"), ...]``."""
    pairs = []
    for item in text.split("+"):
        tasks = item.split(",")
        if len(tasks) != 2 or not all(_digits(t) for t in tasks):
            raise UserError(f"--tasks={text}: expected pairs of binary digit tasks like 1v3,1v2 (several joined by +)")
        if tasks[0] == tasks[1]:
            raise UserError(f"--tasks={text}: {item} transfers a task to itself")
        pairs.append((tasks[0], tasks[1]))
    return pairs


def _digits(name: str) -> tuple[int, int] | None:
    a, sep, b = name.partition("v")
    if sep and a.isdigit() and b.isdigit() and len(a) == len(b) == 1 and a != b:
        return int(a), int(b)
    return None


def binary_tasks(data_dir: str, names: Sequence[str], raw: bool = False) -> dict[str, BinaryTask]:
    """The binary MNIST tasks ``"<a>v<b>"``: digit a is label 0, digit b label 1; normalised pixels, or
    ``raw`` ones in [0, 1] (the TF code's)."""
    x, y, xt, yt = load_mnist(data_dir)
    low, high = (0 - MNIST_MEAN[0]) / MNIST_STD[0], (1 - MNIST_MEAN[0]) / MNIST_STD[0]
    if raw:
        x, xt = x * MNIST_STD[0] + MNIST_MEAN[0], xt * MNIST_STD[0] + MNIST_MEAN[0]
        low, high = 0.0, 1.0
    out = {}
    for name in names:
        a, b = _digits(name)  # type: ignore[misc]
        keep, keep_t = (y == a) | (y == b), (yt == a) | (yt == b)
        out[name] = BinaryTask(name, x[keep], (y[keep] == b).long(), xt[keep_t], (yt[keep_t] == b).long(), low, high)
    return out


def seeded(*parts: int) -> torch.Generator:
    """A generator seeded by the digits of ``parts``; reduced mod 2**64 (what torch takes), which leaves every
    seed of a 6-digit-per-part layout unchanged and keeps a seed near 2**63 from overflowing."""
    return torch.Generator().manual_seed(int("".join(f"{p:06d}" for p in parts)) % 2**64)


def fisher_on_path(net: PathNet, path: Path, head: int, task: BinaryTask, cfg: TournamentConfig, batches: int,
                   generator: torch.Generator) -> dict[str, list[torch.Tensor]]:
    """Mean squared minibatch gradient of A's loss on its path, per layer group (zero off the path)."""
    sums = {f"layer.{l}": [torch.zeros_like(w), torch.zeros_like(b)] for l, (w, b) in enumerate(zip(net.weights, net.biases))}
    net.eval()
    for _ in range(batches):
        idx = torch.randint(len(task.y_train), (cfg.batch_size,), generator=generator)
        net.zero_grad(set_to_none=True)
        x = noisy(task.x_train[idx], task, cfg.noise, generator) if cfg.data == "paper" else task.x_train[idx]
        F.cross_entropy(net(x, path, head), task.y_train[idx]).backward()
        for l, (w, b) in enumerate(zip(net.weights, net.biases)):
            sums[f"layer.{l}"][0] += w.grad ** 2 / batches
            sums[f"layer.{l}"][1] += b.grad ** 2 / batches
    net.zero_grad(set_to_none=True)
    return sums


def start_of_b(variant: str, net_a: PathNet, fresh: PathNet, path_a: Path, frozen_active: bool) -> tuple[PathNet, Path | None]:
    """The network B starts from under ``variant`` (a copy; B's head not yet reset) and the modules that run
    beside every path of B (A's path, where A's frozen path is active; else None)."""
    if variant not in VARIANTS:
        raise UserError(f"--pathnet_variants: unknown {variant!r} (known: {', '.join(VARIANTS)})")
    net = copy.deepcopy(fresh if variant == "scratch" else net_a)
    if variant in FRESH_REST:
        others = ~net_a.mask(path_a)
        with torch.no_grad():
            for l in range(net.num_layers):
                net.weights[l][others[l]] = fresh.weights[l][others[l]]
                net.biases[l][others[l]] = fresh.biases[l][others[l]]
    if variant in FROZEN:
        net.freeze(path_a)
    active = variant == "pathnet_active" or (frozen_active and variant in ("pathnet", "wpl", "keep"))
    return net, path_a if active else None


def run_pair(tasks: dict[str, BinaryTask], pair: tuple[str, str], seed: int, variants: Sequence[str], net_cfg: NetConfig,
             cfg: TournamentConfig,
             on_generation: Callable[[str, int, float], None] | None = None) -> dict[str, Any]:
    """Evolve A then B under every variant for one seed; generations, wall time and accuracies."""
    a_name, b_name = pair
    a, b = tasks[a_name], tasks[b_name]
    if cfg.data == "tf":
        a, b = noisy_once(a, cfg.noise, seeded(seed, 8)), noisy_once(b, cfg.noise, seeded(seed, 9))
    inputs = a.x_train.shape[1]
    torch.manual_seed(seed)
    net_a = net_cfg.network(inputs)
    net_a.reset_modules(torch.ones(net_cfg.layers, net_cfg.modules, dtype=torch.bool), seeded(seed, 0))
    net_a.reset_head(0, seeded(seed, 1))
    net_a.reset_head(1, seeded(seed, 2))

    def report(name: str) -> Callable[[int, float], None] | None:
        return (lambda g, f: on_generation(name, g, f)) if on_generation else None

    evo_a = evolve(net_a, 0, a, cfg, seeded(seed, 3), net_cfg.active, on_generation=report("A"))
    path_a = Path.from_dict(evo_a.best_path, net_cfg.layers, net_cfg.modules)  # type: ignore[arg-type]
    out: dict[str, Any] = {"seed": seed, "pair": f"{a_name}->{b_name}", "A": _evolution(evo_a),
                           "A_test_accuracy": accuracy(net_a, path_a, 0, a), "variants": {}}
    fresh = net_cfg.network(inputs)
    fresh.reset_modules(torch.ones(net_cfg.layers, net_cfg.modules, dtype=torch.bool), seeded(seed, 4))
    for variant in variants:
        net, always = start_of_b(variant, net_a, fresh, path_a, net_cfg.frozen_active)
        reg = None
        if variant == "wpl":
            reg = Regularizer(net.groups(), net_cfg.wpl_alpha)
            importance = fisher_on_path(net, path_a, 0, a, cfg, net_cfg.fisher_batches, seeded(seed, 5))
            for name, values in importance.items():
                reg.set_importance(name, values)
            reg.refresh_anchors()
        net.reset_head(1, seeded(seed, 6))
        evo_b = evolve(net, 1, b, cfg, seeded(seed, 7), net_cfg.active, reg, always, on_generation=report(variant))
        path_b = Path.from_dict(evo_b.best_path, net_cfg.layers, net_cfg.modules)  # type: ignore[arg-type]
        run_b = path_b.union(always) if always is not None else path_b
        out["variants"][variant] = {**_evolution(evo_b), "B_test_accuracy": accuracy(net, run_b, 1, b),
                                    "A_accuracy_after": accuracy(net, path_a, 0, a),
                                    "shared_modules_with_A": int((net.mask(path_b) & net.mask(path_a)).sum())}
    return out


def _evolution(evo: Evolution) -> dict[str, Any]:
    return {"generations": evo.generations, "tournaments": evo.tournaments, "converged": evo.converged,
            "best_fitness": evo.best_fitness,
            "best_path": evo.best_path, "history": evo.history, "seconds": evo.seconds}
