"""One scheduler for every protocol's independent units: parallel single-threaded workers, resumable.

A protocol (the ranking benchmark's ground truth and seeds, continual tables, PathNet seeds, sweeps) is
a list of :class:`Unit` s that share nothing: each names a ``module:function`` and its JSON keyword
arguments and returns a JSON record. On a few cores, independent runs gain far more as single-threaded
processes side by side than as one multi-threaded process (docs/benchmarks.md measures it), so
:func:`run_units` runs them in ``workers`` spawned processes, each with one intra-op thread.

The ledger (a JSON-lines file) is the protocol's whole state: one line per finished unit, appended and
fsynced by the scheduler alone (workers never write it). A rerun skips the units already there, so a
kill -9 at any moment loses at most the units in progress; a torn last line (a write cut short) is
dropped. Every unit runs single-threaded, in a worker or (``workers=1``) in this process, so its
record is the same whatever the number of workers: results equal a serial run's.

On a GPU box each worker may be given a device (``devices``: worker i takes ``devices[i % len]``); a unit
asks for it with :func:`unit_device` and its ledger line says which device ran it.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engine.stopping import Stopped, stop_on_signals
from utils import UserError

log = logging.getLogger("wpl")
DEVICE_ENV = "WPL_UNIT_DEVICE"  # the device a worker was given; read by unit_device()


@dataclass(frozen=True)
class Unit:
    """One independent piece of a protocol: ``target(**kwargs)`` returns its JSON record."""

    key: str  # unique within the protocol, e.g. "truth/c07/s2"
    target: str  # "module:function"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.target.count(":") != 1:
            raise ValueError(f"unit {self.key}: target must be 'module:function', got {self.target!r}")


def default_workers() -> int:
    """The cores this process may use (its CPU affinity, e.g. a cluster allocation), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def unit_device() -> Any:
    """The ``torch.device`` this unit runs on: its worker's (``run_units(devices=...)``), else the CPU."""
    import torch

    return torch.device(os.environ.get(DEVICE_ENV, "cpu"))


def unit_devices(num_gpu: int) -> list[str]:
    """The GPUs to spread units over: the first ``num_gpu`` CUDA devices present (none without CUDA)."""
    import torch

    if num_gpu <= 0 or not torch.cuda.is_available():
        return []
    return [f"cuda:{i}" for i in range(min(num_gpu, torch.cuda.device_count()))]


def read_ledger(path: Path) -> dict[str, dict[str, Any]]:
    """The finished units' lines by key; a torn last line is dropped, a bad earlier one is one clear error."""
    if not path.exists():
        return {}
    lines = path.read_text(errors="replace").splitlines()
    done: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            done[entry["key"]] = entry
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            if number < len(lines):
                raise UserError(f"{path} line {number} is not a unit record ({err}); the ledger was edited or "
                                f"corrupted: restore it or start a new run") from err
            log.warning("%s: dropping a torn last line (%d characters)", path, len(line))
    return done


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (no newline: a kill during the append) before appending after it."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _append(path: Path, entry: dict[str, Any]) -> None:
    try:
        line = json.dumps(entry, allow_nan=False, sort_keys=True) + "\n"
    except ValueError as err:  # NaN or infinity: the ledger is strict JSON, so the unit must say null
        raise UserError(f"unit {entry['key']} returned a NaN or infinite figure, which {path} (strict JSON) cannot "
                        f"hold; its target {entry['target']} must record such values as null; finished units are kept") from err
    try:
        with open(path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise UserError(f"cannot append to {path} ({err.strerror or err}); finished units so far are kept there") from err


LOCATION_KEYS = frozenset({"data_dir"})


def settings(kwargs: Any) -> Any:
    """A unit's keyword arguments without the keys that only say where the data lives (``LOCATION_KEYS``, at any
    depth): a ledger resumed from another checkout or machine, with the data elsewhere, is the same protocol."""
    if isinstance(kwargs, dict):
        return {k: settings(v) for k, v in kwargs.items() if k not in LOCATION_KEYS}
    if isinstance(kwargs, list):
        return [settings(v) for v in kwargs]
    return kwargs


def call(target: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run one unit single-threaded and time it (in a worker, or in this process)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    module, name = target.split(":")
    fn: Callable[..., dict[str, Any]] = getattr(importlib.import_module(module), name)
    start = time.time()
    try:
        record = fn(**kwargs)
    finally:
        torch.set_num_threads(threads)
    return {"record": record, "seconds": round(time.time() - start, 3), "pid": os.getpid(),
            "device": os.environ.get(DEVICE_ENV, "cpu")}


def _worker_init(devices: Any) -> None:
    """A worker dies with the scheduler (Linux: PR_SET_PDEATHSIG), leaves signals to it and takes its device
    from ``devices`` (a queue holding one name per worker), if any."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["OMP_NUM_THREADS"] = "1"
    if devices is not None:
        os.environ[DEVICE_ENV] = devices.get()
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_units(units: Iterable[Unit], ledger: Path, workers: int = 1, desc: str = "units",
              devices: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Run every unit not yet in ``ledger``; returns every finished unit's record by key.

    ``devices`` (e.g. ``["cuda:0", "cuda:1"]``): worker i runs its units on ``devices[i % len(devices)]``;
    empty, every unit runs on the CPU.

    A unit already in the ledger with other keyword arguments means the protocol changed under a
    half-finished run: refused in one line rather than mixing two configurations."""
    units = list(units)
    keys = [u.key for u in units]
    if len(set(keys)) != len(keys):
        raise ValueError("unit keys must be unique")
    ledger.parent.mkdir(parents=True, exist_ok=True)
    done = read_ledger(ledger)
    for unit in units:
        if unit.key in done and settings(done[unit.key].get("kwargs")) != settings(json.loads(json.dumps(unit.kwargs))):
            raise UserError(f"{ledger}: unit {unit.key} was run with other settings; the protocol changed under "
                            f"this run: use a new run (another --comment) or the settings it was started with")
    _repair_tail(ledger)
    todo = [u for u in units if u.key not in done]
    wanted = set(keys)  # the ledger may hold other runs' units too (another sweep, a wider grid): not counted
    bar = tqdm(total=len(units), initial=len(units) - len(todo), desc=desc, disable=None, dynamic_ncols=True)

    def finish(unit: Unit, result: dict[str, Any]) -> None:
        entry = {"key": unit.key, "target": unit.target, "kwargs": unit.kwargs, **result}
        _append(ledger, entry)
        done[unit.key] = entry
        bar.update(1)
        log.info("unit %s done in %.0f s (%d of %d)", unit.key, result["seconds"], len(done.keys() & wanted), len(units))

    try:
        if workers <= 1 or len(todo) <= 1:
            _run_serial(todo, devices[0] if devices else None, finish)
        else:
            _run_parallel(todo, min(workers, len(todo)), finish, devices)
    except Stopped as stop:  # the stop line says what is kept (main.py adds the resume command)
        kept = read_ledger(ledger).keys() & wanted  # the ledger itself: a signal may land between its line and `done`
        stop.saved = f"{len(kept)} of {len(units)} {desc} finished and kept in {ledger}"
        raise
    finally:
        bar.close()
    return {key: done[key] for key in keys if key in done}


def add_ledger_options(p: argparse.ArgumentParser, *, ledger: str, out: str, extra_help: str,
                       ledger_help: str | None = None) -> argparse.ArgumentParser:
    """The options a ledger protocol's command line ends with (after its own), the same in every protocol:
    where the ledger and the report go, the workers, ``--report_only`` and the options passed to every unit."""
    p.add_argument("--ledger", default=ledger, help=ledger_help)
    p.add_argument("--out", default=out)
    p.add_argument("--workers", type=int, default=1, help="units side by side, each single-threaded (records unchanged)")
    p.add_argument("--report_only", action="store_true")
    p.add_argument("extra", nargs="*", help=extra_help)
    return p


def protocol_cli(body: Callable[[], str]) -> int:
    """A protocol's command line around ``body`` (run the units, return the report): log lines with the time,
    the report on stdout, and any error a user can fix as one ``error:`` line with exit status 2. SIGINT and
    SIGTERM stop it with one line (what the ledger kept, the command that continues) and 128 + the signal."""
    import shlex
    import sys

    from options.safe_io import one_line_errors

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        with stop_on_signals(), one_line_errors():  # a bad option in a unit's command line, an unreadable ledger
            print(body())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Stopped as stop:
        spec = getattr(sys.modules["__main__"], "__spec__", None)  # python -m <module>: its name
        command = shlex.join(["python", *(["-m", spec.name] if spec else [sys.argv[0]]), *sys.argv[1:]])
        print(f"stopped by {stop.name}: {stop.saved or 'no unit finished'}; the same command continues: {command}",
              file=sys.stderr)
        return stop.exit_code
    return 0


def _run_serial(todo: list[Unit], device: str | None, finish: Callable[[Unit, dict[str, Any]], None]) -> None:
    """Every unit in this process, on ``device`` if one is given (this process's own setting restored after)."""
    before = os.environ.get(DEVICE_ENV)
    if device is not None:
        os.environ[DEVICE_ENV] = device
    try:
        for unit in todo:
            finish(unit, call(unit.target, unit.kwargs))
    finally:
        if before is None:
            os.environ.pop(DEVICE_ENV, None)
        else:
            os.environ[DEVICE_ENV] = before


def _run_parallel(todo: list[Unit], workers: int, finish: Callable[[Unit, dict[str, Any]], None],
                  devices: Sequence[str] = ()) -> None:
    """Keep ``workers`` units in flight; on an error or a stop signal the workers are killed, the ledger kept."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    device_queue = None
    if devices:  # one name per worker, taken by each worker as it starts
        device_queue = context.Queue()
        for i in range(workers):
            device_queue.put(devices[i % len(devices)])
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                               initargs=(device_queue,))
    pending: dict[Future[dict[str, Any]], Unit] = {}
    queue = list(reversed(todo))
    try:
        while queue or pending:
            while queue and len(pending) < workers:
                unit = queue.pop()
                pending[pool.submit(call, unit.target, unit.kwargs)] = unit
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                unit = pending.pop(future)
                finish(unit, future.result())
    except BaseException:  # a failed unit or a stop signal: the units in flight are lost, not waited for
        for process in multiprocessing.active_children():
            process.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
