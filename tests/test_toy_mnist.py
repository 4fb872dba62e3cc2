"""The two-model MNIST example on tiny synthetic tensors: sharing, the WPL penalty, the outputs, the CLI."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import toy_mnist
from data.image import MNIST_MEAN, MNIST_STD
from data.tasks import load_mnist
from experiments.two_model.protocol import (MLP, ToyConfig, empirical_fisher, eval_points, importance_of, learner, make_model_a,
                                   make_model_b, make_penalty, run_protocol, train)
from experiments.two_model.report import format_table, write_outputs
from utils import UserError

HIDDEN = 16


def fake_mnist(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 784-d inputs labelled by a fixed linear rule, so the task is learnable."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 784, generator=g)
    rule = torch.randn(784, 10, generator=torch.Generator().manual_seed(123))
    return x, (x @ rule).argmax(1)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, ...]:
    return (*fake_mnist(256, 0), *fake_mnist(128, 1))


@pytest.fixture()
def trained_a(data: tuple[torch.Tensor, ...]) -> MLP:
    torch.manual_seed(0)
    a = make_model_a(HIDDEN)
    train(a, data[0], data[1], steps=20, lr=1e-3, batch_size=32, generator=torch.Generator().manual_seed(0))
    return a


def test_b_uses_a_own_layer_objects_for_the_first_k_layers() -> None:
    torch.manual_seed(0)
    a = make_model_a(HIDDEN)
    for k in (1, 2, 3):
        b = make_model_b(a, k, HIDDEN)
        assert len(a.layers) == 4 and len(b.layers) == 6
        for i in range(k):
            assert b.layers[i] is a.layers[i] and b.layers[i].weight is a.layers[i].weight
        assert all(b.layers[i] is not layer for i in range(k, 6) for layer in a.layers)
        assert b(torch.zeros(2, 784)).shape == (2, 10)
        # a step on B changes A's function: the parameters are really shared, not copied
        before = a(torch.ones(1, 784)).detach()
        with torch.no_grad():
            b.layers[0].weight.add_(0.1)
        assert not torch.equal(a(torch.ones(1, 784)), before)
    for k in (0, 4):
        with pytest.raises(ValueError):
            make_model_b(a, k, HIDDEN)


def test_empirical_fisher_is_mean_squared_per_sample_gradient(trained_a, data) -> None:
    x, y = data[0][:10], data[1][:10]
    fisher = empirical_fisher(trained_a, x, y, chunk=4)  # chunks of 4, 4, 2
    expected = [(torch.zeros_like(l.weight), torch.zeros_like(l.bias)) for l in trained_a.layers]
    for xi, yi in zip(x, y):
        trained_a.zero_grad()
        F.cross_entropy(trained_a(xi[None]), yi[None]).backward()
        for (fw, fb), layer in zip(expected, trained_a.layers):
            fw.add_(layer.weight.grad.square() / len(x))
            fb.add_(layer.bias.grad.square() / len(x))
    for (got_w, got_b), (exp_w, exp_b) in zip(fisher, expected):
        torch.testing.assert_close(got_w, exp_w, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(got_b, exp_b, rtol=1e-4, atol=1e-9)
    assert all(fw.sum() > 0 for fw, _ in fisher)


def test_penalty_is_zero_at_theta_star_and_its_gradient_is_alpha_f_delta(trained_a, data) -> None:
    k, alpha = 2, 7.0
    fisher = empirical_fisher(trained_a, data[0][:64], data[1][:64])
    b = make_model_b(trained_a, k, HIDDEN)
    wpl = make_penalty("wpl", trained_a, k, fisher)
    assert list(wpl.params) == ["layer1", "layer2"]
    for i in range(k):
        assert wpl.params[f"layer{i + 1}"][0] is trained_a.layers[i].weight
        torch.testing.assert_close(wpl.fisher[f"layer{i + 1}"][0], fisher[i][0], rtol=0, atol=0)
    assert wpl.penalty(wpl.params, alpha).item() == 0.0

    theta_star = [p.detach().clone() for p in b.parameters()]
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.05 * torch.randn_like(p))
    b.zero_grad()
    value = wpl.penalty(wpl.params, alpha)
    value.backward()
    assert value.item() > 0
    shared = [(layer.weight, fisher[i][0]) for i, layer in enumerate(b.layers[:k])]
    shared += [(layer.bias, fisher[i][1]) for i, layer in enumerate(b.layers[:k])]
    stars = {id(p): s for p, s in zip(b.parameters(), theta_star)}
    for p, f in shared:
        torch.testing.assert_close(p.grad, alpha * f * (p.detach() - stars[id(p)]))
    expected_value = sum(0.5 * alpha * (f * (p.detach() - stars[id(p)]) ** 2).sum() for p, f in shared)
    torch.testing.assert_close(value.detach(), expected_value)
    assert all(layer.weight.grad is None for layer in b.layers[k:])  # B's own layers are not penalised


def test_huge_alpha_keeps_shared_weights_while_b_own_layers_learn(trained_a, data) -> None:
    k = 2
    fisher = empirical_fisher(trained_a, data[0], data[1])

    def movement(alpha: float) -> tuple[float, float]:
        torch.manual_seed(1)
        a = make_model_a(HIDDEN)
        a.load_state_dict(trained_a.state_dict())
        b = make_model_b(a, k, HIDDEN)
        wpl = make_penalty("wpl", a, k, fisher)
        start = [p.detach().clone() for p in b.parameters()]
        train(b, data[0], data[1], steps=100, lr=1e-3, batch_size=32, generator=torch.Generator().manual_seed(2),
              penalty=(lambda: wpl.penalty(wpl.params, alpha)) if alpha else None)
        moved = [(p.detach() - s).abs().mean().item() for p, s in zip(b.parameters(), start)]
        return max(moved[:2 * k]), min(moved[2 * k::2])  # shared params; B's own weight matrices

    shared_free, own_free = movement(0.0)
    shared_wpl, own_wpl = movement(1e8)
    assert shared_wpl < 0.1 * shared_free
    assert shared_wpl < 0.1 * own_wpl
    assert own_wpl > 0.3 * own_free


def test_run_protocol_and_outputs(data, tmp_path: Path) -> None:
    cfg = ToyConfig(shared_layers=(1, 3), alphas=(0.0, 50.0), hidden=HIDDEN, a_iterations=10, iterations=12,
                    batch_size=16, eval_every=5, fisher_samples=40, seeds=2)
    assert eval_points(cfg) == [0, 5, 10, 12]
    results = run_protocol(*data, cfg)
    assert [(r["k"], r["alpha"]) for r in results["results"]] == [(1, 0.0), (1, 50.0), (3, 0.0), (3, 50.0)]
    baselines = {tuple(r["per_seed"]["a_baseline"]) for r in results["results"]}
    assert len(baselines) == 1  # every run starts from the same trained A of each seed
    for row in results["results"]:
        seeds = row["per_seed"]
        assert len(seeds["a_final"]) == 2
        assert seeds["a_drop"] == pytest.approx([b - f for b, f in zip(seeds["a_baseline"], seeds["a_final"])])
        assert all(w >= d for w, d in zip(seeds["a_worst_drop"], seeds["a_drop"]))
        assert row["b_final"]["mean"] == pytest.approx(sum(seeds["b_final"]) / 2)
        curves = row["curves"]
        assert curves["iterations"] == [0, 5, 10, 12]
        assert all(len(curves[key]) == 4 for key in ("a_mean", "a_std", "b_mean", "b_std"))
        assert curves["a_mean"][0] == pytest.approx(row["a_baseline"]["mean"])
        assert curves["b_mean"][-1] == pytest.approx(row["b_final"]["mean"])

    assert run_protocol(*data, cfg)["results"] == results["results"]  # seeded: identical on a rerun

    write_outputs(results, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "toy_results.json").read_text())
    assert saved["results"] == results["results"] and saved["config"]["alphas"] == [0.0, 50.0]
    png = (tmp_path / "out" / "toy_forgetting.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    table = format_table(results).splitlines()
    assert len(table) == 5 and table[2].split()[:2] == ["1", "50"]


def write_idx(path: Path, tensor: torch.Tensor) -> None:
    header = struct.pack(">I", 0x0800 + tensor.dim()) + b"".join(struct.pack(">I", s) for s in tensor.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + tensor.to(torch.uint8).numpy().tobytes())


def test_load_mnist_reads_gz_files_and_normalises(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 6), ("t10k", 4)):
        write_idx(raw / f"{split}-images-idx3-ubyte.gz", torch.arange(n * 784).reshape(n, 28, 28) % 256)
        write_idx(raw / f"{split}-labels-idx1-ubyte.gz", torch.arange(n) % 10)
    train_x, train_y, test_x, test_y = load_mnist(tmp_path)
    assert train_x.shape == (6, 784) and test_x.shape == (4, 784)
    assert train_y.tolist() == [0, 1, 2, 3, 4, 5] and test_y.dtype == torch.int64
    assert train_x[0, 0].item() == pytest.approx(-MNIST_MEAN[0] / MNIST_STD[0])
    assert train_x[0, 255].item() == pytest.approx((1 - MNIST_MEAN[0]) / MNIST_STD[0])


def test_cli_is_strict_and_missing_mnist_is_one_line(tmp_path: Path) -> None:
    for bad in (["--bogus"], ["--shared_layers", "4"], ["--iterations", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            toy_mnist.parse_args(bad)
        assert exit_info.value.code == 2
    args = toy_mnist.parse_args(["--alpha", "0", "10", "--shared_layers", "2"])
    assert args.alpha == [0.0, 10.0] and args.shared_layers == [2]

    with pytest.raises(SystemExit) as exit_info:
        toy_mnist.main(["--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    message = str(exit_info.value.code)
    assert "\n" not in message and str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte[.gz]" in message and not (tmp_path / "out").exists()


@pytest.mark.parametrize("strategy", ["ewc", "mas", "si", "l2"])
def test_every_importance_protects_the_shared_layers(strategy: str, data) -> None:
    cfg = ToyConfig(hidden=HIDDEN, fisher_samples=64, strategy=strategy)
    torch.manual_seed(0)
    a = make_model_a(HIDDEN)
    watcher = learner(strategy, a, cfg, seed=0)
    train(a, data[0], data[1], steps=20, lr=1e-3, batch_size=32, generator=torch.Generator().manual_seed(0),
          hooks=watcher)
    importance = importance_of(strategy, watcher, a, data[0][:64], data[1][:64])
    assert len(importance) == 3
    assert [tuple(w.shape) for w, _ in importance] == [(HIDDEN, 784), (HIDDEN, HIDDEN), (HIDDEN, HIDDEN)]
    assert all(float(w.sum()) > 0 for w, _ in importance)
    if strategy == "l2":
        assert all(bool((w == 1).all() and (b == 1).all()) for w, b in importance)
    penalty = make_penalty(strategy, a, 2, importance, alpha=1e8)
    assert list(penalty.params) == ["layer1", "layer2"] and float(penalty.penalty(penalty.params)) == 0.0
    torch.manual_seed(1)
    b = make_model_b(a, 2, HIDDEN)
    start = [p.detach().clone() for p in b.parameters()]
    train(b, data[0], data[1], steps=30, lr=1e-3, batch_size=32, generator=torch.Generator().manual_seed(2),
          penalty=lambda: penalty.penalty(penalty.params))
    moved = [(p.detach() - s).abs().mean().item() for p, s in zip(b.parameters(), start)]
    assert max(moved[:4]) < 0.1 * min(moved[4::2])  # shared weights held, B's own layers learn


def test_ewc_here_is_the_true_fisher_and_differs_from_wpl(trained_a, data) -> None:
    cfg = ToyConfig(hidden=HIDDEN, fisher_samples=64, strategy="ewc")
    x, y = data[0][:64], data[1][:64]
    wpl = importance_of("wpl", learner("wpl", trained_a, cfg, 0), trained_a, x, y)
    ewc = importance_of("ewc", learner("ewc", trained_a, cfg, 0), trained_a, x, y)
    empirical = empirical_fisher(trained_a, x, y)
    torch.testing.assert_close(wpl[0][0], empirical[0][0], rtol=0, atol=0)
    assert not torch.allclose(ewc[0][0], wpl[0][0])


def test_paper_protocol_presets_and_early_evaluations() -> None:
    args = toy_mnist.parse_args(["--protocol", "paper", "--iterations", "50", "--strategy", "si"])
    assert (args.iterations, args.batch_size, args.eval_every, args.seeds) == (50, 128, 10, 10)
    assert args.strategy == "si" and args.protocol == "paper"
    default = toy_mnist.parse_args([])
    assert (default.protocol, default.iterations, default.batch_size, default.seeds) == ("long", 1500, 64, 3)
    cfg = ToyConfig(iterations=30, eval_every=10, protocol="paper")
    assert eval_points(cfg) == [0, 1, 2, 3, 5, 10, 20, 30]
    assert eval_points(ToyConfig(iterations=30, eval_every=10)) == [0, 10, 20, 30]
    with pytest.raises(SystemExit):
        toy_mnist.parse_args(["--strategy", "bogus"])
    with pytest.raises(UserError):
        ToyConfig(protocol="bogus")


def test_a_stop_signal_keeps_the_seeds_finished_and_says_so(data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import signal

    from engine.stopping import Stopped
    from experiments.two_model import protocol
    from family_harness import write_mnist

    cfg = ToyConfig(shared_layers=(1,), alphas=(0.0, 50.0), hidden=HIDDEN, a_iterations=5, iterations=6,
                    batch_size=16, eval_every=3, fisher_samples=20, seeds=3)
    real = protocol.run_b

    def interrupted_at(seed_stop: int):  # type: ignore[no-untyped-def]
        def run_b(a, k, alpha, importance, data, cfg, seed):  # type: ignore[no-untyped-def]
            if seed == seed_stop and alpha > 0:  # the signal lands inside a seed, after one of its runs
                raise Stopped(signal.SIGINT)
            return real(a, k, alpha, importance, data, cfg, seed)
        return run_b

    monkeypatch.setattr(protocol, "run_b", interrupted_at(1))
    kept = run_protocol(*data, cfg)
    one = run_protocol(*data, ToyConfig(**{**cfg.__dict__, "seeds": 1}))  # seed 0 never reaches the stop
    assert kept["stopped"] == "SIGINT" and kept["seeds_finished"] == 1
    assert kept["results"] == one["results"]  # the half-done seed 1 is dropped from every (k, alpha), not mixed in
    monkeypatch.setattr(protocol, "run_b", interrupted_at(0))
    with pytest.raises(Stopped):  # nothing finished: nothing to keep
        run_protocol(*data, cfg)

    write_mnist(tmp_path / "mnist")
    monkeypatch.setattr(protocol, "run_b", interrupted_at(1))
    argv = ["--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--shared_layers", "1", "--alpha", "0",
            "50", "--hidden", "8", "--a_iterations", "3", "--iterations", "3", "--eval_every", "3",
            "--fisher_samples", "8", "--seeds", "2"]
    with pytest.raises(SystemExit) as exit_info:
        toy_mnist.main(argv)
    assert exit_info.value.code == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("stopped by SIGINT: 1 of 2 seeds kept in ")
    saved = json.loads((tmp_path / "out" / "toy_results.json").read_text())
    assert saved["seeds_finished"] == 1 and len(saved["results"][0]["per_seed"]["a_final"]) == 1
