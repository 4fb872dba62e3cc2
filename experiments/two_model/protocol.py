"""The paper's two-model MNIST example: multi-model forgetting, and Weight Plasticity Loss against it.

Model A is an MLP with 4 weight layers (784 -> h -> h -> h -> 10). Model B has 6 weight layers, and
its first k layers *are* A's layer modules (the same ``nn.Linear`` objects, not copies), exactly like
two architectures of a one-shot search space sharing edges. Protocol, for every seed:

1. train A for a short while (the paper's A sits at about 89%, so it is deliberately under-trained);
2. at A's weights theta* compute the diagonal Fisher F of A's loss with respect to the shared layers;
3. for every k and alpha, start again from that A and train B on the same MNIST task with
   ``CE_B + (alpha / 2) * sum F (theta_shared - theta*)^2`` (alpha = 0 is plain training), measuring
   both models' test accuracy every few steps.

Without WPL, B's updates to the shared layers lower A's accuracy although A itself is never trained:
that is multi-model forgetting. The penalty is the ``wpl`` regulariser of :mod:`regularizers` in
``mode="loss"``, the component the search uses; its importance is set once from A (through
:meth:`~regularizers.store.QuadraticStore.set_importance`) instead of being a moving average, so
B's training calls only its penalty. Every update goes through :class:`engine.Step`.

Importance (``strategy``): any regulariser of :mod:`regularizers` can weigh the penalty. One of
that kind watches A's training through its hooks (SI integrates its path there) and measures A's
importance at the end of it (``end_task``: EWC's true Fisher, MAS's output sensitivity, L2's ones);
each B run then gets a fresh one over its k shared layers holding that importance.

Protocol (``protocol``): ``long`` (the default, this example's first protocol: B trained 1,500 steps
at batch 64) or ``paper`` (B trained 100 steps at batch 128 with evaluations at steps 1, 2, 3, 5, 10,
..., 10 seeds), which reproduces the paper's figure: A's drop grows with k. docs/toy_mnist.md has the
measurements and why the order by k depends on when A is measured.

Fisher estimator (``wpl``): the per-sample *empirical* Fisher,
``F = (1/N) sum_n (d CE(A(x_n), y_n) / d theta)^2`` with the true labels y_n, over N training images
(``fisher_samples``), from :func:`regularizers.importance.mean_per_sample` (``torch.func.vmap``). On
MNIST it is about 60 times the square of a mean mini-batch gradient, so alpha values do not carry
over between the two estimators.
"""

from __future__ import annotations

import copy
import itertools
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from analysis.stats import columns_mean_std, mean_std
from engine import NonFiniteGuard, Step
from engine.stopping import Stopped
from regularizers import REGULARIZERS, Regularizer, TaskData
from regularizers.importance import log_likelihood, mean_per_sample
from utils import UserError

A_LAYERS, B_LAYERS = 4, 6
MAX_SHARED = A_LAYERS - 1  # A's last layer is its 10-way classifier and fits nowhere in B's stack

LayerParams = list[tuple[Tensor, Tensor]]  # (weight, bias) per layer

# Importance measures of A's shared layers, each a regulariser of :mod:`regularizers` (options for this example).
# ``wpl`` is the per-sample empirical Fisher; ``ewc`` the true Fisher (labels drawn from A), so the two differ.
STRATEGIES: dict[str, dict[str, Any]] = {"wpl": {"mode": "loss"}, "ewc": {"fisher": "true", "per_task": False},
                                         "mas": {}, "si": {}, "l2": {}}
# Presets of the options a protocol changes; "long" is the example's first protocol (and the CLI default).
PROTOCOLS: dict[str, dict[str, Any]] = {"long": {}, "paper": {"iterations": 100, "batch_size": 128, "eval_every": 10,
                                                              "seeds": 10}}
EARLY_POINTS = (1, 2, 3, 5)  # extra evaluations of the paper protocol: the fall is within B's first steps


@dataclass(frozen=True)
class ToyConfig:
    """Everything the protocol needs; plain values so tests can build one. The defaults are the CLI's."""

    shared_layers: tuple[int, ...] = (1, 2, 3)
    alphas: tuple[float, ...] = (0.0, 100.0)
    hidden: int = 100
    lr: float = 1e-3
    a_iterations: int = 100
    iterations: int = 1500
    batch_size: int = 64
    eval_every: int = 20
    fisher_samples: int = 3200
    seeds: int = 3
    device: str = "cpu"
    strategy: str = "wpl"
    protocol: str = "long"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UserError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.protocol not in PROTOCOLS:
            raise UserError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")


# ------------------------------------------------------------------------------------------ models
def mlp_forward(layers: LayerParams, x: Tensor) -> Tensor:
    """ReLU MLP as a pure function of its weights."""
    for weight, bias in layers[:-1]:
        x = F.relu(F.linear(x, weight, bias))
    weight, bias = layers[-1]
    return F.linear(x, weight, bias)


class MLP(nn.Module):
    """A stack of ``nn.Linear`` layers; layers passed in are used as they are, which is how B shares A's."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        return mlp_forward([(layer.weight, layer.bias) for layer in self.layers], x)


def linear(n_in: int, n_out: int) -> nn.Linear:
    """Kaiming-normal weights and zero biases (PyTorch's default init makes the forgetting much weaker)."""
    layer = nn.Linear(n_in, n_out)
    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    nn.init.zeros_(layer.bias)
    return layer


def make_model_a(hidden: int) -> MLP:
    sizes = [784] + [hidden] * (A_LAYERS - 1) + [10]
    return MLP([linear(n_in, n_out) for n_in, n_out in itertools.pairwise(sizes)])


def make_model_b(a: MLP, k: int, hidden: int) -> MLP:
    """B = A's first ``k`` layer modules (shared objects) followed by ``6 - k`` fresh layers."""
    if not 1 <= k <= MAX_SHARED:
        raise ValueError(f"shared layers must be in 1..{MAX_SHARED}, got {k}")
    sizes = [hidden] * (B_LAYERS - k) + [10]
    own = [linear(n_in, n_out) for n_in, n_out in itertools.pairwise(sizes)]
    return MLP(list(a.layers[:k]) + own).to(a.layers[0].weight.device)


# ------------------------------------------------------------------------------------- training
@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Test accuracy in percent (the whole set in one pass: 10k MNIST images are small)."""
    return 100.0 * (model(x).argmax(dim=1) == y).float().mean().item()


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    penalty: Callable[[], Tensor] | None = None,
    after_step: Callable[[int], None] | None = None,
    hooks: Regularizer | None = None,
) -> None:
    """Adam on random mini-batches (drawn with ``generator``), plus an optional extra loss term.

    ``hooks`` is a regulariser learning an importance from this training (SI's path integral, WPL's
    online Fisher): its ``after_backward`` and ``after_step`` hooks are called over all its groups.

    Adam rather than SGD because plain SGD on a strong WPL term diverges once
    ``lr * alpha * max(F)`` reaches about 2; Adam's step size does not scale with the penalty.
    """
    step = 0
    guard = NonFiniteGuard("loss", "lower --lr or --alpha", lambda: f"step {step}",
                           lambda: "none (this example keeps no checkpoints)")
    update = Step(torch.optim.Adam(model.parameters(), lr=lr), model.parameters(), grad_clip=0.0, guard=guard)
    for step in range(1, steps + 1):
        idx = torch.randint(len(x), (batch_size,), generator=generator).to(x.device)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if penalty is not None:
            loss = loss + penalty()
        stepped = update.update(loss, (lambda: hooks.after_backward(list(hooks.params))) if hooks else None)
        if hooks is not None and stepped:
            hooks.after_step(list(hooks.params))
        if after_step is not None:
            after_step(step)


def empirical_fisher(model: MLP, x: Tensor, y: Tensor, chunk: int = 512) -> LayerParams:
    """Per-sample empirical Fisher diagonal of ``model``'s cross-entropy, (F_weight, F_bias) per layer.

    ``F = mean_n g_n^2`` with ``g_n`` the gradient of sample n's loss at its true label, in chunks
    of ``chunk`` samples to bound memory.
    """
    params = [p for layer in model.layers for p in (layer.weight, layer.bias)]
    batches = [(x[start:start + chunk], y[start:start + chunk]) for start in range(0, len(x), chunk)]
    fisher = mean_per_sample(TaskData(model, batches), params, log_likelihood, "square", len(x))
    return list(zip(fisher[0::2], fisher[1::2]))


def shared_groups(a: MLP, k: int) -> dict[str, list[nn.Parameter]]:
    """One regulariser group per shared layer of A: ``layer1`` .. ``layer<k>``."""
    return {f"layer{i + 1}": [a.layers[i].weight, a.layers[i].bias] for i in range(k)}


def new_regularizer(strategy: str, a: MLP, k: int, alpha: float, **extra: Any) -> Regularizer:
    """The ``strategy`` regulariser over A's first ``k`` layers with strength ``alpha``."""
    return REGULARIZERS[strategy](shared_groups(a, k), alpha, **STRATEGIES[strategy], **extra)


def learner(strategy: str, a: MLP, cfg: ToyConfig, seed: int) -> Regularizer:
    """The regulariser that watches A's training and then measures A's importance (over every shareable layer)."""
    extra = {"samples": cfg.fisher_samples} if strategy in ("ewc", "mas") else {}
    if strategy == "ewc":
        extra["seed"] = seed
    return new_regularizer(strategy, a, MAX_SHARED, 1.0, **extra)


def importance_of(strategy: str, reg: Regularizer, a: MLP, x: Tensor, y: Tensor) -> LayerParams:
    """A's importance per shareable layer once A is trained: ``reg`` (which saw A's training) ends its task.

    ``x, y`` are the importance samples. WPL's importance here is the per-sample empirical Fisher
    (this example's estimator since its first version), not the online average ``reg`` built.
    """
    if strategy == "wpl":
        return empirical_fisher(a, x, y)[:MAX_SHARED]
    reg.end_task(TaskData(a, [(x[i:i + 512], y[i:i + 512]) for i in range(0, len(x), 512)]))
    return [(reg.importance[name][0], reg.importance[name][1]) for name in reg.params]


def make_penalty(strategy: str, a: MLP, k: int, importance: LayerParams, alpha: float = 1.0) -> Regularizer:
    """``strategy``'s penalty over A's first ``k`` layers: importance from A, anchors theta* = A's weights.

    Only its penalty is used while B trains: the importance stays A's.
    """
    reg = new_regularizer(strategy, a, k, alpha)
    for i in range(k):
        reg.set_importance(f"layer{i + 1}", importance[i])
    reg.refresh_anchors()
    return reg


# ------------------------------------------------------------------------------------- protocol
def eval_points(cfg: ToyConfig) -> list[int]:
    """B-iterations at which both models are evaluated: 0, every ``eval_every`` steps, and the last."""
    early = [p for p in EARLY_POINTS if p < cfg.iterations] if cfg.protocol == "paper" else []
    return sorted({0, *early, cfg.iterations, *range(cfg.eval_every, cfg.iterations + 1, cfg.eval_every)})


def run_b(a: MLP, k: int, alpha: float, importance: LayerParams, data: tuple[Tensor, ...], cfg: ToyConfig,
          seed: int) -> tuple[list[float], list[float]]:
    """Train a B sharing ``k`` layers with (a copy of) ``a``; return A's and B's test-accuracy curves.

    The seed depends on (seed, k) only, so runs that differ only in alpha start from the same B and
    see the same batches.
    """
    train_x, train_y, test_x, test_y = data
    a = copy.deepcopy(a)
    torch.manual_seed(1000 * seed + k)
    b = make_model_b(a, k, cfg.hidden)
    penalty = make_penalty(cfg.strategy, a, k, importance, alpha)
    points = set(eval_points(cfg))
    curve_a, curve_b = [accuracy(a, test_x, test_y)], [accuracy(b, test_x, test_y)]

    def record(step: int) -> None:
        if step in points:
            curve_a.append(accuracy(a, test_x, test_y))
            curve_b.append(accuracy(b, test_x, test_y))

    train(b, train_x, train_y, steps=cfg.iterations, lr=cfg.lr, batch_size=cfg.batch_size,
          generator=torch.Generator().manual_seed(1000 * seed + k),
          penalty=(lambda: penalty.penalty(penalty.params)) if alpha else None, after_step=record)
    return curve_a, curve_b


def summarise(k: int, alpha: float, curves_a: list[list[float]], curves_b: list[list[float]],
              iterations: list[int]) -> dict[str, Any]:
    """One result row: per-seed numbers, their mean/std, and the mean/std curves of A and B."""
    per_seed = {
        "a_baseline": [c[0] for c in curves_a],
        "a_final": [c[-1] for c in curves_a],
        "a_drop": [c[0] - c[-1] for c in curves_a],
        "a_worst_drop": [c[0] - min(c) for c in curves_a],
        "b_final": [c[-1] for c in curves_b],
    }
    curve_stats = {"a": columns_mean_std(curves_a), "b": columns_mean_std(curves_b)}
    return {
        "k": k, "alpha": alpha,
        **{name: mean_std(values) for name, values in per_seed.items()},
        "per_seed": per_seed,
        "curves": {"iterations": iterations,
                   **{f"{m}_{stat}": [s[stat] for s in stats] for m, stats in curve_stats.items()
                      for stat in ("mean", "std")}},
    }


def run_protocol(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                 cfg: ToyConfig) -> dict[str, Any]:
    """The whole experiment on in-memory tensors (images flattened and normalised, labels int64).

    Returns the JSON-ready results: for each (k, alpha) the per-seed numbers, their mean/std, and
    the mean/std accuracy curves of A and B over B's iterations. ``a_drop`` is A's loss of accuracy
    at the end of B's training, ``a_worst_drop`` the largest loss at any evaluation. A stop signal
    (``engine.stopping``) after a whole seed keeps the seeds finished: the results hold them, with
    ``stopped`` (the signal's name) and ``seeds_finished``; before one, ``Stopped`` goes on up.
    """
    device = torch.device(cfg.device)
    data = tuple(t.to(device) for t in (train_x, train_y, test_x, test_y))
    runs = [(k, alpha) for k in cfg.shared_layers for alpha in cfg.alphas]
    curves: dict[tuple[int, float], dict[str, list[list[float]]]] = {r: {"a": [], "b": []} for r in runs}
    started = time.perf_counter()
    bar = tqdm(total=cfg.seeds * len(runs), desc="B runs", disable=not sys.stdout.isatty())
    finished, stopped = 0, {}  # seeds done; what stopped the run early, if anything
    try:
        for seed in range(cfg.seeds):
            torch.manual_seed(seed)
            a = make_model_a(cfg.hidden).to(device)
            generator = torch.Generator().manual_seed(seed)
            watcher = learner(cfg.strategy, a, cfg, seed)
            train(a, data[0], data[1], steps=cfg.a_iterations, lr=cfg.lr, batch_size=cfg.batch_size,
                  generator=generator, hooks=watcher)
            fisher_idx = torch.randperm(len(train_x), generator=generator)[:cfg.fisher_samples].to(device)
            importance = importance_of(cfg.strategy, watcher, a, data[0][fisher_idx], data[1][fisher_idx])
            for k, alpha in runs:
                curve_a, curve_b = run_b(a, k, alpha, importance, data, cfg, seed)
                curves[k, alpha]["a"].append(curve_a)
                curves[k, alpha]["b"].append(curve_b)
                bar.update()
            finished = seed + 1
    except Stopped as stop:
        if not finished:
            raise
        stopped = {"stopped": stop.name, "seeds_finished": finished}
    finally:
        bar.close()
    results = [summarise(k, alpha, c["a"][:finished], c["b"][:finished], eval_points(cfg))
               for (k, alpha), c in curves.items()]
    return {"config": asdict(cfg), "seconds": time.perf_counter() - started, "results": results, **stopped}
