"""Task sequences for continual learning: split / permuted MNIST, split CIFAR-10, any image folder.

A sequence is a list of :class:`Task` s, each with in-memory, normalised float inputs and labels in
the label space of the head it trains. The three scenarios of van de Ven & Tolias (2019, "Three
scenarios for continual learning") differ only in the heads:

* ``task``   -- one head per task (the task identity is given at test time);
* ``domain`` -- one shared head with as many outputs as a task has classes (labels are the
  position of the class within its task);
* ``class``  -- one shared head over every class of the sequence (labels are global).

MNIST is read by :mod:`data.mnist` (``<data_dir>/mnist/``, ``<data_dir>/MNIST/raw/`` or ``<data_dir>``,
gzipped or not); CIFAR-10 and image folders come through :func:`data.image.load_images`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from data import mnist
from data.image import MNIST_MEAN, MNIST_STD, ImageData, ImageSet, load_images
from utils import UserError

BENCHMARKS = ("split_mnist", "seq_mnist_0-2_3-5", "permuted_mnist", "split_cifar10", "folder")
SCENARIOS = ("task", "domain", "class")
EVAL_SPLITS = ("test", "valid")  # --cl_eval_split: what every metric is measured on
# The validation split's generator: a constant, not the run's seed, so every seed and strategy holds out the same images.
VALID_SPLIT_SEED = 27


@dataclass
class Task:
    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor  # what every metric is measured on: the test split, or the held-out part of the training data
    y_test: Tensor
    head: int  # which output head trains and tests this task


@dataclass
class TaskSequence:
    name: str
    scenario: str
    tasks: list[Task]
    input_shape: tuple[int, ...]
    head_sizes: list[int]


def split(x: Tensor, y: Tensor, xt: Tensor, yt: Tensor, groups: Sequence[Sequence[int]], scenario: str,
          input_shape: tuple[int, ...], name: str, names: Sequence[str] | None = None) -> TaskSequence:
    """Group classes into tasks (``groups`` of class indices) and label them for ``scenario``."""
    if scenario not in SCENARIOS:
        raise UserError(f"--scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    sizes = {len(g) for g in groups}
    if scenario == "domain" and len(sizes) != 1:
        raise UserError("the domain scenario needs tasks with the same number of classes")
    every = sorted({c for g in groups for c in g})
    tasks = []
    for t, classes in enumerate(groups):
        table = torch.full((max(every) + 1,), -1, dtype=torch.long)
        for position, c in enumerate(classes):
            table[c] = every.index(c) if scenario == "class" else position

        def relabel(labels: Tensor, table: Tensor = table) -> Tensor:
            return table[labels]

        keep, keep_t = torch.isin(y, torch.tensor(classes)), torch.isin(yt, torch.tensor(classes))
        label = "/".join(names[c] if names else str(c) for c in classes)
        tasks.append(Task(label, x[keep], relabel(y[keep]), xt[keep_t], relabel(yt[keep_t]),
                          t if scenario == "task" else 0))
    heads = ([len(g) for g in groups] if scenario == "task" else [len(every)] if scenario == "class"
             else [sizes.pop()])
    return TaskSequence(name, scenario, tasks, input_shape, heads)


def holdout(seq: TaskSequence, fraction: float) -> TaskSequence:
    """Each task's training data split into a training part and a held-out validation part that takes the test
    split's place (strengths are tuned on it, never on the test set; issue 27). ``round(fraction * n)`` examples,
    at least one and never all, drawn by a generator seeded with :data:`VALID_SPLIT_SEED` for every task: the split
    does not depend on the run's seed or strategy. The test tensors are dropped, so nothing can read them."""
    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must lie in (0, 1), got {fraction}")
    tasks = []
    for task in seq.tasks:
        n = len(task.x_train)
        held = min(n - 1, max(1, round(fraction * n)))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(VALID_SPLIT_SEED))
        train, valid = order[held:].sort().values, order[:held].sort().values  # the training part keeps its order
        tasks.append(Task(task.name, task.x_train[train], task.y_train[train], task.x_train[valid], task.y_train[valid],
                          task.head))
    return TaskSequence(seq.name, seq.scenario, tasks, seq.input_shape, seq.head_sizes)


def split_mnist_groups(order: str, seed: int) -> list[list[int]]:
    """Split MNIST's five 2-digit tasks: ``fixed`` pairs 0/1, 2/3, ..., 8/9; ``shuffled`` pairs the digits of a
    permutation drawn from ``seed``, as van de Ven & Tolias's code permutes them per run (issue 27: an ablation of
    that protocol difference)."""
    if order == "fixed":
        digits = list(range(10))
    elif order == "shuffled":
        digits = torch.randperm(10, generator=torch.Generator().manual_seed(seed)).tolist()
    else:
        raise ValueError(f"unknown task order {order!r}")
    return [digits[i:i + 2] for i in range(0, 10, 2)]


def permuted(x: Tensor, y: Tensor, xt: Tensor, yt: Tensor, num_tasks: int, seed: int) -> TaskSequence:
    """Task 0 is the identity, task ``t`` a fixed pixel permutation drawn from ``seed + t``; one 10-way head."""
    tasks = []
    for t in range(num_tasks):
        perm = torch.arange(x.shape[1]) if t == 0 else torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(seed + t))
        tasks.append(Task(f"perm{t}", x[:, perm], y, xt[:, perm], yt, 0))
    return TaskSequence("permuted_mnist", "domain", tasks, (x.shape[1],), [10])


def load_mnist(data_dir: str | Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MNIST (:func:`data.mnist.load`) as flattened normalised images and labels, train then test."""
    found = mnist.load(data_dir)

    def flat(images: Tensor) -> Tensor:
        return (images.reshape(len(images), -1).float() / 255 - MNIST_MEAN[0]) / MNIST_STD[0]

    return flat(found.train_images), found.train_labels, flat(found.test_images), found.test_labels


def _materialise(images: ImageSet, data: ImageData) -> tuple[Tensor, Tensor]:
    x, y = images.__getitems__(list(range(len(images))))
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    return (x.float() / 255 - mean) / std, y.long()


def load_images_as_tasks(data_dir: str | Path, name: str, groups: Sequence[Sequence[str]] | None, scenario: str,
                         seed: int, benchmark: str) -> TaskSequence:
    """CIFAR-10 (five 2-class tasks) or an image folder whose classes ``groups`` names, test split for testing."""
    data = load_images(data_dir, name, 0, seed)
    x, y = _materialise(data.train, data)
    if data.test is None:
        raise UserError(f"{name} has no test split: continual runs report test accuracy")
    xt, yt = _materialise(data.test, data)
    if groups is None:
        index = [[2 * t, 2 * t + 1] for t in range(len(data.classes) // 2)]
    else:
        unknown = sorted({c for g in groups for c in g} - set(data.classes))
        if unknown:
            raise UserError(f"--task_split names classes {unknown[:3]} that {name} does not have")
        index = [[data.classes.index(c) for c in g] for g in groups]
    return split(x, y, xt, yt, index, scenario, (data.channels, *data.size), benchmark, data.classes)


def read_task_split(path: str | Path) -> tuple[str, list[list[str]]]:
    """``{"folder": NAME, "tasks": [[class, ...], ...]}``: the image folder and its classes per task."""
    from options.safe_io import read_json

    spec = read_json(Path(path), "--task_split")  # a directory, a huge or a too-deep file: one line
    try:
        folder, groups = spec["folder"], [[str(c) for c in g] for g in spec["tasks"]]
        if not isinstance(folder, str) or not isinstance(spec["tasks"], list):
            raise TypeError("folder must be a name and tasks a list")
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"--task_split={path}: expected {{\"folder\": NAME, \"tasks\": [[class, ...], ...]}} ({err})") from err
    if len(groups) < 2 or any(not g for g in groups):
        raise UserError(f"--task_split={path}: needs at least two non-empty tasks")
    return folder, groups


def build_sequence(benchmark: str, scenario: str, data_dir: str | Path, *, num_tasks: int = 5, seed: int = 0,
                   task_split: str = "", task_order: str = "fixed", eval_split: str = "test",
                   valid_fraction: float = 0.1) -> TaskSequence:
    """The task sequence ``benchmark`` names (see the module docstring for the scenarios); ``seed`` draws permuted
    MNIST's permutations and, with ``task_order="shuffled"``, split MNIST's digit pairs. ``eval_split="valid"``
    measures on a held-out ``valid_fraction`` of each task's training data instead of its test split (:func:`holdout`)."""
    if eval_split not in EVAL_SPLITS:
        raise ValueError(f"unknown evaluation split {eval_split!r}")
    seq = _sequence(benchmark, scenario, data_dir, num_tasks, seed, task_split, task_order)
    return seq if eval_split == "test" else holdout(seq, valid_fraction)


def _sequence(benchmark: str, scenario: str, data_dir: str | Path, num_tasks: int, seed: int, task_split: str,
              task_order: str) -> TaskSequence:
    if benchmark in ("split_mnist", "seq_mnist_0-2_3-5", "permuted_mnist"):
        x, y, xt, yt = load_mnist(data_dir)
        if benchmark == "permuted_mnist":
            return permuted(x, y, xt, yt, num_tasks, seed)
        if benchmark == "seq_mnist_0-2_3-5":
            return split(x, y, xt, yt, [[0, 1, 2], [3, 4, 5]], "class", (784,), benchmark)
        return split(x, y, xt, yt, split_mnist_groups(task_order, seed), scenario, (784,), benchmark)
    if benchmark == "split_cifar10":
        return load_images_as_tasks(data_dir, "cifar10", None, scenario, seed, benchmark)
    if benchmark == "folder":
        if not task_split:
            raise UserError("--benchmark=folder needs --task_split=FILE")
        folder, groups = read_task_split(task_split)
        return load_images_as_tasks(data_dir, folder, groups, scenario, seed, benchmark)
    raise UserError(f"--benchmark must be one of {', '.join(BENCHMARKS)}, got {benchmark!r}")
