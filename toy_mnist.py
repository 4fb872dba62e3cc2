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
that is multi-model forgetting. The penalty is :class:`models.wpl.WPL` in ``mode="loss"``, the same
component the search trainer uses; its Fisher is set once from A instead of being a moving average.

Fisher estimator: the per-sample *empirical* Fisher,
``F = (1/N) sum_n (d CE(A(x_n), y_n) / d theta)^2`` with the true labels y_n, over N training images
(``--fisher_samples``), vectorised with ``torch.func.vmap``. On MNIST it is about 60 times the square
of a mean mini-batch gradient, so alpha values do not carry over between the two estimators.

MNIST comes from ``torchvision.datasets.MNIST(root=--data_dir)``, which reads ``<root>/MNIST/raw/``.
Offline, copy or link the four ``*-ubyte.gz`` files there (they are unpacked on first use), e.g.
``mkdir -p data/MNIST/raw && ln -s "$PWD"/../shared/data/mnist/*.gz data/MNIST/raw/``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from models.wpl import WPL

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
A_LAYERS, B_LAYERS = 4, 6
MAX_SHARED = A_LAYERS - 1  # A's last layer is its 10-way classifier and fits nowhere in B's stack

LayerParams = list[tuple[Tensor, Tensor]]  # (weight, bias) per layer


@dataclass(frozen=True)
class ToyConfig:
    """Everything the protocol needs; plain values so tests can build one directly."""

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


# ------------------------------------------------------------------------------------------ models
def mlp_forward(layers: LayerParams, x: Tensor) -> Tensor:
    """ReLU MLP as a pure function of its weights, so ``torch.func`` can differentiate per sample."""
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
    return MLP([linear(n_in, n_out) for n_in, n_out in zip(sizes, sizes[1:])])


def make_model_b(a: MLP, k: int, hidden: int) -> MLP:
    """B = A's first ``k`` layer modules (shared objects) followed by ``6 - k`` fresh layers."""
    if not 1 <= k <= MAX_SHARED:
        raise ValueError(f"shared layers must be in 1..{MAX_SHARED}, got {k}")
    sizes = [hidden] * (B_LAYERS - k) + [10]
    own = [linear(n_in, n_out) for n_in, n_out in zip(sizes, sizes[1:])]
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
) -> None:
    """Adam on random mini-batches (drawn with ``generator``), plus an optional extra loss term.

    Adam rather than SGD because plain SGD on a strong WPL term diverges once
    ``lr * alpha * max(F)`` reaches about 2; Adam's step size does not scale with the penalty.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(1, steps + 1):
        idx = torch.randint(len(x), (batch_size,), generator=generator).to(x.device)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if penalty is not None:
            loss = loss + penalty()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step(step)


def empirical_fisher(model: MLP, x: Tensor, y: Tensor, chunk: int = 512) -> LayerParams:
    """Per-sample empirical Fisher diagonal of ``model``'s cross-entropy, (F_weight, F_bias) per layer.

    ``F = mean_n g_n^2`` with ``g_n`` the gradient of sample n's loss at its true label; the
    per-sample gradients come from ``vmap(grad(...))`` in chunks to bound memory.
    """
    from torch.func import grad, vmap

    params = [(layer.weight.detach(), layer.bias.detach()) for layer in model.layers]

    def sample_loss(layers: LayerParams, xi: Tensor, yi: Tensor) -> Tensor:
        return F.cross_entropy(mlp_forward(layers, xi[None]), yi[None])

    per_sample_grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    fisher = [(torch.zeros_like(w), torch.zeros_like(b)) for w, b in params]
    for start in range(0, len(x), chunk):
        grads = per_sample_grads(params, x[start:start + chunk], y[start:start + chunk])
        for (fw, fb), (gw, gb) in zip(fisher, grads):
            fw.add_(gw.square().sum(0))
            fb.add_(gb.square().sum(0))
    return [(fw / len(x), fb / len(x)) for fw, fb in fisher]


def make_wpl(a: MLP, k: int, fisher: LayerParams) -> WPL:
    """WPL over A's first ``k`` layers (one group per layer), Fisher from A, anchors theta* = A's weights."""
    wpl = WPL({f"layer{i + 1}": [a.layers[i].weight, a.layers[i].bias] for i in range(k)}, mode="loss")
    with torch.no_grad():
        for i in range(k):
            for stored, value in zip(wpl.fisher[f"layer{i + 1}"], fisher[i]):
                stored.copy_(value)
    wpl.refresh_anchors()
    return wpl


# ------------------------------------------------------------------------------------- protocol
def eval_points(cfg: ToyConfig) -> list[int]:
    """B-iterations at which both models are evaluated: 0, every ``eval_every`` steps, and the last."""
    return sorted({0, cfg.iterations, *range(cfg.eval_every, cfg.iterations + 1, cfg.eval_every)})


def run_b(a: MLP, k: int, alpha: float, fisher: LayerParams, data: tuple[Tensor, ...], cfg: ToyConfig,
          seed: int) -> tuple[list[float], list[float]]:
    """Train a B sharing ``k`` layers with (a copy of) ``a``; return A's and B's test-accuracy curves.

    The seed depends on (seed, k) only, so runs that differ only in alpha start from the same B and
    see the same batches.
    """
    train_x, train_y, test_x, test_y = data
    a = copy.deepcopy(a)
    torch.manual_seed(1000 * seed + k)
    b = make_model_b(a, k, cfg.hidden)
    wpl = make_wpl(a, k, fisher)
    points = set(eval_points(cfg))
    curve_a, curve_b = [accuracy(a, test_x, test_y)], [accuracy(b, test_x, test_y)]

    def record(step: int) -> None:
        if step in points:
            curve_a.append(accuracy(a, test_x, test_y))
            curve_b.append(accuracy(b, test_x, test_y))

    train(b, train_x, train_y, steps=cfg.iterations, lr=cfg.lr, batch_size=cfg.batch_size,
          generator=torch.Generator().manual_seed(1000 * seed + k),
          penalty=(lambda: wpl.penalty(wpl.params, alpha)) if alpha else None, after_step=record)
    return curve_a, curve_b


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single seed)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def run_protocol(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                 cfg: ToyConfig) -> dict[str, Any]:
    """The whole experiment on in-memory tensors (images flattened and normalised, labels int64).

    Returns the JSON-ready results: for each (k, alpha) the per-seed numbers, their mean/std, and
    the mean/std accuracy curves of A and B over B's iterations. ``a_drop`` is A's loss of accuracy
    at the end of B's training, ``a_worst_drop`` the largest loss at any evaluation.
    """
    device = torch.device(cfg.device)
    data = tuple(t.to(device) for t in (train_x, train_y, test_x, test_y))
    runs = [(k, alpha) for k in cfg.shared_layers for alpha in cfg.alphas]
    curves: dict[tuple[int, float], dict[str, list[list[float]]]] = {r: {"a": [], "b": []} for r in runs}
    started = time.perf_counter()
    bar = tqdm(total=cfg.seeds * len(runs), desc="B runs", disable=not sys.stdout.isatty())
    for seed in range(cfg.seeds):
        torch.manual_seed(seed)
        a = make_model_a(cfg.hidden).to(device)
        generator = torch.Generator().manual_seed(seed)
        train(a, data[0], data[1], steps=cfg.a_iterations, lr=cfg.lr, batch_size=cfg.batch_size,
              generator=generator)
        fisher_idx = torch.randperm(len(train_x), generator=generator)[:cfg.fisher_samples].to(device)
        fisher = empirical_fisher(a, data[0][fisher_idx], data[1][fisher_idx])
        for k, alpha in runs:
            curve_a, curve_b = run_b(a, k, alpha, fisher, data, cfg, seed)
            curves[k, alpha]["a"].append(curve_a)
            curves[k, alpha]["b"].append(curve_b)
            bar.update()
    bar.close()

    results = []
    for (k, alpha), per_model in curves.items():
        per_seed = {
            "a_baseline": [c[0] for c in per_model["a"]],
            "a_final": [c[-1] for c in per_model["a"]],
            "a_drop": [c[0] - c[-1] for c in per_model["a"]],
            "a_worst_drop": [c[0] - min(c) for c in per_model["a"]],
            "b_final": [c[-1] for c in per_model["b"]],
        }
        curve_stats = {m: [mean_std(column) for column in zip(*c)] for m, c in per_model.items()}
        results.append({
            "k": k, "alpha": alpha,
            **{name: mean_std(values) for name, values in per_seed.items()},
            "per_seed": per_seed,
            "curves": {
                "iterations": eval_points(cfg),
                **{f"{m}_{stat}": [s[stat] for s in stats]
                   for m, stats in curve_stats.items() for stat in ("mean", "std")},
            },
        })
    return {"config": asdict(cfg), "seconds": time.perf_counter() - started, "results": results}


# -------------------------------------------------------------------------------------- outputs
def format_table(results: dict[str, Any]) -> str:
    """One row per (k, alpha): accuracies in percent, mean ± std over seeds."""
    columns = [("a_baseline", "A before"), ("a_final", "A after"), ("a_drop", "A drop"),
               ("a_worst_drop", "A worst drop"), ("b_final", "B final")]
    lines = [f"{'k':>2} {'alpha':>8} " + " ".join(f"{title:>13}" for _, title in columns)]
    for row in results["results"]:
        cells = " ".join(f"{row[key]['mean']:6.2f} ± {row[key]['std']:4.2f}" for key, _ in columns)
        lines.append(f"{row['k']:>2} {row['alpha']:>8g} {cells}")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """One panel per k: A's (blue) and B's (orange) test accuracy over B's iterations, ± std shaded.

    Line style tells the alpha apart (dashed: alpha = 0, no WPL). The y axis starts a little below
    A's lowest point, so B's first, near-chance evaluations fall off the bottom.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({row["k"] for row in results["results"]})
    alphas = sorted({row["alpha"] for row in results["results"]})
    styles = ["--", "-", ":", "-."]
    fig, axes = plt.subplots(1, len(ks), figsize=(4.5 * len(ks), 3.8), sharey=True, squeeze=False)
    lowest = min(min(row["curves"]["a_mean"]) for row in results["results"])
    for ax, k in zip(axes[0], ks):
        for row in (r for r in results["results"] if r["k"] == k):
            curves, style = row["curves"], styles[alphas.index(row["alpha"]) % len(styles)]
            for model, color in (("a", "tab:blue"), ("b", "tab:orange")):
                mean, std = torch.tensor(curves[f"{model}_mean"]), torch.tensor(curves[f"{model}_std"])
                label = f"{model.upper()}, " + ("no WPL" if row["alpha"] == 0 else f"WPL α={row['alpha']:g}")
                ax.plot(curves["iterations"], mean, style, color=color, label=label)
                ax.fill_between(curves["iterations"], mean - std, mean + std, color=color, alpha=0.15)
        ax.set_title(f"B shares A's first {k} layer{'s' if k > 1 else ''}")
        ax.set_xlabel("B training iterations")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].set_ylim(max(0.0, lowest - 5.0), 100.0)
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: dict[str, Any], output_dir: Path) -> None:
    """``toy_results.json`` and ``toy_forgetting.png`` in ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "toy_results.json").write_text(json.dumps(results, indent=1))
    plot(results, output_dir / "toy_forgetting.png")


# ------------------------------------------------------------------------------------ data, CLI
def load_mnist(data_dir: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MNIST as four tensors: flattened, normalised images and int64 labels, train then test.

    torchvision downloads into ``<data_dir>/MNIST/raw`` when the unpacked idx files are missing.
    ``.gz`` files already there are unpacked first: torchvision would re-download any archive whose
    checksum is not the canonical one (a re-compressed copy such as ``../shared/data/mnist``), even
    though its content is identical. Failure exits with one line saying where the files belong.
    """
    import gzip
    import shutil

    from torchvision.datasets import MNIST

    for archive in (data_dir / "MNIST" / "raw").glob("*-ubyte.gz"):
        unpacked = archive.with_suffix("")
        if not unpacked.exists():
            with gzip.open(archive, "rb") as src, open(unpacked, "wb") as dst:
                shutil.copyfileobj(src, dst)
    try:
        splits = [MNIST(root=str(data_dir), train=train, download=True) for train in (True, False)]
    except (RuntimeError, OSError) as error:
        reason = str(error).strip().splitlines()[0].rstrip(":")
        raise SystemExit(f"error: MNIST is not in {data_dir / 'MNIST' / 'raw'} and could not be downloaded "
                         f"({reason}); put {', '.join(MNIST_FILES)} there (e.g. from ../shared/data/mnist/)")
    tensors: list[Tensor] = []
    for split in splits:
        tensors.append((split.data.flatten(1).float() / 255.0 - MNIST_MEAN) / MNIST_STD)
        tensors.append(split.targets.long())
    return tensors[0], tensors[1], tensors[2], tensors[3]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = ToyConfig()
    parser = argparse.ArgumentParser(
        description="Two-model MNIST example of multi-model forgetting and WPL (ICML 2019). Model A "
                    "(4 layers) is trained briefly; B (6 layers) shares A's first k layers and is trained "
                    "with CE_B + (alpha/2) sum F (theta - theta*)^2, F the per-sample empirical Fisher "
                    "diagonal of A's loss at A's weights theta*.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--shared_layers", type=int, nargs="+", default=list(defaults.shared_layers),
                        choices=range(1, MAX_SHARED + 1), metavar="K", help="values of k (1..3) to run")
    parser.add_argument("--alpha", type=float, nargs="+", default=list(defaults.alphas),
                        help="WPL strengths; 0 is plain training. Scaled for the per-sample empirical "
                             "Fisher, which is ~60x the squared mean mini-batch gradient")
    parser.add_argument("--hidden", type=int, default=defaults.hidden, help="hidden width h")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate for A and B")
    parser.add_argument("--a_iterations", type=int, default=defaults.a_iterations,
                        help="A's training steps (short on purpose: the paper's A is at about 89%%)")
    parser.add_argument("--iterations", type=int, default=defaults.iterations, help="B's training steps")
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size)
    parser.add_argument("--eval_every", type=int, default=defaults.eval_every,
                        help="evaluate A and B on the test set every this many B steps")
    parser.add_argument("--fisher_samples", type=int, default=defaults.fisher_samples,
                        help="training images in the per-sample empirical Fisher")
    parser.add_argument("--seeds", type=int, default=defaults.seeds, help="number of seeds (0, 1, ...)")
    parser.add_argument("--data_dir", type=Path, default=Path("data"),
                        help="torchvision MNIST root: files live in DATA_DIR/MNIST/raw")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/toy_mnist"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    for name in ("hidden", "iterations", "a_iterations", "batch_size", "eval_every", "fisher_samples", "seeds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cfg = ToyConfig(shared_layers=tuple(args.shared_layers), alphas=tuple(args.alpha), hidden=args.hidden,
                    lr=args.lr, a_iterations=args.a_iterations, iterations=args.iterations,
                    batch_size=args.batch_size, eval_every=args.eval_every,
                    fisher_samples=args.fisher_samples, seeds=args.seeds, device=args.device)
    results = run_protocol(*load_mnist(args.data_dir), cfg)
    write_outputs(results, args.output_dir)
    print(format_table(results))
    print(f"{cfg.seeds} seed(s) in {results['seconds']:.1f} s; results and plot in {args.output_dir}")
    return results


if __name__ == "__main__":
    main()
