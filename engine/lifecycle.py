"""The run lifecycle every mode shares: open a run directory (new, resumed or refused), run a loop in it.

    with open_run(run_path(log_dir, dataset, comment), "search", resume, device, prefix=dataset) as opening:
        ...  # build the loop from the options (and opening.state, the checkpoint, on a resume)
        opening.commit(epochs_done, params)  # it fits: metrics.jsonl cut to what it covers, params.json
    opening.run_loop(loop.train, done=..., nothing="no epoch finished")

The rules, written once here for the search, the retrain, continual learning, PathNet and the ranking
benchmark (whose ledgers stand for a checkpoint):

* a folder holding a run is continued with ``--resume=True`` or left alone, never silently restarted
  over its results; a folder of another kind of run is refused either way, before anything is read;
* ``.<name>.tmp`` files of a write a killed process left are removed; the newest readable checkpoint
  is loaded (``weights_only=True``), must be of this mode's ``kind`` and format
  (:mod:`engine.checkpoint`), and says when it was written part-way through an epoch or on another
  thread count;
* nothing of the run is rewritten before the mode has checked that the checkpoint fits (``commit``);
* a set-up that fails or is stopped leaves no new folder behind; a stop signal in the loop says what
  the last checkpoint holds and names the run's ``--comment`` (``main.py`` adds the resume command).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from distributed import comm
from distributed.context import world
from engine.checkpoint import require_kind
from engine.runlog import RunDir, load_checkpoint, warn_on_thread_change
from engine.stopping import Stopped
from options.safe_io import read_json
from utils import UserError, save_json, setup_logging

log = logging.getLogger("wpl")
T = TypeVar("T")
CPU = torch.device("cpu")


@dataclass
class Opening:
    """A run directory opened by :func:`open_run`: its checkpoint (``None``: a fresh run) and ``--comment``."""

    run: RunDir
    comment: str
    device: torch.device
    checkpoint: Path | None = None
    state: dict[str, Any] | None = None

    def commit(self, epochs_done: int = 0, params: dict[str, Any] | None = None,
               metrics: list[dict[str, Any]] | None = None) -> None:
        """Once the mode knows the checkpoint fits: say the run resumes (and whether on another thread count, or
        part-way through an epoch), then rewrite what the checkpoint does not cover: ``metrics.jsonl`` keeps the
        records it counted (``metrics``: those records, when it carries them whole), a fresh run's is emptied;
        ``params`` go to ``params.json`` with the job's number of ranks."""
        run = self.run
        if self.state is not None and self.checkpoint is not None:
            log.info("resuming %s from %s (epoch %d)", run.path, self.checkpoint, self.state["epoch"])
            warn_on_thread_change(self.state, self.device)
            note_mid_epoch(self.state, self.checkpoint)
        if metrics is not None:
            run.rewrite_metrics(metrics)
        elif run.metrics_path.exists():
            run.truncate_metrics(epochs_done, self.state.get("metrics_lines") if self.state is not None else 0)
        if params is not None and run.writes:
            save_json(run.path / "params.json", {**params, "world_size": world().size})

    def run_loop(self, loop: Callable[[], T], done: Callable[[], str], nothing: str,
                 discard_until_saved: bool = False) -> T:
        """``loop()``, with the stop line and the failed-write line of every mode; the event file is closed after.

        ``done()`` says what a checkpoint holds (``"epochs 0-3"``; empty while nothing is finished), ``nothing``
        why nothing is saved yet. With ``discard_until_saved`` (an experiment's loop) a failure before the
        first checkpoint removes a folder this process made, as a failed set-up does."""
        run = self.run
        try:
            with discard_on_failure(run, unless_checkpointed=True) if discard_until_saved else nullcontext():
                return loop()
        except Stopped as stop:
            latest, held = run.latest_checkpoint(), done()
            stop.comment = self.comment
            stop.saved = stop.saved or (f"{latest} holds {held}" if latest and held else f"nothing saved yet ({nothing})")
            raise
        except UserError as err:  # a failed write elsewhere in the run dir (a results file, a drawing): what is kept
            if isinstance(err.__cause__, OSError) and "--resume=True" not in str(err):
                raise UserError(f"{err}; {run.resume_hint()}") from err.__cause__
            raise
        finally:
            run.close()


def run_path(log_dir: str | Path, prefix: str, comment: str) -> Path:
    """``<log_dir>/<prefix>_<comment>``, the comment defaulting to rank 0's clock (one run directory per job)."""
    return Path(log_dir) / f"{prefix}_{comment or comm.from_rank0(time.strftime('%Y-%m-%d_%H-%M-%S'))}"


@contextmanager
def open_run(path: Path, kind: str, resume: bool, device: torch.device = CPU, *, prefix: str,
             results: tuple[str, ...] = (), use_tensorboard: bool = True, log_level: str | None = None,
             checkpointed: bool = True) -> Iterator[Opening]:
    """The run directory ``path`` (``<prefix>_<comment>``, :func:`run_path`) of a ``kind`` of run: fresh,
    resumed from its newest checkpoint (``--resume=True``), or refused in one line (see the module's rules).
    ``results``: the files a finished run leaves; ``log_level``: also log to its ``train.log``;
    ``checkpointed=False``: a run whose ``results`` are ledgers that resume it (the ranking benchmark's,
    :mod:`experiments.workers`). A failure or a stop inside the block removes the folder if this process made it."""
    run = RunDir(path, use_tensorboard)
    opening = Opening(run, run.path.name.removeprefix(f"{prefix}_"), device)
    try:
        with discard_on_failure(run):
            refuse_unless_resuming(run, resume, results if checkpointed else (), kind, held=results)
            if log_level is not None:
                setup_logging(log_level, run.path / "train.log")
            run.remove_stale_temps()
            found = run.load_latest(device) if resume and checkpointed else None
            if found is not None:
                opening.checkpoint, opening.state = saved, state = found
                require_kind(state, saved, kind)  # before anything is read from it or rewritten
            elif resume and checkpointed:
                log.info("--resume: no checkpoint in %s yet, starting a fresh run", run.path)
            yield opening
    except Stopped as stop:  # stopped while it was set up: nothing of it was kept
        stop.comment = stop.comment or opening.comment
        stop.saved = stop.saved or "nothing saved yet (the run had not started)"
        raise


@contextmanager
def discard_on_failure(run: RunDir, unless_checkpointed: bool = False) -> Iterator[RunDir]:
    """Should the block fail or stop, remove the run directory if this process made it: a set-up that fails
    (options, data, model, checkpoint) leaves nothing behind; with ``unless_checkpointed`` (an experiment's
    loop, continual or PathNet) only while nothing was checkpointed yet."""
    try:
        yield run
    except BaseException:
        if not (unless_checkpointed and run.latest_checkpoint() is not None) and run.discard_if_new():
            log.debug("removed %s: the run never started or saved anything", run.path)
        raise


# --------------------------------------------------------------------------- fresh or resumed
def held_results(run: RunDir, results: tuple[str, ...] = ()) -> list[str]:
    """The files of a run the folder already holds: a checkpoint, ``metrics.jsonl``, ``results``."""
    held = [str(p.relative_to(run.path)) for p in [run.latest_checkpoint()] if p is not None]
    return held + [name for name in ("metrics.jsonl", *results) if (run.path / name).is_file()]


def folder_kind(run: RunDir) -> str | None:
    """Which loop wrote the folder, read off its files (a checkpoint may be gone): ``retrain`` (arch.json),
    ``ranking`` / ``nao_wpl`` (their plans), ``continual``/``pathnet`` (their results), ``search`` (params.json with a run id)."""
    if (run.path / "arch.json").is_file():
        return "retrain"
    for kind in ("ranking", "nao_wpl"):  # the ledger protocols' plans
        if (run.path / f"{kind}.json").is_file():
            return kind
    for kind in ("continual", "pathnet"):
        if (run.path / f"{kind}_results.json").is_file():
            return kind
    params = run.path / "params.json"
    if params.is_file():
        try:
            saved = read_json(params)
        except UserError:
            return None
        return "search" if isinstance(saved, dict) and "run_id" in saved else None
    return None


def refuse_unless_resuming(run: RunDir, resume: bool, results: tuple[str, ...] = (), kind: str = "",
                           held: tuple[str, ...] = ()) -> None:
    """A folder holding a run is continued with ``--resume=True`` or left alone; one of another ``kind`` of run
    (a search's, resumed as a retrain) is refused either way. With ``--resume=True`` and no checkpoint, a
    folder whose ``results`` exist is refused too: starting afresh would replace them. ``held``: more files
    that make the folder a run's."""
    held_files = held_results(run, tuple(dict.fromkeys((*results, *held))))
    found = folder_kind(run) if kind and held_files else None
    if found is not None and found != kind:  # checked before anything is read or rewritten
        raise UserError(f"{run.path} holds a {found} run, not a {kind} one: nothing is rewritten; resume it with "
                        f"--mode={'train' if found == 'search' else found}, or pass another --comment")
    if held_files and not resume:
        raise UserError(f"{run.path} already holds a run ({', '.join(held_files[:3])}): pass --resume=True to "
                        f"continue it, or another --comment")
    finished = [name for name in results if (run.path / name).is_file()]
    if resume and finished and run.latest_checkpoint() is None:
        raise UserError(f"{run.path} holds the results of a finished run ({', '.join(finished)}) but no checkpoint "
                        f"to resume from: nothing is rewritten; use another --comment")


def resolve_checkpoint(load_path: str, device: torch.device) -> tuple[Path, dict[str, Any]]:
    """``--load_path`` may name a run directory (its latest checkpoint) or a checkpoint file."""
    if not load_path:
        raise UserError("this mode needs --load_path=<run directory or checkpoint file>")
    path = Path(load_path)
    if path.is_dir():
        found = RunDir(path, use_tensorboard=False).load_latest(device)
        if found is None:
            raise UserError(f"run directory {path} holds no checkpoint (checkpoints/latest.pt)")
        return found
    return path, load_checkpoint(path, device)


# ------------------------------------------------------------------------ stopped part-way
def mid_epoch_saved(path: Path, epoch: int, position: str) -> str:
    """The stop message's account of a ``--save_on_signal`` checkpoint taken part-way through ``epoch``."""
    done = f"epochs 0-{epoch - 1} and " if epoch else ""
    return (f"{path} holds {done}epoch {epoch} up to {position}; a resume from it restarts epoch {epoch} "
            f"with these weights")


def note_mid_epoch(state: dict[str, Any], path: Path) -> None:
    if state.get("mid_epoch"):
        log.info("%s was saved on a stop signal part-way through epoch %d: that epoch restarts from its beginning "
                 "with the saved weights (the run is not identical to an uninterrupted one)", path, state["epoch"])
