"""--cl_task_order: split MNIST's digit pairs drawn per seed (van de Ven & Tolias's code), paired across strategies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import config
import main
from data.tasks import build_sequence, load_mnist, split_mnist_groups
from engine import stamp
from experiments.continual import protocol
from experiments.continual.main import resumable_state
from family_harness import write_mnist
from modes.continual import build_config
from utils import UserError

TINY = ["--cl_iters=3", "--cl_eval_every=3", "--cl_hidden=8", "--importance_samples=16"]


def pairs_by_hand(seed: int) -> list[list[int]]:
    digits = torch.randperm(10, generator=torch.Generator().manual_seed(seed)).tolist()
    return [digits[0:2], digits[2:4], digits[4:6], digits[6:8], digits[8:10]]


def test_shuffled_pairs_are_the_seeds_permutation_taken_in_pairs() -> None:
    assert split_mnist_groups("fixed", 7) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]  # today's tasks, any seed
    first, second = split_mnist_groups("shuffled", 12345), split_mnist_groups("shuffled", 12346)
    assert first == pairs_by_hand(12345) and second == pairs_by_hand(12346)
    assert first != second and first == split_mnist_groups("shuffled", 12345)  # per seed, and reproducible
    for groups in (first, second):
        assert sorted(d for g in groups for d in g) == list(range(10)) and all(len(g) == 2 for g in groups)
    with pytest.raises(ValueError, match="unknown task order"):
        split_mnist_groups("reversed", 0)


def test_a_shuffled_sequence_keeps_each_scenarios_labels(tmp_path: Path) -> None:
    write_mnist(tmp_path / "mnist")
    groups, (x, y, _, _) = pairs_by_hand(3), load_mnist(tmp_path)
    for scenario in ("task", "domain", "class"):
        seq = build_sequence("split_mnist", scenario, tmp_path, seed=3, task_order="shuffled")
        assert [t.name for t in seq.tasks] == [f"{a}/{b}" for a, b in groups]
        a, b = groups[1]
        task = seq.tasks[1]
        expected = {a: a, b: b} if scenario == "class" else {a: 0, b: 1}  # global digit, or position in the task
        digits = y[torch.isin(y, torch.tensor([a, b]))]
        assert task.y_train.tolist() == [expected[int(d)] for d in digits]
        assert len(task.x_train) == len(digits) and torch.equal(task.x_train, x[torch.isin(y, torch.tensor([a, b]))])


def test_the_option_is_refused_where_there_are_no_digit_pairs() -> None:
    argv = ["--mode=continual", "--benchmark=permuted_mnist", "--cl_task_order=shuffled"]
    with pytest.raises(UserError, match="read only with --benchmark=split_mnist"):
        build_config(config.parse_args(argv), config.explicit_options(argv))


def test_a_shuffled_protocol_records_each_seeds_pairs_in_its_own_ledger(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    write_mnist(data / "mnist")
    argv = ["--scenario=task", "--strategies=none,si", "--seeds=2", f"--data_dir={data}", f"--out={out}", "--",
            "--cl_task_order=shuffled", *TINY]
    assert protocol.main(argv) == 0
    ledger = out / "vandeven2019_task_shuffled.jsonl"  # the default name: never the fixed-order ledger
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [e["key"] for e in lines] == ["task/none/s0", "task/si/s0", "task/none/s1", "task/si/s1"]
    assert all(e["kwargs"]["task_order"] == "shuffled" for e in lines)
    for e in lines:  # each unit trained on its own seed's pairs: every strategy of a seed on the same ones
        assert e["record"]["tasks"] == [f"{a}/{b}" for a, b in pairs_by_hand(e["record"]["seed"])]
    assert lines[0]["record"]["tasks"] != lines[2]["record"]["tasks"]
    assert (out / "vandeven2019_task_shuffled.md").is_file() and not (out / "vandeven2019_task.md").exists()
    fixed_into_shuffled = [*argv[:argv.index("--")], f"--ledger={ledger}", "--", *TINY]
    assert protocol.main(fixed_into_shuffled) == 2  # other settings: refused, not mixed
    fixed = protocol.units("vandeven2019", "task", ["none"], 1, str(data), TINY)
    assert "task_order" not in fixed[0].kwargs  # the committed fixed-order ledgers' lines still match


def test_a_run_directory_records_the_order_and_resumes_only_into_it(tmp_path: Path) -> None:
    write_mnist(tmp_path / "data" / "mnist")
    argv = ["--mode=continual", f"--data_dir={tmp_path / 'data'}", f"--log_dir={tmp_path / 'logs'}", "--comment=s",
            "--strategies=none,mas", "--seeds=2", "--cl_task_order=shuffled", "--use_tensorboard=False", *TINY]
    assert main.main(argv) == 0
    results = json.loads((tmp_path / "logs" / "split_mnist_s" / "continual_results.json").read_text())
    assert results["config"]["task_order"] == "shuffled"
    assert results["tasks_by_seed"] == {str(s): [f"{a}/{b}" for a, b in pairs_by_hand(s)] for s in (12345, 12346)}
    assert results["tasks"] == ["task0", "task1", "task2", "task3", "task4"]  # positions: each seed has its own pairs
    old = stamp("continual", {"epoch": 1, "model": {}, "config": {"benchmark": "split_mnist", "protocol": "vandeven2019"},
                              "records": [], "runs": {}, "current": None})  # written before --cl_task_order
    wanted = {"benchmark": "split_mnist", "protocol": "vandeven2019", "eval_split": "test"}  # as run_continual builds it
    assert resumable_state(None, old, {**wanted, "task_order": "fixed"})["config"]["task_order"] == "fixed"
    with pytest.raises(UserError, match="task_order"):
        resumable_state(None, old, {**wanted, "task_order": "shuffled"})
