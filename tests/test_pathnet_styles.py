"""PathNet's two styles: the TF code's mutation, tournament and modules by hand, convergence, the measurement's files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path as FilePath

import pytest
import torch

import config
from experiments.pathnet import measure
from experiments.pathnet.tournament import BinaryTask, tournament
from experiments.pathnet.transfer import run_pair
from models.pathnet import Path, PathNet
from modes.pathnet import pathnet_configs


def test_the_tf_style_is_a_preset_row_and_explicit_options_win() -> None:
    tf = config.parse_args(["--mode=pathnet", "--pathnet_style=tf", "--pathnet_population=7"])
    assert (tf.pathnet_population, tf.pathnet_converge, tf.pathnet_converge_window, tf.pathnet_count_from) == (7, 0.99, 1, 0)
    assert (tf.pathnet_module_kinds, tf.pathnet_aggregate, tf.pathnet_mutation, tf.pathnet_data) == ("tf", "mean_all", "tf", "tf")
    paper = config.parse_args(["--mode=pathnet"])
    assert (paper.pathnet_population, paper.pathnet_converge, paper.pathnet_converge_window) == (64, 0.97, 5)


def test_tf_mutation_moves_down_by_one_to_four_clamps_and_merges() -> None:
    g = torch.Generator().manual_seed(0)
    # L = 1, N = 2: probability 2 / (L N) = 1, so every active module moves; 1 - k clamps to 0 and merges with 0.
    assert Path(((0, 1),)).mutate_tf(g, 10, 2) == Path(((0,),))
    # One module at 4 with certainty of a move: lands on 3, 2, 1 or 0, evenly.
    landed = Counter(Path(((4,),)).mutate_tf(g, 10, 1).layers[0][0] for _ in range(4000))
    assert set(landed) == {0, 1, 2, 3} and all(abs(n / 4000 - 0.25) < 0.03 for n in landed.values())
    # L = N = 3: each active module moves with probability 2/9 (the TF code's int(rand * L * N) <= 1).
    path = Path(((9, 8, 7), (9, 8, 7), (9, 8, 7)))
    kept = sum(m in layer for _ in range(2000) for layer in path.mutate_tf(g, 10, 3).layers for m in (9,))
    assert abs(1 - kept / 6000 - 2 / 9) < 0.02


def test_tournament_winner_is_copied_into_the_loser_then_mutated() -> None:
    g = torch.Generator().manual_seed(0)
    weak, strong, marker = Path(((1,),)), Path(((2,),)), Path(((7,),))
    population = [weak, strong]
    copied = []

    def mutate(p: Path) -> Path:
        copied.append(p)
        return marker

    out = tournament(population, {weak: 0.6, strong: 0.9}.__getitem__, g, mutate, converge=0.9, max_generations=10,
                     count_from=0)
    assert copied == [strong] and population == [marker, strong]  # the loser's slot holds the mutated copy
    assert out.converged and out.history == [0.9] and out.best_path == strong.to_dict()
    assert (out.tournaments, out.generations) == (1, 0)  # the TF code prints the loop index of the converging tournament


def test_a_tie_goes_to_the_first_drawn_and_the_window_averages_winners() -> None:
    g = torch.Generator().manual_seed(3)
    a, b = Path(((1,),)), Path(((2,),))
    population, order = [a, b], []

    def fitness(p: Path) -> float:
        order.append(p)
        return 0.9

    out = tournament(population, fitness, g, lambda p: p, converge=0.9, max_generations=10, window=3)
    assert out.tournaments == out.generations == 3 and out.history == [0.9] * 3  # the mean of 3 winners at 3
    assert out.best_path == order[-2].to_dict()  # the last tournament's first path won the tie


def test_tf_modules_identity_residual_and_the_mean_over_all_modules() -> None:
    net = PathNet(2, 2, 3, 2, [2], aggregate="mean_all", kinds="tf")
    with torch.no_grad():
        for w, b in zip(net.weights, net.biases):
            w.copy_(torch.eye(2).expand(3, 2, 2))
            b.zero_()
        net.heads[0].weight.copy_(torch.eye(2))
        net.heads[0].bias.zero_()
    x = torch.tensor([[3.0, -1.0]])
    # layer 0: relu(x) / M = [1, 0]; layer 1 module 0 is an identity: [1, 0] / 3
    assert torch.allclose(net(x, Path(((1,), (0,))), 0), torch.tensor([[1 / 3, 0.0]]))
    # module 2 is residual: relu(h) + h = 2h, then / 3; module 1 a plain ReLU layer: h / 3; both: the sum / 3
    assert torch.allclose(net(x, Path(((1,), (2,))), 0), torch.tensor([[2 / 3, 0.0]]))
    assert torch.allclose(net(x, Path(((1,), (1, 2))), 0), torch.tensor([[1.0, 0.0]]))


def easy_task(name: str, feature: int, seed: int) -> BinaryTask:
    """64 pixels in [0, 1]; 32 of them (from ``feature`` on) show the label: easy even under the noise, and
    strong enough for the TF style's outputs divided by M at every layer."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(400, 64, generator=g)
    y = (x[:, feature] > 0.5).long()
    x[:, feature:feature + 32] = y[:, None].float()
    return BinaryTask(name, x, y, x[:100], y[:100], 0.0, 1.0)


@pytest.mark.parametrize("style", ["paper", "tf"])
def test_a_tiny_easy_pair_converges_below_its_cap(style: str) -> None:
    cap = 150  # the TF style's outputs shrink by M at every layer: its start is slow (docs/pathnet.md)
    args = config.parse_args(["--mode=pathnet", f"--pathnet_style={style}", "--pathnet_units=6", "--pathnet_modules=5",
                              "--pathnet_active=2", "--pathnet_population=8", "--pathnet_batches=4",
                              "--noise=0.02", "--pathnet_lr=0.5", f"--pathnet_max_generations={cap}"])
    net, evolution = pathnet_configs(args)
    tasks = {"1v3": easy_task("1v3", 0, 1), "1v2": easy_task("1v2", 0, 2)}
    result = run_pair(tasks, ("1v3", "1v2"), 5, ["scratch", "pathnet"], net, evolution)
    for evo in [result["A"], *result["variants"].values()]:
        assert evo["converged"] and evo["tournaments"] < cap / 2 and evo["best_fitness"] >= evolution.converge - 0.1


def test_the_measurement_writes_its_ledger_and_report_and_resumes(tmp_path: FilePath, monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.pathnet import transfer

    tasks = {"1v3": easy_task("1v3", 0, 1), "1v2": easy_task("1v2", 1, 2)}
    monkeypatch.setattr(transfer, "binary_tasks", lambda data_dir, names, raw=False: tasks)
    argv = ["--styles=tf,paper", "--pairs=1v3,1v2", "--seeds=2", f"--ledger={tmp_path / 'ledger.jsonl'}",
            f"--out={tmp_path}", "--", "--pathnet_units=4", "--pathnet_modules=4", "--pathnet_active=2",
            "--pathnet_population=4", "--pathnet_batches=2", "--pathnet_max_generations=3"]
    assert measure.main(argv) == 0
    lines = (tmp_path / "ledger.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["tf/1v3->1v2/s0", "tf/1v3->1v2/s1", "paper/1v3->1v2/s0",
                                                           "paper/1v3->1v2/s1"]
    summary = json.loads((tmp_path / "pathnet_measure.json").read_text())["summary"]
    records = [json.loads(line)["record"] for line in lines]
    for row in summary:
        runs = [r for r in records if r["style"] == row["style"]]
        assert row["seeds"] == 2 and row["scratch"]["mean"] == sum(r["variants"]["scratch"]["generations"] for r in runs) / 2
        assert row["tf_reported"] == [196.59, 118.32]
    assert (tmp_path / "pathnet_measure.png").stat().st_size > 0 and "| tf | 1v3->1v2 | 2 |" in (
        tmp_path / "pathnet_measure.md").read_text()
    assert measure.main(argv) == 0  # everything in the ledger: nothing reruns
    assert (tmp_path / "ledger.jsonl").read_text().splitlines() == lines
