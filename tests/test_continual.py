"""Task sequences: scenario heads, paired seeds, hook order, resume, forgetting vs a strong regulariser, outputs."""

from __future__ import annotations

import gzip
import io
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import main
from analysis.stats import mean_ci, paired_difference
from data.tasks import TaskSequence, split
from experiments.continual.run import ContinualConfig, run_experiment, train_task
from experiments.continual.report import run_metrics, task_forgetting
from regularizers import Regularizer


def conflicting_tasks(n: int = 400) -> TaskSequence:
    """Two tasks on one shared 2-way head: label = x0 > 0 for the first, x1 > 0 for the second."""
    g = torch.Generator().manual_seed(0)
    xs, ys = [], []
    for t in range(2):
        x = torch.randn(2 * n, 2, generator=g)
        xs.append(torch.cat([x, torch.full((2 * n, 1), 1.0 - 2 * t)], 1))
        ys.append((x[:, t] > 0).long() + 2 * t)  # classes 0/1 and 2/3
    x, y = torch.cat([v[:n] for v in xs]), torch.cat([v[:n] for v in ys])
    xt, yt = torch.cat([v[n:] for v in xs]), torch.cat([v[n:] for v in ys])
    return split(x, y, xt, yt, [[0, 1], [2, 3]], "domain", (3,), "toy")


def tiny(strategies: list[str], **kw: object) -> ContinualConfig:
    base = dict(seeds=1, iters=80, batch_size=32, lr=2e-2, hidden=[16], eval_every=40, importance_samples=200,
                strengths={"ewc": 1e4, "mas": 1e3, "l2": 0.0, "si": 1.0, "wpl": 1e3}, options={})
    base.update(kw)
    return ContinualConfig(strategies, **base)  # type: ignore[arg-type]


def test_scenarios_choose_heads_and_labels() -> None:
    y = torch.tensor([0, 1, 2, 3, 3])
    x = torch.arange(5.0).unsqueeze(1)
    task = split(x, y, x, y, [[0, 1], [2, 3]], "task", (1,), "s")
    assert task.head_sizes == [2, 2] and [t.head for t in task.tasks] == [0, 1]
    assert task.tasks[1].y_train.tolist() == [0, 1, 1]
    domain = split(x, y, x, y, [[0, 1], [2, 3]], "domain", (1,), "s")
    assert domain.head_sizes == [2] and [t.head for t in domain.tasks] == [0, 0]
    assert domain.tasks[1].y_train.tolist() == [0, 1, 1]
    klass = split(x, y, x, y, [[0, 1], [2, 3]], "class", (1,), "s")
    assert klass.head_sizes == [4] and klass.tasks[1].y_train.tolist() == [2, 3, 3]


def test_fine_tuning_forgets_and_a_strong_regulariser_does_not() -> None:
    runs = run_experiment(lambda _: conflicting_tasks(), tiny(["none", "ewc", "mas"]), None, lambda s: None, lambda r: None)["runs"]
    none, ewc, mas = (runs[f"{s}/0"]["R"] for s in ("none", "ewc", "mas"))
    assert none[0][0] > 0.9 and none[1][1] > 0.9
    assert none[1][0] < none[0][0] - 0.25  # the first task is overwritten
    for R in (ewc, mas):
        assert R[1][0] > R[0][0] - 0.1  # protected


def test_runs_of_one_seed_share_initial_weights_and_batches() -> None:
    seq = conflicting_tasks()
    runs = run_experiment(lambda _: seq, tiny(["none", "l2"], iters=10, seeds=2), None, lambda s: None, lambda r: None)["runs"]
    # L2 at strength 0 changes nothing: identical trajectories if init and batches are shared
    assert runs["none/0"]["R"] == runs["l2/0"]["R"] and runs["none/0"]["curve"] == runs["l2/0"]["curve"]
    assert runs["none/0"]["curve"] != runs["none/1"]["curve"]


def test_resume_between_tasks_equals_an_uninterrupted_run() -> None:
    seq, cfg = conflicting_tasks(), tiny(["none", "ewc", "si", "wpl"], iters=10, eval_every=5)
    whole = run_experiment(lambda _: seq, cfg, None, lambda s: None, lambda r: None)["runs"]
    saved: list[bytes] = []

    class Stop(Exception):
        pass

    def save(state: dict) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        saved.append(buffer.getvalue())

    def stop_after(count: int):  # type: ignore[no-untyped-def]
        seen = []

        def on_task(record: dict) -> None:
            seen.append(record)
            if len(seen) == count:
                raise Stop

        return on_task

    with pytest.raises(Stop):
        run_experiment(lambda _: seq, cfg, None, save, stop_after(5))  # ewc stopped after its first task
    state = torch.load(io.BytesIO(saved[-1]), weights_only=True)
    resumed = run_experiment(lambda _: seq, cfg, state, lambda s: None, lambda r: None)["runs"]
    for key in whole:
        assert resumed[key]["R"] == whole[key]["R"], key
        assert resumed[key]["curve"] == whole[key]["curve"], key


class Recorder(Regularizer):
    def __init__(self, model: nn.Module) -> None:
        super().__init__({"all": list(model.parameters())}, 0.0)
        self.calls: list[str] = []

    def after_backward(self, names):  # type: ignore[no-untyped-def]
        self.calls.append("after_backward")

    def add_penalty_grad_(self, names) -> Tensor:  # type: ignore[no-untyped-def]
        self.calls.append("add_penalty_grad_")
        return torch.zeros(())

    def after_step(self, names):  # type: ignore[no-untyped-def]
        self.calls.append("after_step")

    def end_task(self, task):  # type: ignore[no-untyped-def]
        self.calls.append("end_task")
        assert task.kwargs == {"head": 0} and len(task.batches) > 0


def test_the_loop_calls_the_hooks_in_the_documented_order() -> None:
    from experiments.continual.run import build_model

    class Bar:
        def update(self, n: int) -> None: ...
        def set_postfix(self, **kw: object) -> None: ...

    seq, cfg = conflicting_tasks(), tiny(["none"], iters=3, eval_every=10)
    model = build_model(seq, cfg, 0)
    reg = Recorder(model)
    train_task(model, torch.optim.SGD(model.parameters(), lr=0.1), reg, "none", seq, 0, cfg, 0, [], 0, Bar())
    assert reg.calls == ["after_backward", "add_penalty_grad_", "after_step"] * 3 + ["end_task"]


def test_metrics_by_hand() -> None:
    R = [[0.9, 0.1, 0.0], [0.7, 0.95, 0.2], [0.5, 0.8, 0.99]]
    assert task_forgetting(R) == pytest.approx([0.4, 0.15])
    curve = [{"task": 0, "loss": [1.0, 5.0, 5.0]}, {"task": 1, "loss": [2.0, 1.0, 5.0]}, {"task": 2, "loss": [3.0, 2.0, 0.5]}]
    m = run_metrics(R, curve)
    assert m["average_accuracy"] == pytest.approx((0.5 + 0.8 + 0.99) / 3)
    assert m["backward_transfer"] == pytest.approx(((0.5 - 0.9) + (0.8 - 0.95)) / 2)
    assert m["task_integrated_loss"] == pytest.approx([2.0, 1.5, 0.5])


def test_t_interval_and_paired_difference_by_hand() -> None:
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and ci["hi"] - 2.0 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    d = paired_difference([3.0, 5.0], [1.0, 2.0])
    assert d["mean"] == 2.5 and d["hi"] - 2.5 == pytest.approx(12.7062 * math.sqrt(0.5) / math.sqrt(2), rel=1e-4)


def write_idx(folder: Path, n: int, name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.uint8) % 10
    images = (rng.random((n, 28, 28)) * 40).astype(np.uint8)
    images[np.arange(n), labels * 2, :] = 255  # a row per digit: learnable
    with gzip.open(folder / f"{name}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x0803, n, 28, 28) + images.tobytes())
    with gzip.open(folder / f"{name}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x0801, n) + labels.tobytes())


@pytest.mark.slow  # ~5-10 s: two CLI runs, a figure and TensorBoard files
def test_cli_writes_the_run_directory_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mnist = tmp_path / "data" / "mnist"
    mnist.mkdir(parents=True)
    write_idx(mnist, 300, "train", 0)
    write_idx(mnist, 100, "t10k", 1)
    argv = ["--mode=continual", f"--data_dir={tmp_path / 'data'}", f"--log_dir={tmp_path / 'logs'}", "--comment=t",
            "--benchmark=split_mnist", "--scenario=class", "--strategies=none,ewc,wpl", "--seeds=2", "--cl_iters=4",
            "--cl_eval_every=2", "--cl_hidden=8", "--importance_samples=20"]
    assert main.main(argv) == 0
    out = capsys.readouterr().out
    assert "| ewc |" in out and "Forgetting (%)" in out
    run = tmp_path / "logs" / "split_mnist_t"
    results = json.loads((run / "continual_results.json").read_text())
    assert len(results["runs"]["ewc/12345"]["R"]) == 5 and len(results["runs"]["ewc/12345"]["R"][0]) == 5
    assert set(results["summary"]) == {"none", "ewc", "wpl"}
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 2 * 5 and json.loads(lines[0])["task"] == 0
    assert (run / "continual.png").stat().st_size > 0 and (run / "checkpoints" / "latest.pt").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    assert main.main(argv) == 2  # the run exists: no overwrite without --resume
    assert main.main(argv + ["--resume=True"]) == 0
    again = json.loads((run / "continual_results.json").read_text())
    assert again["runs"] == results["runs"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 30
