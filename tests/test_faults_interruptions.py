"""Fault injection, interruptions: a search killed after an epoch's metrics line, mid checkpoint write or mid resume,
or left with a torn metrics line or an unreadable ``latest.pt``, resumes to exactly the uninterrupted run's metrics.

Kills are raised in-process (:class:`fault_harness.Kill`); a real ``kill -9`` (no ``finally`` runs) is the slow
subprocess test at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main
from engine import runlog
from conftest import ROOT, metrics_without_timing
from engine.runlog import RunDir
from fault_harness import Kill, argv, kill_when, killed_at_checkpoint, resume_and_compare, temp_files


# ------------------------------------------------------------------------------- interruptions
@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_killed_after_the_metrics_line_resumes_identically(epoch: int, fault_base: Path, data_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    comment = f"after_metrics_{epoch}"
    run = killed_at_checkpoint(monkeypatch, fault_base, data_dir, comment, epoch)
    assert len(metrics_without_timing(run)) == epoch + 1  # the line is there, uncovered
    resume_and_compare(fault_base, data_dir, comment)


@pytest.mark.parametrize("target", ["epoch_0001.pt", "latest.pt"])
def test_killed_during_a_checkpoint_write_resumes_identically(target: str, fault_base: Path, data_dir: Path,
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
            main.main(argv(data_dir, fault_base.parent, comment))
    assert temp_files(fault_base.parent / f"tiny_{comment}")
    resume_and_compare(fault_base, data_dir, comment)


def test_killed_during_a_resume_resumes_identically(fault_base: Path, data_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    comment = "mid_resume"
    killed_at_checkpoint(monkeypatch, fault_base, data_dir, comment, 1)
    with monkeypatch.context() as m:  # the resume itself dies while it rewrites metrics.jsonl
        kill_when(m, RunDir, "truncate_metrics", lambda *a: True)
        with pytest.raises(Kill):
            main.main(argv(data_dir, fault_base.parent, comment, "--resume=True"))
    resume_and_compare(fault_base, data_dir, comment)


def test_torn_last_metrics_line_is_dropped_with_a_warning(fault_base: Path, data_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    comment = "torn"
    killed_at_checkpoint(monkeypatch, fault_base, data_dir, comment, 1)
    with open(fault_base.parent / f"tiny_{comment}" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "shared_lo')
    resume_and_compare(fault_base, data_dir, comment)
    assert "dropping a torn last line" in capsys.readouterr().err


def test_unreadable_latest_falls_back_to_the_newest_numbered(fault_base: Path, data_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    comment = "bad_latest"
    killed_at_checkpoint(monkeypatch, fault_base, data_dir, comment, 2)
    latest = fault_base.parent / f"tiny_{comment}" / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated
    resume_and_compare(fault_base, data_dir, comment)
    err = capsys.readouterr().err
    assert "falling back to" in err and "epoch_0001.pt (epoch 2)" in err


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
def test_real_kill_9_resumes_identically(where: str, epoch: int, fault_base: Path, data_dir: Path) -> None:
    """The killed process runs on this one's thread count, as ``fault_base`` did: CPU kernels sum in another
    order on another count, so 1 and 2 threads differ in the late digits from epoch 0 on."""
    comment = f"kill9_{where}_{epoch}"
    script = KILL_AFTER_METRICS.format(epoch=epoch, where=where)
    done = subprocess.run([sys.executable, "-c", script, *argv(data_dir, fault_base.parent, comment)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    assert done.returncode == 137, done.stderr[-2000:]
    resume_and_compare(fault_base, data_dir, comment)
