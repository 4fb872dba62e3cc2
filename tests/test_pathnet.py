"""PathNet: path encoding and mutation statistics, tournaments, frozen modules, a resumed experiment."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path as FilePath

import pytest
import torch

from experiments.pathnet import run as pathnet_run
from experiments.pathnet.tournament import BinaryTask, TournamentConfig, make_step, tournament, train_path
from experiments.pathnet.transfer import NetConfig, parse_pairs
from models.pathnet import Path, PathNet
from utils import UserError


def test_path_json_round_trip_and_validation() -> None:
    path = Path.random(torch.Generator().manual_seed(0), 3, 10, 3)
    assert Path.from_dict(json.loads(json.dumps(path.to_dict())), 3, 10) == path
    with pytest.raises(UserError, match="not a path of 3 layers"):
        Path.from_dict({"layers": [[0, 11], [1], [2]]}, 3, 10)
    assert Path(((4, 4, 1), (0,), (9, 2))).modules(0) == [1, 4]  # a repeated index counts once


def test_mutation_rate_offsets_and_bounds() -> None:
    g = torch.Generator().manual_seed(1)
    base = Path(tuple((5,) * 10 for _ in range(10)))  # 100 indices in the middle of 0..10
    moved = [m - 5 for _ in range(200) for layer in base.mutate(g, 11, 0.3).layers for m in layer]
    changed = [d for d in moved if d != 0]
    # P(changed) = rate * P(offset != 0) = 0.3 * 4/5 = 0.24, offsets uniform on {-2, -1, 1, 2}
    assert abs(len(changed) / len(moved) - 0.24) < 0.01
    for d in (-2, -1, 1, 2):
        assert abs(changed.count(d) / len(changed) - 0.25) < 0.02
    edge = Path(((0, 9),) * 50)
    wrapped = {m for _ in range(50) for layer in edge.mutate(g, 10, 1.0, "wrap").layers for m in layer}
    clipped = {m for _ in range(50) for layer in edge.mutate(g, 10, 1.0, "clip").layers for m in layer}
    assert wrapped == {8, 9, 0, 1, 7, 2} and clipped == {0, 1, 2, 7, 8, 9}
    assert all(0 <= m < 10 for m in wrapped | clipped)


def test_tournament_bookkeeping_on_a_toy_fitness() -> None:
    g = torch.Generator().manual_seed(2)
    population = [Path.random(g, 2, 10, 2) for _ in range(8)]
    fitness_calls = []

    def zeros(path: Path) -> float:  # fraction of indices that are 0
        fitness_calls.append(path)
        return sum(m == 0 for layer in path.layers for m in layer) / 4

    before = list(population)
    seen = []
    out = tournament(population, zeros, g, lambda p: p.mutate(g, 10, 0.25, "wrap"), 1.0, 400,
                     on_generation=lambda gen, best: seen.append((gen, best)))
    assert len(fitness_calls) == 2 * out.generations and [s[0] for s in seen] == list(range(out.generations))
    assert out.history == [s[1] for s in seen] and out.converged and out.history[-1] == 1.0
    assert out.best_path == {"layers": [[0, 0], [0, 0]]}
    assert population != before  # losers were overwritten
    assert out.generations < 400


def synthetic_task(name: str, seed: int) -> BinaryTask:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 12, generator=g)
    y = (x[:, seed % 12] > 0).long()
    return BinaryTask(name, x, y, x[:50], y[:50], -1.0, 1.0)


CFG = TournamentConfig(population=6, batches=3, batch_size=8, lr=0.1, converge=0.99, max_generations=4, noise=0.1,
                      mutation_bound="wrap")


def test_frozen_modules_receive_no_update_even_with_a_penalty() -> None:
    from regularizers.base import Regularizer

    net = PathNet(12, 2, 4, 5, [2, 2])
    frozen = Path(((0, 1), (2,)))
    net.freeze(frozen)
    reg = Regularizer(net.groups(), 10.0)
    reg.set_importance("layer.0", [torch.ones_like(net.weights[0]), torch.ones_like(net.biases[0])])
    with torch.no_grad():
        net.weights[0].add_(0.5)  # away from the anchor: the penalty has a gradient everywhere in layer 0
    before = [w.detach().clone() for w in net.weights]
    train_path(net, Path(((0, 3), (2, 1))), 1, synthetic_task("t", 0), CFG, make_step(net, 0.5),
               torch.Generator().manual_seed(0), reg)
    assert torch.equal(net.weights[0][[0, 1]], before[0][[0, 1]]) and torch.equal(net.weights[1][2], before[1][2])
    assert not torch.equal(net.weights[0][3], before[0][3]) and not torch.equal(net.weights[1][1], before[1][1])
    assert not torch.equal(net.weights[0][2], before[0][2])  # off the path: moved by the penalty alone


def test_parse_pairs() -> None:
    assert parse_pairs("1v3,1v2+4v5,6v7") == [("1v3", "1v2"), ("4v5", "6v7")]
    assert parse_pairs("1v3,3v1") == [("1v3", "3v1")]  # the labels swapped: another task
    with pytest.raises(UserError, match="transfers a task to itself"):
        parse_pairs("1v3,1v3")
    with pytest.raises(UserError, match="expected pairs"):
        parse_pairs("1v3")


def test_an_interrupted_experiment_resumes_to_the_uninterrupted_results(tmp_path: FilePath, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = {"1v3": synthetic_task("1v3", 1), "1v2": synthetic_task("1v2", 2)}
    monkeypatch.setattr(pathnet_run, "binary_tasks", lambda data_dir, names, raw=False: tasks)
    net = NetConfig(layers=2, modules=4, units=5, active=2, aggregate="sum", wpl_alpha=10.0, fisher_batches=2)
    args = ("", "1v3,1v2", ["pathnet", "wpl"], [0, 1], net, replace(CFG, max_generations=2))
    whole = pathnet_run.run_pathnet(tmp_path / "whole", *args, resume=False, use_tensorboard=False)

    real = pathnet_run.run_pair
    calls = []

    def interrupted(*a, **k):
        calls.append(a[2])
        if a[2] == 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pathnet_run, "run_pair", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pathnet_run.run_pathnet(tmp_path / "cut", *args, resume=False, use_tensorboard=False)
    monkeypatch.setattr(pathnet_run, "run_pair", real)
    with pytest.raises(UserError, match="--resume=True"):
        pathnet_run.run_pathnet(tmp_path / "cut", *args, resume=False, use_tensorboard=False)
    resumed = pathnet_run.run_pathnet(tmp_path / "cut", *args, resume=True, use_tensorboard=False)

    def strip(runs):
        return [{**r, "A": {k: v for k, v in r["A"].items() if k != "seconds"},
                 "variants": {n: {k: v for k, v in x.items() if k != "seconds"} for n, x in r["variants"].items()}}
                for r in runs]

    assert strip(resumed["runs"]) == strip(whole["runs"])
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["seed"] for line in lines] == [0, 1]
    assert (tmp_path / "cut" / "pathnet.png").stat().st_size > 0

