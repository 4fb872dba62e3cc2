"""Fault injection: interruptions at scripted points, signals, NaN, a full disk, bad checkpoints and data.

Interruptions are injected in-process by raising ``Kill`` (a BaseException nothing catches) at the
point; a real ``kill -9`` (no ``finally`` runs) is the slow subprocess test at the end.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

import main
from engine import runlog
import trainer as trainer_module
from conftest import ROOT, metrics_without_timing, write_corpus
from engine.runlog import RunDir
from utils import UserError

SMALL = ["--dataset=tiny", "--max_epoch=3", "--shared_max_step=2", "--num_batch_per_iter=2", "--controller_max_step=2",
         "--train_controller=True", "--save_epoch=1", "--shared_embed=8", "--shared_hid=8", "--batch_size=4",
         "--test_batch_size=2", "--num_blocks=3", "--derive_num_sample=2", "--num_gpu=0", "--forgetting_eval_batches=1",
         "--alpha_fisher=5", "--use_tensorboard=False", "--policy_batch_size=2"]


class Kill(BaseException):
    """Stands for the process dying at this point."""


def argv(data_dir: Path, log_dir: Path, comment: str, *extra: str) -> list[str]:
    return [*SMALL, f"--data_dir={data_dir}", f"--log_dir={log_dir}", f"--comment={comment}", *extra]


@pytest.fixture(scope="module")
def base(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    log_dir = tmp_path_factory.mktemp("faults")
    assert main.main(argv(data_dir, log_dir, "base")) == 0
    return log_dir / "tiny_base"


def temp_files(run: Path) -> list[Path]:
    return [p for p in run.rglob(".*.tmp")]


def kill_when(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, should_kill: Callable[..., bool],
              before: bool = True) -> None:
    """Replace ``owner.name`` so that it raises Kill (before or after doing its work) when ``should_kill(*args)``."""
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        hit = should_kill(*args, **kwargs)
        if hit and before:
            raise Kill(name)
        result = original(*args, **kwargs)
        if hit:
            raise Kill(name)
        return result

    monkeypatch.setattr(owner, name, wrapped)


def resume_and_compare(base: Path, data_dir: Path, comment: str) -> Path:
    assert main.main(argv(data_dir, base.parent, comment, "--resume=True")) == 0
    run = base.parent / f"tiny_{comment}"
    assert metrics_without_timing(run) == metrics_without_timing(base)
    assert temp_files(run) == []
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch_*.pt")) == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt"]
    return run


# ------------------------------------------------------------------------------- interruptions
@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_killed_after_the_metrics_line_resumes_identically(epoch: int, base: Path, data_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    comment = f"after_metrics_{epoch}"
    with monkeypatch.context() as m:
        kill_when(m, RunDir, "save_checkpoint", lambda self, state, e, *a: e == epoch)
        with pytest.raises(Kill):
            main.main(argv(data_dir, base.parent, comment))
    assert len(metrics_without_timing(base.parent / f"tiny_{comment}")) == epoch + 1  # the line is there, uncovered
    resume_and_compare(base, data_dir, comment)


@pytest.mark.parametrize("target", ["epoch_0001.pt", "latest.pt"])
def test_killed_during_a_checkpoint_write_resumes_identically(target: str, base: Path, data_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The process dies mid-write: a partial ``.<name>.tmp`` stays behind (no ``finally`` runs after kill -9)."""
    comment = f"mid_write_{target[:-3]}"

    def partial_write(path: Path, state: dict) -> None:
        if path.name == target and state["epoch"] == 2:
            (path.parent / f".{path.name}.abc123.tmp").write_bytes(b"PK\x03\x04 partial")
            raise Kill(target)
        original(path, state)

    original = runlog.save_state
    with monkeypatch.context() as m:
        m.setattr(runlog, "save_state", partial_write)
        with pytest.raises(Kill):
            main.main(argv(data_dir, base.parent, comment))
    assert temp_files(base.parent / f"tiny_{comment}")
    resume_and_compare(base, data_dir, comment)


def test_killed_during_a_resume_resumes_identically(base: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    comment = "mid_resume"
    with monkeypatch.context() as m:
        kill_when(m, RunDir, "save_checkpoint", lambda self, state, e, *a: e == 1)
        with pytest.raises(Kill):
            main.main(argv(data_dir, base.parent, comment))
    with monkeypatch.context() as m:  # the resume itself dies while it rewrites metrics.jsonl
        kill_when(m, RunDir, "truncate_metrics", lambda *a: True)
        with pytest.raises(Kill):
            main.main(argv(data_dir, base.parent, comment, "--resume=True"))
    resume_and_compare(base, data_dir, comment)


def test_torn_last_metrics_line_is_dropped_with_a_warning(base: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    comment = "torn"
    with monkeypatch.context() as m:
        kill_when(m, RunDir, "save_checkpoint", lambda self, state, e, *a: e == 1)
        with pytest.raises(Kill):
            main.main(argv(data_dir, base.parent, comment))
    with open(base.parent / f"tiny_{comment}" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "shared_lo')
    resume_and_compare(base, data_dir, comment)
    assert "dropping a torn last line" in capsys.readouterr().err


def test_unreadable_latest_falls_back_to_the_newest_numbered(base: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    comment = "bad_latest"
    with monkeypatch.context() as m:
        kill_when(m, RunDir, "save_checkpoint", lambda self, state, e, *a: e == 2)
        with pytest.raises(Kill):
            main.main(argv(data_dir, base.parent, comment))
    latest = base.parent / f"tiny_{comment}" / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated
    resume_and_compare(base, data_dir, comment)
    err = capsys.readouterr().err
    assert "falling back to" in err and "epoch_0001.pt (epoch 2)" in err


# ------------------------------------------------------------------------------------- signals
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("where", ["mid_epoch", "commit"])
def test_signal_stops_with_one_line_and_a_resume_command(sig: int, code: int, where: str, base: Path, data_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
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
        assert main.main(argv(data_dir, base.parent, comment)) == code
    lines = capsys.readouterr().err.strip().splitlines()
    name_ = signal.Signals(sig).name
    assert lines[-1].startswith(f"stopped by {name_}: ") and "Traceback" not in "\n".join(lines)
    saved_epochs = 1 if where == "mid_epoch" else 2  # a signal during the commit waits for the checkpoint
    assert f"holds epochs 0-{saved_epochs - 1}" in lines[-1]
    command = shlex.split(lines[-1].split("resume with: ", 1)[1])
    assert command[:2] == ["python", "main.py"] and "--resume=True" in command
    assert main.main(command[2:]) == 0
    assert metrics_without_timing(base.parent / f"tiny_{comment}") == metrics_without_timing(base)


def test_sigterm_with_save_on_signal_saves_at_the_next_step(base: Path, data_dir: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A real process gets SIGTERM in the middle of epoch 0: ``latest.pt`` is written after the step
    under way, the run exits 143 with one line, and the resume it names finishes the run."""
    comment = "save_on_signal"
    args = argv(data_dir, base.parent, comment, "--save_on_signal=True", "--max_epoch=1", "--shared_max_step=20",
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
    run = base.parent / f"tiny_{comment}"
    state = runlog.load_checkpoint(run / "checkpoints" / "latest.pt", torch.device("cpu"))
    assert state["mid_epoch"] and state["epoch"] == 0 and state["metrics_lines"] == 0
    assert 3 <= state["shared_step"] < 20 and f"(shared step {state['shared_step']})" in last
    assert not (run / "metrics.jsonl").exists() and temp_files(run) == []
    command = shlex.split(last.split("resume with: ", 1)[1])
    assert command[:2] == ["python", "main.py"] and "--resume=True" in command
    assert main.main(command[2:]) == 0
    assert "that epoch restarts from its beginning" in capsys.readouterr().err
    assert [r["epoch"] for r in metrics_without_timing(run)] == [0]


def test_sigint_with_save_on_signal_in_the_controller_phase(base: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from spaces.rnn import RNNSpace

    original, calls = RNNSpace.reward, []

    def signal_on_the_second(self: RNNSpace, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    command = argv(data_dir, base.parent, "save_in_controller", "--save_on_signal=True")
    with monkeypatch.context() as m:
        m.setattr(RNNSpace, "reward", signal_on_the_second)
        assert main.main(command) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "latest.pt holds epoch 0 up to its sampler phase (shared step 2); a resume from it restarts epoch 0" in last
    run = base.parent / "tiny_save_in_controller"
    state = runlog.load_checkpoint(run / "checkpoints" / "latest.pt", torch.device("cpu"))
    assert state["mid_epoch"] and state["sampler"]["controller_step"] == 1
    assert main.main([*command, "--resume=True"]) == 0
    assert [r["epoch"] for r in metrics_without_timing(run)] == [0, 1, 2]


# ---------------------------------------------------------------------------------- non-finite
def test_weights_turning_nan_are_never_saved(base: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    original = trainer_module.Trainer.shared_phase

    def poison(self: trainer_module.Trainer, epoch: int, *args: Any, **kwargs: Any) -> Any:
        record = original(self, epoch, *args, **kwargs)
        if epoch == 1:
            with torch.no_grad():
                next(self.space.model.parameters()).fill_(float("nan"))
        return record

    monkeypatch.setattr(trainer_module.Trainer, "shared_phase", poison)
    assert main.main(argv(data_dir, base.parent, "nan_weights")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: model ") and "not finite after epoch 1" in err[-1] and "latest.pt" in err[-1]
    state = runlog.load_checkpoint(base.parent / "tiny_nan_weights" / "checkpoints" / "latest.pt", torch.device("cpu"))
    assert state["epoch"] == 1
    assert all(bool(torch.isfinite(t).all()) for t in state["model"].values() if t.is_floating_point())


@pytest.mark.parametrize("what", ["reward", "penalty", "fisher"])
def test_nan_reward_penalty_or_fisher_is_skipped_and_counted(what: str, base: Path, data_dir: Path,
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
    code = main.main(argv(data_dir, base.parent, f"nan_{what}", "--max_epoch=6", "--controller_max_step=5"))
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"non-finite {'WPL ' if what == 'penalty' else ''}{'Fisher loss' if what == 'fisher' else what}" in err
    records = [json.loads(line) for line in (base.parent / f"tiny_nan_{what}" / "metrics.jsonl").read_text().splitlines()]
    if what == "fisher":  # the shared steps go on; only the Fisher updates are skipped (one per shared step)
        assert code == 0 and records[-1]["nonfinite_losses"] == 6 * 2
    else:  # each phase counts its own skips in a row: the other phase's healthy updates do not reset the count,
        # so 5 skipped controller steps per epoch stop the run in epoch 1, 4 skipped shared updates in epoch 2
        stopped, per_epoch = (1, 5) if what == "reward" else (2, 4)
        assert code == 2 and len(records) == stopped and records[-1]["nonfinite_losses"] == stopped * per_epoch
        assert "controller_reward" not in records[-1] or what == "penalty"
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: 10 non-finite ") and f"in a row at epoch {stopped}" in last and "latest.pt" in last


def test_exploding_learning_rate_stops_in_one_line_with_a_finite_checkpoint(base: Path, data_dir: Path,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """``--shared_lr=1e8``: cross-entropies of 1e13 overflowed ``math.exp`` in the reward (a traceback)."""
    from spaces.rnn import perplexity

    assert perplexity(1e6) == float("inf") and perplexity(0.0) == 1.0
    assert main.main(argv(data_dir, base.parent, "huge_lr", "--shared_lr=1e8")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "is not finite after epoch" in err.strip().splitlines()[-1]
    state = runlog.load_checkpoint(base.parent / "tiny_huge_lr" / "checkpoints" / "latest.pt", torch.device("cpu"))
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
def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(failure: Exception, base: Path, data_dir: Path,
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
    assert main.main(argv(data_dir, base.parent, comment)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: cannot write ") and "no epoch_0001.pt was written; resume from " in err
    assert err.endswith("latest.pt with --resume=True once there is space")
    run = base.parent / f"tiny_{comment}"
    assert runlog.load_checkpoint(run / "checkpoints" / "latest.pt", torch.device("cpu"))["epoch"] == 1
    assert temp_files(run) == []
    monkeypatch.setattr(runlog.torch, "save", original)
    resume_and_compare(base, data_dir, comment)


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


def test_full_disk_under_tensorboard_is_one_warning(base: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The event file fills up mid-run: one warning, no writer-thread traceback, the run goes on without it."""
    import builtins

    def open_(path: Any, *args: Any, **kwargs: Any) -> Any:
        return FillingFile(4000) if Path(path).name.startswith("events.") else builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(runlog, "open", open_, raising=False)
    assert main.main(argv(data_dir, base.parent, "full_tb", "--use_tensorboard=True")) == 0
    err = capsys.readouterr().err
    assert err.count("TensorBoard is off for the rest of this run: cannot write ") == 1 and "No space left" in err
    assert "Traceback" not in err and "Exception in thread" not in err
    assert metrics_without_timing(base.parent / "tiny_full_tb") == metrics_without_timing(base)


# ------------------------------------------------------------------------- bad checkpoints
def write_variant(base: Path, tmp_path: Path, kind: str) -> Path:
    good = base / "checkpoints" / "latest.pt"
    path = tmp_path / f"{kind}.pt"
    state = torch.load(good, weights_only=True)
    if kind == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "no_config":
        torch.save({k: v for k, v in state.items() if k != "config"}, path)
    elif kind == "config_not_dict":
        torch.save({**state, "config": [1, 2]}, path)
    elif kind == "missing_tensor":
        torch.save({**state, "model": dict(list(state["model"].items())[1:])}, path)
    elif kind == "wrong_shape":
        torch.save({**state, "model": {k: v[..., :1] if v.dim() else v for k, v in state["model"].items()}}, path)
    elif kind == "not_a_dict":
        torch.save([1, 2, 3], path)
    elif kind == "other_format":
        torch.save({"format": 7}, path)
    elif kind == "foreign_pickle":
        import pickle

        path.write_bytes(pickle.dumps(Kill("payload")))
    return path


BAD_CHECKPOINTS = ["garbage", "truncated", "empty", "no_config", "config_not_dict", "missing_tensor", "wrong_shape",
                   "not_a_dict", "other_format", "foreign_pickle"]


@pytest.mark.parametrize("mode", ["derive", "test"])
@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
def test_bad_checkpoint_is_one_line(kind: str, mode: str, base: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = write_variant(base, tmp_path, kind)
    extra = [f"--arch={base / 'best_arch.json'}"] if mode == "test" else []
    assert main.main([f"--mode={mode}", f"--load_path={path}", "--num_gpu=0", *extra]) == 2
    assert one_error_line(capsys.readouterr().err)


def one_error_line(err: str) -> bool:
    """Whether stderr holds exactly one line besides the timestamped log lines, an ``error:`` one, and no traceback."""
    lines = [line for line in err.splitlines() if not re.match(r"\d\d:\d\d:\d\d ", line)]
    return len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err


def test_foreign_run_checkpoint_is_refused(base: Path, data_dir: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    comment = "victim"
    with monkeypatch.context() as m:
        kill_when(m, RunDir, "save_checkpoint", lambda self, state, e, *a: e == 1)
        with pytest.raises(Kill):
            main.main(argv(data_dir, base.parent, comment))
    run = base.parent / f"tiny_{comment}"
    params_before = (run / "params.json").read_bytes()
    metrics_before = (run / "metrics.jsonl").read_bytes()
    (run / "checkpoints" / "latest.pt").write_bytes((base / "checkpoints" / "latest.pt").read_bytes())
    assert main.main(argv(data_dir, base.parent, comment, "--resume=True")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "belongs to run" in err and "--resume_with_new_params=True" in err
    assert (run / "params.json").read_bytes() == params_before and (run / "metrics.jsonl").read_bytes() == metrics_before


def test_other_shape_on_resume_is_refused(base: Path, data_dir: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    comment = "reshaped"
    with monkeypatch.context() as m:
        kill_when(m, RunDir, "save_checkpoint", lambda self, state, e, *a: e == 1)
        with pytest.raises(Kill):
            main.main(argv(data_dir, base.parent, comment))
    assert main.main(argv(data_dir, base.parent, comment, "--resume=True", "--shared_hid=12", "--shared_embed=12")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "another shape" in err and "--shared_embed=12 (checkpoint: 8)" in err
    assert main.main(argv(data_dir, base.parent, comment, "--resume=True", "--shared_hid=12", "--shared_embed=12",
                          "--resume_with_new_params=True")) == 2
    assert "does not fit this configuration" in capsys.readouterr().err


# ------------------------------------------------------------------------------ bad datasets
def corpus_with(tmp_path: Path, split: str, content: bytes) -> Path:
    write_corpus(tmp_path / "bad")
    (tmp_path / "bad" / f"{split}.txt").write_bytes(content)
    return tmp_path


BAD_TEXT = [
    ("train", "caf\xe9 au lait\n".encode("latin-1"), "train.txt is not UTF-8 text: byte 3 (0xe9)"),
    ("valid", b"ok words\n\xff\xfe binary", "valid.txt is not UTF-8 text: byte 9"),
    ("test", b"\x00\x01\x02\x03" * 10, "test.txt is not text: it holds a NUL byte"),
    ("train", b"", "train.txt holds no words"),
    ("valid", b"a b c\n", "valid.txt: 4 tokens are too few for batch size 4"),
    ("test", b"a\n", "test.txt: 2 tokens are too few for batch size 2"),
]


@pytest.mark.parametrize("split,content,message", BAD_TEXT)
def test_bad_text_corpus_is_one_line(split: str, content: bytes, message: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = corpus_with(tmp_path, split, content)
    code = main.main([*SMALL, "--dataset=bad", f"--data_dir={data}", f"--log_dir={tmp_path / 'logs'}"])
    err = capsys.readouterr().err
    assert code == 2 and one_error_line(err) and message in err, err


def write_folder(root: Path, per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        for name in ("a", "b"):
            (root / "shapes" / split / name).mkdir(parents=True)
            for k in range(per_class):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(root / "shapes" / split / name / f"{k}.png")
    return root


def test_image_that_fails_in_a_worker_is_one_line_naming_it(tmp_path: Path) -> None:
    from data.image import load_images
    from data.image_stream import Preprocess, iterate_split

    root = write_folder(tmp_path)
    broken = root / "shapes" / "test" / "b" / "1.png"
    data = load_images(root, "shapes", valid_size=2, seed=0)
    broken.write_bytes(b"\x89PNG broken")
    with pytest.raises(UserError) as err:
        list(iterate_split(data.test, 4, Preprocess(data, torch.device("cpu")), num_workers=1, seed=0))
    assert "\n" not in str(err.value) and str(broken) in str(err.value) and "cannot decode image" in str(err.value)


def test_empty_class_folder_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from data.image import load_images

    root = write_folder(tmp_path)
    (root / "shapes" / "train" / "zzz_empty").mkdir()
    (root / "shapes" / "test" / "zzz_empty").mkdir()
    data = load_images(root, "shapes", valid_size=2, seed=0)
    assert data.classes == ["a", "b"] and "zzz_empty" in caplog.text


# --------------------------------------------------------------------------------- environment
def test_graphviz_pure_beside_the_interpreter_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import utils

    tool = tmp_path / "bin" / "graphviz-pure"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    assert utils.dot_program() == str(tool)


def test_resume_on_another_thread_count_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    cpu, threads = torch.device("cpu"), torch.get_num_threads()
    runlog.warn_on_thread_change({"cpu_threads": threads}, cpu)
    runlog.warn_on_thread_change({}, cpu)  # a checkpoint written before the count was recorded
    assert caplog.text == ""
    runlog.warn_on_thread_change({"cpu_threads": threads + 1}, cpu)
    assert f"checkpointed on {threads + 1}" in caplog.text and f"OMP_NUM_THREADS={threads + 1}" in caplog.text


# ------------------------------------------------------------------------------- real kill -9
KILL_AFTER_METRICS = """
import os, sys
import main
from engine import runlog
original = runlog.RunDir.save_checkpoint
def save(self, state, epoch, *a):
    if epoch == {epoch} and {where!r} == "after_metrics":
        os._exit(137)
    if epoch == {epoch} and {where!r} == "mid_write":
        real = runlog.torch.save
        def half(s, f):
            f.write(b"PK partial"); f.flush(); os._exit(137)
        runlog.torch.save = half
    return original(self, state, epoch, *a)
runlog.RunDir.save_checkpoint = save
sys.exit(main.main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["after_metrics", "mid_write"])
@pytest.mark.parametrize("epoch", [0, 1])
def test_real_kill_9_resumes_identically(where: str, epoch: int, base: Path, data_dir: Path) -> None:
    """The killed process runs on this one's thread count, as ``base`` did: CPU kernels sum in another
    order on another count, so 1 and 2 threads differ in the late digits from epoch 0 on."""
    comment = f"kill9_{where}_{epoch}"
    script = KILL_AFTER_METRICS.format(epoch=epoch, where=where)
    done = subprocess.run([sys.executable, "-c", script, *argv(data_dir, base.parent, comment)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    assert done.returncode == 137, done.stderr[-2000:]
    resume_and_compare(base, data_dir, comment)
