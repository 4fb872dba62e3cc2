"""--cl_eval_split=valid: strengths are tuned on a held-out part of each task's training data, never on the test set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import config
import main
from data.tasks import Task, TaskSequence, build_sequence, holdout
from engine import stamp
from experiments.continual import protocol
from experiments.continual.main import resumable_state
from experiments.continual.report import run_metrics
from experiments.continual.run import run_experiment
from family_harness import write_mnist
from modes.continual import build_config
from test_continual import conflicting_tasks, tiny
from utils import UserError

TINY = ["--cl_iters=3", "--cl_eval_every=3", "--cl_hidden=8", "--importance_samples=16"]


def rows(x: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r.tolist()) for r in x}


def test_the_split_is_a_partition_of_each_tasks_training_data_with_the_asked_fraction() -> None:
    seq = conflicting_tasks(400)  # inputs drawn from a normal: every row is distinct
    held = holdout(seq, 0.25)
    for before, after in zip(seq.tasks, held.tasks):
        n = len(before.x_train)
        assert len(after.x_test) == round(0.25 * n) and len(after.x_train) == n - round(0.25 * n)
        train, valid, every = rows(after.x_train), rows(after.x_test), rows(before.x_train)
        assert not train & valid and train | valid == every  # disjoint, and together the whole training set
        assert not valid & rows(before.x_test)  # nothing of the test split
        for x, y in ((after.x_train, after.y_train), (after.x_test, after.y_test)):  # labels travel with their inputs
            index = [next(i for i in range(n) if torch.equal(before.x_train[i], r)) for r in x[:20]]
            assert y[:20].tolist() == before.y_train[index].tolist()
    assert held.head_sizes == seq.head_sizes and [t.head for t in held.tasks] == [t.head for t in seq.tasks]
    with pytest.raises(ValueError, match="fraction"):
        holdout(seq, 1.0)


def test_every_seed_holds_out_the_same_images(tmp_path: Path) -> None:
    write_mnist(tmp_path / "mnist")
    first, second = (build_sequence("split_mnist", "task", tmp_path, seed=s, eval_split="valid") for s in (0, 12345))
    for a, b in zip(first.tasks, second.tasks):
        assert torch.equal(a.x_test, b.x_test) and torch.equal(a.x_train, b.x_train)
    test = build_sequence("split_mnist", "task", tmp_path, seed=0)  # the default: today's sequence, test split
    for a, t in zip(first.tasks, test.tasks):  # the held-out images come from the training split it would have used
        assert len(a.x_train) + len(a.x_test) == len(t.x_train) and rows(a.x_test) <= rows(t.x_train)


def test_with_valid_the_test_tensors_are_never_read() -> None:
    seq = conflicting_tasks()
    poisoned = TaskSequence(seq.name, seq.scenario, [Task(t.name, t.x_train, t.y_train, torch.full_like(t.x_test, float("nan")),
                                                          t.y_test, t.head) for t in seq.tasks], seq.input_shape, seq.head_sizes)
    cfg = tiny(["none", "ewc"], iters=10, eval_every=5)
    runs = run_experiment(lambda _: holdout(poisoned, 0.1), cfg, None, lambda s: None, lambda r: None)["runs"]
    for run in runs.values():
        metrics = run_metrics(run["R"], run["curve"])
        assert all(torch.isfinite(torch.tensor(c["loss"])).all() for c in run["curve"])
        assert torch.isfinite(torch.tensor([metrics["average_accuracy"], metrics["integrated_loss"]])).all()
    on_test = run_experiment(lambda _: poisoned, tiny(["none"], iters=10, eval_every=5), None, lambda s: None,
                             lambda r: None)["runs"]["none/0"]
    assert all(math.isnan(v) for v in on_test["curve"][-1]["loss"])  # the poison is real: the test split gives NaN


def test_the_fraction_is_refused_without_the_split_and_outside_its_domain() -> None:
    argv = ["--mode=continual", "--cl_valid_fraction=0.2"]
    with pytest.raises(UserError, match="read only with --cl_eval_split=valid"):
        build_config(config.parse_args(argv), config.explicit_options(argv))
    with pytest.raises(SystemExit):
        config.parse_args(["--mode=continual", "--cl_eval_split=valid", "--cl_valid_fraction=1"])


def test_a_valid_protocol_writes_its_own_ledger(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    write_mnist(data / "mnist")
    argv = ["--scenario=task", "--strategies=none,si", "--seeds=1", f"--data_dir={data}", f"--out={out}", "--",
            "--cl_eval_split=valid", "--cl_valid_fraction=0.2", *TINY]
    assert protocol.main(argv) == 0
    ledger = out / "vandeven2019_task_valid.jsonl"  # never the committed test ledger
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [e["key"] for e in lines] == ["task/none/s0", "task/si/s0"]
    assert all(e["kwargs"]["eval_split"] == "valid" and e["kwargs"]["valid_fraction"] == 0.2 for e in lines)
    assert (out / "vandeven2019_task_valid.md").is_file() and not (out / "vandeven2019_task.md").exists()
    assert "held-out 0.2 of each task's training data" in (out / "vandeven2019_task_valid.md").read_text()
    assert protocol.main([*argv[:argv.index("--")], f"--ledger={ledger}", "--", *TINY]) == 2  # test into valid: refused
    test = protocol.units("vandeven2019", "task", ["none"], 1, str(data), TINY)
    assert "eval_split" not in test[0].kwargs  # the committed test ledgers' lines still match


def test_a_run_directory_records_the_split_and_resumes_only_into_it(tmp_path: Path) -> None:
    write_mnist(tmp_path / "data" / "mnist")
    argv = ["--mode=continual", f"--data_dir={tmp_path / 'data'}", f"--log_dir={tmp_path / 'logs'}", "--comment=v",
            "--strategies=none", "--seeds=1", "--cl_eval_split=valid", "--use_tensorboard=False", *TINY]
    assert main.main(argv) == 0
    results = json.loads((tmp_path / "logs" / "split_mnist_v" / "continual_results.json").read_text())
    assert results["config"]["eval_split"] == "valid" and results["config"]["valid_fraction"] == 0.1
    old = stamp("continual", {"epoch": 1, "model": {}, "config": {"benchmark": "split_mnist", "protocol": "vandeven2019"},
                              "records": [], "runs": {}, "current": None})  # written before --cl_eval_split
    wanted = {"benchmark": "split_mnist", "protocol": "vandeven2019", "task_order": "fixed"}
    assert resumable_state(None, old, {**wanted, "eval_split": "test"})["config"]["eval_split"] == "test"
    with pytest.raises(UserError, match="eval_split"):
        resumable_state(None, old, {**wanted, "eval_split": "valid", "valid_fraction": 0.1})
