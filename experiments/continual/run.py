"""Task-sequence experiment: fine-tuning, joint training and importance regularisers, paired over seeds.

For every seed the network is initialised once and every strategy starts from those weights and
sees the same tasks (the seed's sequence: split MNIST's digit pairs may be drawn per seed) and the same batches (task ``t``'s batch order is drawn from a generator seeded by ``(seed, t)``),
so differences between strategies are paired. After each task the test accuracy on every task
fills one row of the accuracy matrix ``R[i][j]``; test accuracy and loss are also recorded every
``eval_every`` iterations for the curves and the integrated loss. A checkpoint after every task
holds everything finished so far, so ``resume`` continues exactly where the last task ended.

The loop calls the regulariser's hooks only (:mod:`regularizers.base`); it never names one.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from data.tasks import Task, TaskSequence
from engine import NonFiniteGuard, Step
from models.continual_net import MultiHeadNet, mlp, small_cnn
from regularizers import REGULARIZERS, Regularizer, TaskData

log = logging.getLogger("wpl")


def strategies() -> tuple[str, ...]:
    """The names ``--strategies`` knows: the two without a regulariser, then the registry's (read when asked: a
    new entry counts at once)."""
    return ("none", "joint", *REGULARIZERS)


@dataclass
class ContinualConfig:
    strategies: list[str]
    seeds: int = 5
    first_seed: int = 0
    iters: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    hidden: list[int] = field(default_factory=lambda: [400, 400])
    eval_every: int = 100
    importance_samples: int = 1000
    strengths: dict[str, float] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    protocol: str = "vandeven2019"  # --cl_protocol: whose per-scenario strengths the defaults are


def build_model(seq: TaskSequence, cfg: ContinualConfig, seed: int) -> MultiHeadNet:
    torch.manual_seed(seed)
    if len(seq.input_shape) == 1:
        return mlp(seq.input_shape[0], cfg.hidden, seq.head_sizes)
    return small_cnn(seq.input_shape[0], seq.input_shape[1:], seq.head_sizes)


def build_regularizer(strategy: str, model: MultiHeadNet, cfg: ContinualConfig, seed: int) -> Regularizer | None:
    if strategy in ("none", "joint"):
        return None
    options = dict(cfg.options.get(strategy, {}))
    if strategy in ("ewc", "online_ewc"):
        options.setdefault("seed", seed)
    if strategy == "wpl":  # a task sequence: Fisher consolidated per task, textbook arithmetic
        options.setdefault("consolidate", "task")
        options.setdefault("mode", "loss")
    if strategy in ("ewc", "online_ewc", "mas"):
        options.setdefault("samples", cfg.importance_samples)
    return REGULARIZERS[strategy](model.groups(), cfg.strengths.get(strategy, 0.0), **options)


def penalised(strategy: str, model: MultiHeadNet, head: int) -> list[str]:
    """The groups the model for ``head`` uses; WPL protects only the shared ones (the trunk)."""
    trunk = [g for g in model.groups() if g.startswith("trunk.")]
    return trunk if strategy == "wpl" else trunk + [f"head.{head}"]


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, chunk: int = 2048) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``task`` on its head, on its evaluation split (``x_test``: the test split, or
    the held-out validation part with ``--cl_eval_split=valid``)."""
    model.eval()
    correct, loss = 0.0, 0.0
    for start in range(0, len(task.x_test), chunk):
        logits = model(task.x_test[start:start + chunk], head=task.head)
        y = task.y_test[start:start + chunk]
        correct += float((logits.argmax(1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
    model.train()
    return correct / len(task.x_test), loss / len(task.x_test)


def batch_generator(seed: int, task: int, source: int) -> torch.Generator:
    # mod 2**64 (what torch takes): unchanged for every ordinary seed, no overflow for one near 2**63
    return torch.Generator().manual_seed((1_000_003 * seed + 1009 * task + source) % 2**64)


def importance_data(task: Task, samples: int, seed: int, batch: int = 256) -> list[tuple[Tensor, Tensor]]:
    order = torch.randperm(len(task.x_train), generator=batch_generator(seed, 0, 10_000))[:samples]
    return [(task.x_train[order[i:i + batch]], task.y_train[order[i:i + batch]]) for i in range(0, len(order), batch)]


def train_task(model: MultiHeadNet, optim: torch.optim.Optimizer, reg: Regularizer | None, strategy: str,
               seq: TaskSequence, t: int, cfg: ContinualConfig, seed: int, curve: list[dict[str, Any]],
               step0: int, bar: Any) -> None:
    """``cfg.iters`` updates on task ``t`` (on tasks ``0..t`` for ``joint``), then the end-of-task hook."""
    sources = list(range(t + 1)) if strategy == "joint" else [t]
    gens = {j: batch_generator(seed, t, j) for j in sources}
    per = max(1, cfg.batch_size // len(sources))
    names = penalised(strategy, model, seq.tasks[t].head)
    it = 0
    guard = NonFiniteGuard(f"{strategy} loss", "lower --lr or the strategy's strength", lambda: f"task {t} iteration {it + 1}",
                           lambda: "the one written after the last finished task")
    step = Step(optim, model.parameters(), grad_clip=0.0, guard=guard)
    for it in range(cfg.iters):
        total = 0
        loss = torch.zeros(())
        for j in sources:
            task = seq.tasks[j]
            idx = torch.randint(len(task.x_train), (per,), generator=gens[j])
            loss = loss + F.cross_entropy(model(task.x_train[idx], head=task.head), task.y_train[idx], reduction="sum")
            total += per
        step.update_regularised(loss / total, reg, names)  # the regulariser's hooks, in the engine's order
        bar.update(1)
        if (it + 1) % cfg.eval_every == 0 or it + 1 == cfg.iters:
            scores = [evaluate(model, task) for task in seq.tasks]
            curve.append({"step": step0 + it + 1, "task": t, "accuracy": [s[0] for s in scores],
                          "loss": [s[1] for s in scores]})
            bar.set_postfix(task=t, acc=f"{scores[t][0]:.3f}")
    if reg is not None:
        reg.end_task(TaskData(model, importance_data(seq.tasks[t], cfg.importance_samples, seed), {"head": seq.tasks[t].head}))


def fresh_run(seq: TaskSequence, cfg: ContinualConfig, seed: int, strategy: str,
              init: dict[str, Tensor]) -> tuple[MultiHeadNet, torch.optim.Optimizer, Regularizer | None]:
    model = build_model(seq, cfg, seed)
    model.load_state_dict(init)
    optim = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    return model, optim, build_regularizer(strategy, model, cfg, seed)


def run_experiment(sequence: Callable[[int], TaskSequence], cfg: ContinualConfig, state: dict[str, Any] | None,
                   save: Callable[[dict[str, Any]], None], on_task: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every seed x strategy on ``sequence(seed)`` (asked once per seed, so every strategy of a seed trains on the
    same tasks); ``state`` (a checkpoint) resumes, ``save`` is called after every task.

    Returns ``{"runs": {"<strategy>/<seed>": {"R", "curve", "seconds"}}}``.
    """
    import time

    state = state or {"runs": {}, "current": None}
    for strategy in cfg.strategies:
        if strategy not in strategies():
            raise ValueError(f"unknown strategy {strategy!r}")
    total = cfg.seeds * len(cfg.strategies) * len(sequence(cfg.first_seed).tasks) * cfg.iters
    done = sum(len(r["R"]) for r in state["runs"].values()) * cfg.iters
    with tqdm(total=total, initial=done, desc="continual", dynamic_ncols=True, leave=False,
              disable=None) as bar:  # no bar when stderr is not a terminal
        for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds):
            seq = sequence(seed)
            init = build_model(seq, cfg, seed).state_dict()
            for strategy in cfg.strategies:
                key = f"{strategy}/{seed}"
                run = state["runs"].setdefault(key, {"R": [], "curve": [], "seconds": 0.0})
                if len(run["R"]) == len(seq.tasks):
                    continue
                model, optim, reg = fresh_run(seq, cfg, seed, strategy, init)
                current = state.get("current")
                if current is not None and current["key"] == key:
                    model.load_state_dict(current["model"])
                    optim.load_state_dict(current["optim"])
                    if reg is not None:
                        reg.load_state_dict(current["reg"])
                for t in range(len(run["R"]), len(seq.tasks)):
                    start = time.perf_counter()
                    train_task(model, optim, reg, strategy, seq, t, cfg, seed, run["curve"], t * cfg.iters, bar)
                    run["R"].append([evaluate(model, task)[0] for task in seq.tasks])
                    run["seconds"] += time.perf_counter() - start
                    state["current"] = {"key": key, "model": model.state_dict(), "optim": optim.state_dict(),
                                        "reg": reg.state_dict() if reg is not None else {}}
                    save(state)
                    on_task({"strategy": strategy, "seed": seed, "task": t, "accuracy": run["R"][-1],
                             "seconds": run["seconds"]})
    return {"runs": state["runs"]}


def config_dict(cfg: ContinualConfig) -> dict[str, Any]:
    return asdict(cfg)
