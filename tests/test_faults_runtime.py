"""Fault injection while a search runs: SIGTERM and SIGINT stop it with one line and a resume command
(``--save_on_signal`` saves at the next step), non-finite weights, rewards, penalties and Fisher are never saved,
and a full disk is one line that keeps the previous checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import main
from engine import runlog
import trainer as trainer_module
from conftest import ROOT, metrics_without_timing
from engine.runlog import RunDir
from fault_harness import argv, resume_and_compare, temp_files
from utils import UserError


# ------------------------------------------------------------------------------------- signals
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("where", ["mid_epoch", "commit"])
def test_signal_stops_with_one_line_and_a_resume_command(sig: int, code: int, where: str, fault_base: Path,
                                                         data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    comment = f"sig{sig}_{where}"
    owner, name = (trainer_module.Trainer, "shared_phase") if where == "mid_epoch" else (RunDir, "save_checkpoint")
    original = getattr(owner, name)
    calls = []

    def send(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), sig)
        return original(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(owner, name, send)
        assert main.main(argv(data_dir, fault_base.parent, comment)) == code
    lines = capsys.readouterr().err.strip().splitlines()
    name_ = signal.Signals(sig).name
    assert lines[-1].startswith(f"stopped by {name_}: ") and "Traceback" not in "\n".join(lines)
    saved_epochs = 1 if where == "mid_epoch" else 2  # a signal during the commit waits for the checkpoint
    assert f"holds epochs 0-{saved_epochs - 1}" in lines[-1]
    command = shlex.split(lines[-1].split("resume with: ", 1)[1])
    assert command[:2] == ["python", "main.py"] and "--resume=True" in command
    assert main.main(command[2:]) == 0
    assert metrics_without_timing(fault_base.parent / f"tiny_{comment}") == metrics_without_timing(fault_base)


def test_sigterm_with_save_on_signal_saves_at_the_next_step(fault_base: Path, data_dir: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A real process gets SIGTERM in the middle of epoch 0: ``latest.pt`` is written after the step
    under way, the run exits 143 with one line, and the resume it names finishes the run."""
    comment = "save_on_signal"
    args = argv(data_dir, fault_base.parent, comment, "--save_on_signal=True", "--max_epoch=1", "--shared_max_step=20",
                "--log_step=1")
    child = subprocess.Popen([sys.executable, "main.py", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert child.stderr is not None
    for line in child.stderr:
        if "| epoch   0 | shared step      3 |" in line:
            break
    child.send_signal(signal.SIGTERM)
    err = child.stderr.read()
    assert child.wait(timeout=120) == 143 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM: ") and "holds epoch 0 up to its shared phase (shared step " in last
    run = fault_base.parent / f"tiny_{comment}"
    state = runlog.load_checkpoint(run / "checkpoints" / "latest.pt", torch.device("cpu"))
    assert state["mid_epoch"] and state["epoch"] == 0 and state["metrics_lines"] == 0
    assert 3 <= state["shared_step"] < 20 and f"(shared step {state['shared_step']})" in last
    assert not (run / "metrics.jsonl").exists() and temp_files(run) == []
    command = shlex.split(last.split("resume with: ", 1)[1])
    assert command[:2] == ["python", "main.py"] and "--resume=True" in command
    assert main.main(command[2:]) == 0
    assert "that epoch restarts from its beginning" in capsys.readouterr().err
    assert [r["epoch"] for r in metrics_without_timing(run)] == [0]


def test_sigint_with_save_on_signal_in_the_controller_phase(fault_base: Path, data_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from spaces.rnn import RNNSpace

    original, calls = RNNSpace.reward, []

    def signal_on_the_second(self: RNNSpace, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    command = argv(data_dir, fault_base.parent, "save_in_controller", "--save_on_signal=True")
    with monkeypatch.context() as m:
        m.setattr(RNNSpace, "reward", signal_on_the_second)
        assert main.main(command) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "latest.pt holds epoch 0 up to its sampler phase (shared step 2); a resume from it restarts epoch 0" in last
    run = fault_base.parent / "tiny_save_in_controller"
    state = runlog.load_checkpoint(run / "checkpoints" / "latest.pt", torch.device("cpu"))
    assert state["mid_epoch"] and state["sampler"]["controller_step"] == 1
    assert main.main([*command, "--resume=True"]) == 0
    assert [r["epoch"] for r in metrics_without_timing(run)] == [0, 1, 2]


# ---------------------------------------------------------------------------------- non-finite
def test_weights_turning_nan_are_never_saved(fault_base: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    original = trainer_module.Trainer.shared_phase

    def poison(self: trainer_module.Trainer, epoch: int, *args: Any, **kwargs: Any) -> Any:
        record = original(self, epoch, *args, **kwargs)
        if epoch == 1:
            with torch.no_grad():
                next(self.space.model.parameters()).fill_(float("nan"))
        return record

    monkeypatch.setattr(trainer_module.Trainer, "shared_phase", poison)
    assert main.main(argv(data_dir, fault_base.parent, "nan_weights")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: model ") and "not finite after epoch 1" in err[-1] and "latest.pt" in err[-1]
    state = runlog.load_checkpoint(fault_base.parent / "tiny_nan_weights" / "checkpoints" / "latest.pt",
                                   torch.device("cpu"))
    assert state["epoch"] == 1
    assert all(bool(torch.isfinite(t).all()) for t in state["model"].values() if t.is_floating_point())


@pytest.mark.parametrize("what", ["reward", "penalty", "fisher"])
def test_nan_reward_penalty_or_fisher_is_skipped_and_counted(what: str, fault_base: Path, data_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from spaces.rnn import RNNSpace
    from spaces.base import Loss
    from regularizers.wpl import WPL

    nan = torch.tensor(float("nan"))
    if what == "reward":
        monkeypatch.setattr(RNNSpace, "reward", lambda self, *a, **k: (float("nan"), float("nan")))
    elif what == "penalty":
        monkeypatch.setattr(WPL, "add_penalty_grad_", lambda self, *a, **k: nan)
    else:
        monkeypatch.setattr(RNNSpace, "fisher_loss", lambda self, arch: Loss(nan, nan, None))
    code = main.main(argv(data_dir, fault_base.parent, f"nan_{what}", "--max_epoch=6", "--controller_max_step=5"))
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"non-finite {'WPL ' if what == 'penalty' else ''}{'Fisher loss' if what == 'fisher' else what}" in err
    metrics = fault_base.parent / f"tiny_nan_{what}" / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    if what == "fisher":  # the shared steps go on; only the Fisher updates are skipped (one per shared step)
        assert code == 0 and records[-1]["nonfinite_losses"] == 6 * 2
    else:  # each phase counts its own skips in a row: the other phase's healthy updates do not reset the count,
        # so 5 skipped controller steps per epoch stop the run in epoch 1, 4 skipped shared updates in epoch 2
        stopped, per_epoch = (1, 5) if what == "reward" else (2, 4)
        assert code == 2 and len(records) == stopped and records[-1]["nonfinite_losses"] == stopped * per_epoch
        assert "controller_reward" not in records[-1] or what == "penalty"
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: 10 non-finite ") and f"in a row at epoch {stopped}" in last and "latest.pt" in last


def test_exploding_learning_rate_stops_in_one_line_with_a_finite_checkpoint(
        fault_base: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--shared_lr=1e8``: cross-entropies of 1e13 overflowed ``math.exp`` in the reward (a traceback)."""
    from spaces.rnn import perplexity

    assert perplexity(1e6) == float("inf") and perplexity(0.0) == 1.0
    assert main.main(argv(data_dir, fault_base.parent, "huge_lr", "--shared_lr=1e8")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "is not finite after epoch" in err.strip().splitlines()[-1]
    state = runlog.load_checkpoint(fault_base.parent / "tiny_huge_lr" / "checkpoints" / "latest.pt",
                                   torch.device("cpu"))
    assert all(bool(torch.isfinite(t).all()) for t in state["model"].values() if t.is_floating_point())


def test_metrics_stay_strict_json(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.append_metrics({"epoch": 0, "shared_ce": float("nan"), "valid_ppl": float("inf"), "alpha": 1.0})
    text = run.metrics_path.read_text()
    record = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert record == {"epoch": 0, "shared_ce": None, "valid_ppl": None, "alpha": 1.0, "nonfinite": ["shared_ce", "valid_ppl"]}


# ---------------------------------------------------------------------------------- disk full
@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")])
def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(failure: Exception, fault_base: Path, data_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    comment = f"full_{type(failure).__name__}"
    original = torch.save

    def save(state: Any, f: Any) -> None:
        if isinstance(state, dict) and state.get("epoch") == 2:
            f.write(b"partial")
            raise failure
        original(state, f)

    monkeypatch.setattr(runlog.torch, "save", save)
    assert main.main(argv(data_dir, fault_base.parent, comment)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: cannot write ") and "no epoch_0001.pt was written; resume from " in err
    assert err.endswith("latest.pt with --resume=True once there is space")
    run = fault_base.parent / f"tiny_{comment}"
    assert runlog.load_checkpoint(run / "checkpoints" / "latest.pt", torch.device("cpu"))["epoch"] == 1
    assert temp_files(run) == []
    monkeypatch.setattr(runlog.torch, "save", original)
    resume_and_compare(fault_base, data_dir, comment)


def test_full_disk_on_the_metrics_append(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runlog, "open", full, raising=False)
    with pytest.raises(UserError, match="cannot append to .*metrics.jsonl .No space left on device.; the last checkpoint"):
        RunDir(tmp_path).append_metrics({"epoch": 0})


class FillingFile:
    """A file on a disk with ``room`` bytes left: a write beyond them fails with ENOSPC."""

    def __init__(self, room: int) -> None:
        self.room = room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_full_disk_under_tensorboard_is_one_warning(fault_base: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The event file fills up mid-run: one warning, no writer-thread traceback, the run goes on without it."""
    import builtins

    def open_(path: Any, *args: Any, **kwargs: Any) -> Any:
        return FillingFile(4000) if Path(path).name.startswith("events.") else builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(runlog, "open", open_, raising=False)
    assert main.main(argv(data_dir, fault_base.parent, "full_tb", "--use_tensorboard=True")) == 0
    err = capsys.readouterr().err
    assert err.count("TensorBoard is off for the rest of this run: cannot write ") == 1 and "No space left" in err
    assert "Traceback" not in err and "Exception in thread" not in err
    assert metrics_without_timing(fault_base.parent / "tiny_full_tb") == metrics_without_timing(fault_base)
