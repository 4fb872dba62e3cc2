"""PathNet's tournament selection (Fernando et al. 2017) on binary MNIST tasks.

A population of ``P`` random paths; one *generation* is one tournament: two distinct paths are
picked at random, each is trained for ``T`` minibatches (plain SGD, through :class:`engine.Step`),
its fitness is its training accuracy over those minibatches, and the loser's path is overwritten
by a mutated copy of the winner's. Evolution stops when the mean fitness of the last ``window``
winners reaches ``converge`` (or after ``max_generations``: then the task did not converge and says so).

Every random draw (which paths meet, batches, salt-and-pepper noise, mutations) comes from one
generator per evolution, and each step draws a fixed number of values whatever the paths, so two
variants given the same seed see the same batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from engine import NonFiniteGuard, Step
from models.pathnet import ActiveRows, Path, PathNet
from regularizers.base import Regularizer


@dataclass(frozen=True)
class TournamentConfig:
    population: int
    batches: int  # T: minibatches each path of a tournament trains for
    batch_size: int
    lr: float
    converge: float  # fitness (training accuracy in [0, 1]) that ends the evolution
    max_generations: int
    noise: float  # probability per pixel of salt and pepper (data "paper") or of the TF code's bright noise ("tf")
    mutation_bound: str  # wrap | clip
    converge_window: int = 1  # the threshold applies to the mean fitness of this many last winners
    mutation: str = "paper"  # paper (N draws with repeats, symmetric moves) | tf (N distinct, the TF code's moves)
    batch_draw: str = "replace"  # replace (batches drawn with replacement) | shuffle (the TF code: a permutation's head)
    count_from: int = 1  # the converging tournament's number: 1 counts tournaments, 0 is the TF code's loop index
    data: str = "paper"  # paper (normalised pixels, fresh salt and pepper per batch) | tf (fixed noise, see noisy_once)


@dataclass
class BinaryTask:
    """Two digit classes as labels 0 and 1 (``name`` e.g. ``"1v3"``), normalised images in memory."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    low: float  # the normalised values of a black and a white pixel (salt and pepper)
    high: float


@dataclass
class Evolution:
    generations: int = 0
    converged: bool = False
    best_path: dict[str, Any] | None = None
    best_fitness: float = 0.0
    history: list[float] = field(default_factory=list)  # the tournament's best fitness, per generation
    seconds: float = 0.0
    tournaments: int = 0  # tournaments run (``generations`` counts as ``count_from`` says)


def noisy(x: Tensor, task: BinaryTask, p: float, generator: torch.Generator) -> Tensor:
    """Salt-and-pepper noise: each pixel, with probability ``p``, becomes black or white (even odds).

    One uniform draw per pixel decides both: below ``p / 2`` white, in ``[p / 2, p)`` black.
    """
    if p <= 0:
        return x
    u = torch.rand(x.shape, generator=generator)
    return x.masked_fill(u < p, task.low).masked_fill_(u < p / 2, task.high)


def noisy_once(task: BinaryTask, p: float, generator: torch.Generator) -> BinaryTask:
    """The TF code's noise, drawn once per task on pixels in [0, 1]: ``u`` uniform per pixel; where
    ``u >= 1 - p`` the pixel becomes ``min(pixel + u, 1)`` (at its p = 0.5: ``u >= 0.5`` adds ``u``)."""
    u = torch.rand(task.x_train.shape, generator=generator)
    x = torch.where(u >= 1 - p, (task.x_train + u).clamp(max=1.0), task.x_train)
    return BinaryTask(task.name, x, task.y_train, task.x_test, task.y_test, task.low, task.high)


def make_step(net: PathNet, lr: float) -> Step:
    guard = NonFiniteGuard("PathNet loss", "try a smaller --pathnet_lr", lambda: "a PathNet tournament", lambda: "none")
    return Step(torch.optim.SGD(net.parameters(), lr=lr), net.parameters(), 0.0, guard)


def rows_only(step: Step, reg: Regularizer | None) -> bool:
    """Whether ``step`` may train only the path's modules (:class:`models.pathnet.ActiveRows`): plain SGD,
    one learning rate, no clip, no regulariser, one process. Otherwise something reads or moves the modules
    off the path (a penalty's gradient, a clip's norm, momentum, the ranks' average) and the full step runs."""
    opt = step.optimizer
    return (reg is None and type(opt) is torch.optim.SGD and len(opt.param_groups) == 1 and step.grad_clip <= 0
            and not step.data_parallel and all(opt.param_groups[0][k] == 0 for k in ("momentum", "weight_decay"))
            and not opt.param_groups[0]["maximize"])


def train_path(net: PathNet, path: Path, head: int, task: BinaryTask, cfg: TournamentConfig, step: Step,
               generator: torch.Generator, reg: Regularizer | None = None) -> float:
    """Train ``path`` for ``cfg.batches`` minibatches; its fitness (training accuracy over them, each batch
    scored by the forward pass that trains on it, as the TF code's ``sess.run([train_step, accuracy])``).

    Where :func:`rows_only` allows, each step updates the path's modules alone (the same weights as the
    full step, at the cost of ``k`` modules instead of ``M``); the heads always step through ``step``."""
    names = [f"layer.{l}" for l in range(net.num_layers)]
    rows = ActiveRows(net, path) if rows_only(step, reg) else None

    def before_step() -> Tensor | None:
        penalty = reg.add_penalty_grad_(names) if reg is not None else None
        net.mask_frozen_grads()  # last: nothing, not even a penalty, moves a frozen module
        return penalty

    correct = torch.zeros((), dtype=torch.long)
    net.train()
    n, size = len(task.y_train), cfg.batches * cfg.batch_size
    order = torch.randperm(n, generator=generator)[:size] if cfg.batch_draw == "shuffle" else None
    for k in range(cfg.batches):
        if order is not None:
            idx = order[k * cfg.batch_size:(k + 1) * cfg.batch_size]
        else:
            idx = torch.randint(n, (cfg.batch_size,), generator=generator)
        x, y = task.x_train[idx], task.y_train[idx]
        if cfg.data == "paper":
            x = noisy(x, task, cfg.noise, generator)
        logits = net(x, path, head, rows.leaves() if rows is not None else None)
        if step.update(F.cross_entropy(logits, y), before_step) and rows is not None:
            rows.sgd_(step.lr)
        correct += (logits.detach().argmax(1) == y).sum()
    return int(correct) / (cfg.batches * cfg.batch_size)


@torch.no_grad()
def accuracy(net: PathNet, path: Path, head: int, task: BinaryTask) -> float:
    net.eval()
    return float((net(task.x_test, path, head).argmax(1) == task.y_test).float().mean())


def tournament(population: list[Path], fitness: Callable[[Path], float], generator: torch.Generator,
               mutate: Callable[[Path], Path], converge: float, max_generations: int, window: int = 1,
               count_from: int = 1, on_generation: Callable[[int, float], None] | None = None) -> Evolution:
    """Tournaments of two on ``population`` (changed in place) until the mean fitness of the last ``window``
    winners reaches ``converge``; the first path drawn wins a tie (the TF code's ``argmax``).

    The best path is the converging winner's, else the fittest winner seen."""
    out = Evolution()
    for generation in range(max_generations):
        i, j = torch.randperm(len(population), generator=generator)[:2].tolist()
        fit_i, fit_j = fitness(population[i]), fitness(population[j])
        winner, loser, best = (i, j, fit_i) if fit_i >= fit_j else (j, i, fit_j)
        champion = population[winner]
        population[loser] = mutate(champion)
        out.history.append(best)
        out.tournaments, out.generations = generation + 1, generation + count_from
        recent = out.history[-window:]
        out.converged = len(recent) == window and sum(recent) / window >= converge
        if out.best_path is None or best >= out.best_fitness or out.converged:
            out.best_fitness, out.best_path = best, champion.to_dict()
        if on_generation is not None:
            on_generation(generation, best)
        if out.converged:
            break
    return out


def evolve(net: PathNet, head: int, task: BinaryTask, cfg: TournamentConfig, generator: torch.Generator,
           per_layer: int, reg: Regularizer | None = None, always: Path | None = None,
           on_generation: Callable[[int, float], None] | None = None) -> Evolution:
    """PathNet on one task: a random population, paths trained and compared in tournaments.

    Mutation ``paper``: each index moves with probability ``1 / (N * L)`` (the paper); ``tf``: the TF
    code's (:meth:`Path.mutate_tf`). ``always``: modules run beside every path (the TF code's frozen
    path of task A); the population and the best path hold only the evolved modules.
    """
    started = time.perf_counter()
    L, M = net.num_layers, net.num_modules
    distinct = cfg.mutation == "tf"
    population = [Path.random(generator, L, M, per_layer, distinct) for _ in range(cfg.population)]
    step = make_step(net, cfg.lr)

    def mutate(path: Path) -> Path:
        if distinct:
            return path.mutate_tf(generator, M, per_layer)
        return path.mutate(generator, M, 1.0 / (per_layer * L), cfg.mutation_bound)

    def fitness(path: Path) -> float:
        return train_path(net, path.union(always) if always is not None else path, head, task, cfg, step, generator, reg)

    out = tournament(population, fitness, generator, mutate, cfg.converge, cfg.max_generations, cfg.converge_window,
                     cfg.count_from, on_generation)
    out.seconds = time.perf_counter() - started
    return out
