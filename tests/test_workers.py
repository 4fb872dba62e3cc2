"""The protocols' scheduler (experiments/workers.py): parallel equals serial, kill -9 then resume equals uninterrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.workers import DEVICE_ENV, Unit, read_ledger, run_units, unit_device, unit_devices
from utils import UserError

ROOT = Path(__file__).resolve().parent.parent


def seeded_draw(seed: int, pause: float = 0.0) -> dict[str, float]:
    """A unit target: a seeded torch computation (and an optional pause, to be killed in)."""
    import torch

    time.sleep(pause)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 64, generator=g)
    return {"value": float((x @ x.T).sum()), "threads": torch.get_num_threads()}


def device_name(seed: int) -> dict[str, object]:
    """A unit target: the device its worker was given."""
    return {"seed": seed, "device": str(unit_device())}


def units(n: int, pause: float = 0.0) -> list[Unit]:
    return [Unit(f"u{i}", "tests.test_workers:seeded_draw", {"seed": i, "pause": pause}) for i in range(n)]


def records(ledger: Path) -> dict[str, dict]:
    return {k: v["record"] for k, v in read_ledger(ledger).items()}


def test_parallel_workers_equal_a_serial_run_and_run_single_threaded(tmp_path: Path) -> None:
    serial = run_units(units(4), tmp_path / "serial.jsonl", workers=1)
    parallel = run_units(units(4), tmp_path / "parallel.jsonl", workers=2)
    assert {k: v["record"] for k, v in serial.items()} == {k: v["record"] for k, v in parallel.items()}
    assert all(v["record"]["threads"] == 1 for v in parallel.values())
    assert len({v["pid"] for v in parallel.values()}) >= 1 and os.getpid() not in {v["pid"] for v in parallel.values()}
    assert [json.loads(line)["key"] for line in (tmp_path / "serial.jsonl").read_text().splitlines()] == ["u0", "u1", "u2", "u3"]


def test_a_rerun_skips_finished_units_and_refuses_changed_ones(tmp_path: Path) -> None:
    ledger = tmp_path / "l.jsonl"
    run_units(units(2), ledger)
    before = ledger.read_text()
    run_units(units(2), ledger)
    assert ledger.read_text() == before  # nothing run again
    changed = [Unit("u0", "tests.test_workers:seeded_draw", {"seed": 7, "pause": 0.0})]
    with pytest.raises(UserError, match="u0 was run with other settings"):
        run_units(changed, ledger)


def test_the_progress_line_counts_this_runs_units_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ledger = tmp_path / "l.jsonl"
    run_units(units(3), ledger)  # another run's units in the same ledger
    caplog.set_level("INFO", logger="wpl")
    caplog.clear()  # the first run's lines, where an earlier test left the logger at INFO
    run_units([*units(1), Unit("v0", "tests.test_workers:seeded_draw", {"seed": 9, "pause": 0.0})], ledger)
    assert [r.getMessage().split(" (")[-1] for r in caplog.records if "done in" in r.getMessage()] == ["2 of 2)"]


def draw_from(seed: int, options: dict[str, object]) -> dict[str, float]:
    """A unit target with a data location among its options (it reads nothing there)."""
    return seeded_draw(seed)


def test_a_ledger_resumed_with_the_data_elsewhere_is_the_same_protocol(tmp_path: Path) -> None:
    ledger = tmp_path / "l.jsonl"

    def located(data_dir: str, lr: float = 0.1) -> list[Unit]:
        return [Unit(f"u{i}", "tests.test_workers:draw_from", {"seed": i, "options": {"data_dir": data_dir, "lr": lr}})
                for i in range(2)]

    run_units(located("/mnt/a/data")[:1], ledger)
    done = run_units(located("../shared/data"), ledger)  # another checkout: u0 kept, only u1 runs
    assert [e["kwargs"]["options"]["data_dir"] for e in done.values()] == ["/mnt/a/data", "../shared/data"]
    with pytest.raises(UserError, match="u0 was run with other settings"):
        run_units(located("../shared/data", lr=0.2), ledger)  # a real setting still refuses


def test_a_torn_last_line_is_dropped_and_a_corrupt_earlier_one_refused(tmp_path: Path) -> None:
    ledger = tmp_path / "l.jsonl"
    run_units(units(2), ledger)
    lines = ledger.read_text().splitlines()
    ledger.write_text(lines[0] + "\n" + lines[1][:20])  # killed while appending the second unit
    assert list(read_ledger(ledger)) == ["u0"]
    run_units(units(2), ledger)  # redoes u1 after cutting the torn line
    assert records(ledger) == records(tmp_path / "l.jsonl") and len(ledger.read_text().splitlines()) == 2
    ledger.write_text("{oops\n" + lines[1] + "\n")
    with pytest.raises(UserError, match="line 1 is not a unit record"):
        read_ledger(ledger)


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    script = ("import sys; from pathlib import Path; sys.path[:0] = [{root!r}]\n"
              "from tests.test_workers import units; from experiments.workers import run_units\n"
              "run_units(units(4, pause={pause}), Path({ledger!r}), workers=2)\n")
    ledger = tmp_path / "killed.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", script.format(root=str(ROOT), pause=1.0, ledger=str(ledger))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(read_ledger(ledger)) < 1:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the scheduler and its workers, at once
    proc.wait()
    assert 1 <= len(read_ledger(ledger)) < 4
    run_units(units(4, pause=1.0), ledger, workers=2)
    whole = run_units(units(4), tmp_path / "whole.jsonl", workers=1)
    assert records(ledger) == {k: v["record"] for k, v in whole.items()}


def test_a_stop_signal_names_what_the_ledger_keeps(tmp_path: Path) -> None:
    script = ("import sys; from pathlib import Path; sys.path[:0] = [{root!r}]\n"
              "from tests.test_workers import units; from experiments.workers import run_units\n"
              "from engine.stopping import Stopped, stop_on_signals\n"
              "try:\n    with stop_on_signals():\n        run_units(units(3, pause=1.0), Path({ledger!r}), workers=1, desc='units')\n"
              "except Stopped as stop:\n    print(stop.saved)\n")
    ledger = tmp_path / "l.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", script.format(root=str(ROOT), ledger=str(ledger))],
                            stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(read_ledger(ledger)) < 1:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    done = len(read_ledger(ledger))
    assert out.strip() == f"{done} of 3 units finished and kept in {ledger}" and 1 <= done < 3


def test_a_protocol_command_stopped_with_its_workers_says_so_in_one_line(tmp_path: Path) -> None:
    script = ("import sys; from pathlib import Path; sys.path[:0] = [{root!r}]\n"
              "from tests.test_workers import units; from experiments.workers import protocol_cli, run_units\n"
              "sys.exit(protocol_cli(lambda: str(run_units(units(6, pause=1.0), Path({ledger!r}), workers=2, desc='units'))))\n")
    ledger = tmp_path / "l.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", script.format(root=str(ROOT), ledger=str(ledger))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(read_ledger(ledger)) < 1:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # as `kill -TERM -PGID` or a scheduler stops the job: workers too
    out, err = proc.communicate(timeout=60)
    done = len(read_ledger(ledger))
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 128 + signal.SIGTERM and out == "" and 1 <= done < 6
    assert last.startswith(f"stopped by SIGTERM: {done} of 6 units finished and kept in {ledger}; the same command continues")
    assert "Traceback" not in err


def test_each_worker_keeps_its_device_and_the_ledger_says_which(tmp_path: Path) -> None:
    """Worker i takes devices[i]; a unit asks with unit_device(). "meta" stands in for a second GPU here."""
    todo = [Unit(f"d{i}", "tests.test_workers:device_name", {"seed": i}) for i in range(6)]
    done = run_units(todo, tmp_path / "parallel.jsonl", workers=2, devices=["cpu", "meta"])
    assert {v["record"]["device"] for v in done.values()} <= {"cpu", "meta"}
    assert all(v["record"]["device"] == v["device"] for v in done.values())
    by_pid: dict[int, set[str]] = {}
    for v in done.values():
        by_pid.setdefault(v["pid"], set()).add(v["device"])
    assert all(len(names) == 1 for names in by_pid.values())  # a worker never changes device
    if len(by_pid) == 2:  # both workers took units: each took its own device
        assert set().union(*by_pid.values()) == {"cpu", "meta"}

    serial = run_units(todo[:2], tmp_path / "serial.jsonl", workers=1, devices=["meta"])
    assert [v["device"] for v in serial.values()] == ["meta", "meta"]
    assert DEVICE_ENV not in os.environ and str(unit_device()) == "cpu"  # this process's setting restored
    assert unit_devices(0) == []


def test_without_cuda_no_gpu_is_handed_out() -> None:
    import torch

    if torch.cuda.is_available():
        assert unit_devices(99) == [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    else:
        assert unit_devices(4) == []


def infinite_figure(seed: int) -> dict[str, float]:
    """A unit target that returns an infinite figure (a diverged perplexity not mapped to null)."""
    return {"seed": seed, "ppl": float("inf")}


def test_a_non_finite_record_is_one_clear_line_and_the_finished_units_are_kept(tmp_path: Path) -> None:
    ledger = tmp_path / "l.jsonl"
    bad = [*units(2), Unit("bad", "tests.test_workers:infinite_figure", {"seed": 0})]
    with pytest.raises(UserError, match="unit bad returned a NaN or infinite figure") as err:
        run_units(bad, ledger, workers=1)
    assert "\n" not in str(err.value)
    assert sorted(read_ledger(ledger)) == ["u0", "u1"]
