"""PathNet's tournament selection (Fernando et al. 2017) on binary MNIST tasks.

A population of ``P`` random paths; one *generation* is one tournament: two distinct paths are
picked at random, each is trained for ``T`` minibatches (plain SGD, through :class:`engine.Step`),
its fitness is its training accuracy over those minibatches, and the loser's path is overwritten
by a mutated copy of the winner's. Evolution stops when a tournament's best fitness reaches
``converge`` (or after ``max_generations``: then the task did not converge and says so).

Every random draw (which paths meet, batches, salt-and-pepper noise, mutations) comes from one
generator per evolution, so two variants given the same seed see the same batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from engine import NonFiniteGuard, Step
from models.pathnet import Path, PathNet
from regularizers.base import Regularizer


@dataclass(frozen=True)
class EvolutionConfig:
    population: int
    batches: int  # T: minibatches each path of a tournament trains for
    batch_size: int
    lr: float
    converge: float  # fitness (training accuracy in [0, 1]) that ends the evolution
    max_generations: int
    noise: float  # salt-and-pepper probability per pixel
    mutation_bound: str  # wrap | clip


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


def noisy(x: Tensor, task: BinaryTask, p: float, generator: torch.Generator) -> Tensor:
    """Salt-and-pepper noise: each pixel, with probability ``p``, becomes black or white (even odds).

    One uniform draw per pixel decides both: below ``p / 2`` white, in ``[p / 2, p)`` black.
    """
    if p <= 0:
        return x
    u = torch.rand(x.shape, generator=generator)
    return x.masked_fill(u < p, task.low).masked_fill_(u < p / 2, task.high)


def make_step(net: PathNet, lr: float) -> Step:
    guard = NonFiniteGuard("PathNet loss", "try a smaller --pathnet_lr", lambda: "a PathNet tournament", lambda: "none")
    return Step(torch.optim.SGD(net.parameters(), lr=lr), net.parameters(), 0.0, guard)


def train_path(net: PathNet, path: Path, head: int, task: BinaryTask, cfg: EvolutionConfig, step: Step,
               generator: torch.Generator, reg: Regularizer | None = None) -> float:
    """Train ``path`` for ``cfg.batches`` minibatches; its fitness (training accuracy over them)."""
    names = [f"layer.{l}" for l in range(net.num_layers)]

    def before_step() -> Tensor | None:
        penalty = reg.add_penalty_grad_(names) if reg is not None else None
        net.mask_frozen_grads()  # last: nothing, not even a penalty, moves a frozen module
        return penalty

    correct = torch.zeros((), dtype=torch.long)
    net.train()
    for _ in range(cfg.batches):
        idx = torch.randint(len(task.y_train), (cfg.batch_size,), generator=generator)
        x, y = noisy(task.x_train[idx], task, cfg.noise, generator), task.y_train[idx]
        logits = net(x, path, head)
        step.update(F.cross_entropy(logits, y), before_step)
        correct += (logits.detach().argmax(1) == y).sum()
    return int(correct) / (cfg.batches * cfg.batch_size)


@torch.no_grad()
def accuracy(net: PathNet, path: Path, head: int, task: BinaryTask) -> float:
    net.eval()
    return float((net(task.x_test, path, head).argmax(1) == task.y_test).float().mean())


def tournament(population: list[Path], fitness: Callable[[Path], float], generator: torch.Generator, num_modules: int,
               rate: float, bound: str, converge: float, max_generations: int,
               on_generation: Callable[[int, float], None] | None = None) -> Evolution:
    """Tournaments of two on ``population`` (changed in place) until a winner's fitness reaches ``converge``."""
    out = Evolution()
    for generation in range(max_generations):
        i, j = torch.randperm(len(population), generator=generator)[:2].tolist()
        fit_i, fit_j = fitness(population[i]), fitness(population[j])
        winner, loser, best = (i, j, fit_i) if fit_i >= fit_j else (j, i, fit_j)
        population[loser] = population[winner].mutate(generator, num_modules, rate, bound)
        out.history.append(best)
        out.generations = generation + 1
        if out.best_path is None or best >= out.best_fitness:
            out.best_fitness, out.best_path = best, population[winner].to_dict()
        if on_generation is not None:
            on_generation(generation, best)
        if best >= converge:
            out.converged = True
            break
    return out


def evolve(net: PathNet, head: int, task: BinaryTask, cfg: EvolutionConfig, generator: torch.Generator,
           per_layer: int, reg: Regularizer | None = None,
           on_generation: Callable[[int, float], None] | None = None) -> Evolution:
    """PathNet on one task: a random population, paths trained and compared in tournaments.

    The best path is the last converged winner (else the fittest winner seen); mutation rate
    ``1 / (N * L)`` as the paper.
    """
    started = time.perf_counter()
    L, M = net.num_layers, net.num_modules
    population = [Path.random(generator, L, M, per_layer) for _ in range(cfg.population)]
    step = make_step(net, cfg.lr)
    out = tournament(population, lambda path: train_path(net, path, head, task, cfg, step, generator, reg), generator,
                     M, 1.0 / (per_layer * L), cfg.mutation_bound, cfg.converge, cfg.max_generations, on_generation)
    out.seconds = time.perf_counter() - started
    return out
