"""A run directory: resolved config, log file, metrics.jsonl, TensorBoard events, drawings, checkpoints.

Layout of ``<log_dir>/<dataset>_<comment>/``::

    params.json        resolved configuration
    train.log          the console log
    metrics.jsonl      one JSON object per epoch
    events.out.tfevents.*   TensorBoard scalars and images
    networks/          drawings of sampled and derived architectures
    checkpoints/       latest.pt (every epoch) and epoch_XXXX.pt (after epoch XXXX, every save_epoch; newest kept)
    best_arch.json     the derived architecture

How a mode opens, resumes or refuses such a folder, and runs its loop in it, is :mod:`engine.lifecycle`.
In a data-parallel job every rank holds a ``RunDir`` (they all read its checkpoints), but only rank 0's
writes (``writes``): the others' metrics, scalars, images and checkpoints are dropped here, so the
loops call the same methods on every rank and stay in step.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import socket
import struct
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from distributed.context import world
from engine import checkpoint
from utils import UserError, atomic_write_bytes, missing_dirs, remove_if_empty

log = logging.getLogger("wpl")


class RunDir:
    def __init__(self, path: Path, use_tensorboard: bool = True) -> None:
        self.path = Path(path)
        self.writes = world().is_main
        self.created = missing_dirs(self.path) if self.writes else []  # what this process makes: the run's folder, parents
        if self.writes:
            self.path.mkdir(parents=True, exist_ok=True)
        self.networks = self.path / "networks"
        self.checkpoints = self.path / "checkpoints"
        self.metrics_path = self.path / "metrics.jsonl"
        self._writer: EventLog | None = None
        self._use_tensorboard = use_tensorboard

    # ------------------------------------------------------------------------------ metrics
    @property
    def writer(self) -> EventLog | None:
        if self._writer is None and self._use_tensorboard and self.writes:
            self._writer = EventLog(self.path)
        return self._writer if self._writer is not None and self._writer.ok else None

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            self.writer.add([summary_scalar(tag, value) for tag, value in values.items()
                             if value is not None and math.isfinite(value)], step)

    def image(self, tag: str, png: Path, step: int) -> None:
        if self.writer is None or png.suffix != ".png":
            return
        import imageio.v3 as iio

        self.writer.add([summary_image(tag, iio.imread(png)[..., :3])], step)

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one record as strict JSON: non-finite numbers become null, listed under ``nonfinite``."""
        if not self.writes:
            return
        record = strict_json_record(record)
        try:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record, allow_nan=False) + "\n")
        except OSError as err:
            raise UserError(f"cannot append to {self.metrics_path} ({err.strerror or err}); "
                            f"the last checkpoint is kept: {self.latest_checkpoint() or 'none yet'}") from err

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records; a torn last line (a write cut short) is dropped with a warning."""
        if not self.metrics_path.exists():
            return []
        lines = [line for line in self.metrics_path.read_text(errors="replace").splitlines() if line.strip()]
        records = []
        for number, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                if number < len(lines):
                    raise UserError(f"{self.metrics_path} line {number} is not JSON ({err.msg})") from err
                log.warning("%s: dropping a torn last line (%d characters)", self.metrics_path, len(line))
        return records

    def truncate_metrics(self, epochs_done: int, lines: int | None = None) -> None:
        """Keep the first ``lines`` records (what the checkpoint covers), or those of epochs before ``epochs_done``."""
        if not self.writes:
            return
        records = self.read_metrics()
        self.rewrite_metrics(records[:lines] if lines is not None else [r for r in records if r["epoch"] < epochs_done])

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        """``metrics.jsonl`` := ``records``, atomically."""
        if self.writes:
            text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
            atomic_write_bytes(self.metrics_path, lambda f: f.write(text.encode()))

    def remove_stale_temps(self) -> list[Path]:
        """Delete ``.<name>.tmp`` files a killed process left (atomic writes in progress); returns them."""
        if not self.writes:
            return []
        stale = [p for folder in (self.path, self.checkpoints) if folder.is_dir() for p in folder.glob(".*.tmp")]
        for path in stale:
            path.unlink()
        if stale:
            log.info("removed %d unfinished temporary file(s) of an interrupted write: %s", len(stale),
                     ", ".join(p.name for p in stale))
        return stale

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def discard_if_new(self) -> bool:
        """Remove the run directory if this process made it (and the parents it made): a run that never
        started leaves nothing behind. Log files inside it are closed first. Whether it was removed."""
        if not self.created:
            return False
        self.close()
        root = logging.getLogger()
        for handler in list(root.handlers):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(self.path.resolve()):
                root.removeHandler(handler)
                handler.close()
        shutil.rmtree(self.path, ignore_errors=True)
        remove_if_empty(self.created[1:])
        self.created = []
        return True

    # -------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, state: dict[str, Any], epoch: int, numbered: bool, keep: int) -> Path:
        """Write ``epoch_XXXX.pt`` (when ``numbered``), then ``latest.pt``, each atomically.

        The numbered file comes first, so an interruption between the two leaves ``latest.pt`` at the
        previous epoch (that epoch is redone) rather than a numbered checkpoint that is never written.
        ``state`` records ``metrics_lines``: how many records of metrics.jsonl it covers, and
        ``cpu_threads``: the thread count its figures were computed with (see ``warn_on_thread_change``).
        """
        latest = self.checkpoints / "latest.pt"
        if not self.writes:
            return latest
        state = {**state, "metrics_lines": len(self.read_metrics()), "cpu_threads": torch.get_num_threads()}
        try:
            if numbered:
                save_state(self.checkpoints / f"epoch_{epoch:04d}.pt", state)
            save_state(latest, state)
        except UserError as err:
            raise UserError(f"{err}; {self.resume_hint()}") from err
        if numbered and keep > 0:
            for old in sorted(self.checkpoints.glob("epoch_*.pt"))[:-keep]:
                old.unlink()
        return latest

    def resume_hint(self) -> str:
        """What an I/O failure leaves to continue from (every write is atomic, so it is intact)."""
        previous = self.latest_checkpoint()
        return (f"resume from {previous} with --resume=True once there is space" if previous is not None
                else "no checkpoint exists yet")

    def latest_checkpoint(self) -> Path | None:
        latest = self.checkpoints / "latest.pt"
        if latest.is_file():
            return latest
        numbered = sorted(self.checkpoints.glob("epoch_*.pt"))
        return numbered[-1] if numbered else None

    def load_latest(self, device: torch.device) -> tuple[Path, dict[str, Any]] | None:
        """The newest readable checkpoint: ``latest.pt``, else the numbered ones newest first (said so)."""
        candidates = [self.checkpoints / "latest.pt", *sorted(self.checkpoints.glob("epoch_*.pt"), reverse=True)]
        candidates = [p for p in candidates if p.is_file()]
        problems = []
        for path in candidates:
            try:
                state = load_checkpoint(path, device)
            except checkpoint.OldFormat:  # every file of the run has that format: the converter's line, once
                raise
            except UserError as err:
                problems.append(str(err))
                continue
            if problems:
                log.warning("%s; falling back to %s (epoch %s)", "; ".join(problems), path, state.get("epoch"))
            return path, state
        if problems:
            raise UserError(f"no readable checkpoint in {self.checkpoints}: {problems[0]}")
        return None


class EventLog:
    """TensorBoard's event file, written and flushed in the caller's thread.

    tensorboardX's ``SummaryWriter`` writes from a thread: on a full disk that thread dies with a
    traceback and the next events block the training loop on its full queue. Here a failed write
    or flush is one warning, and TensorBoard is off for the rest of the run (``ok`` is False);
    metrics.jsonl and the checkpoints carry on (and report their own failures).
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self.ok = True
        self._file: Any = None
        try:
            self._file = open(self.path, "ab")  # noqa: SIM115  (held open for the run; closed by close())
        except OSError as err:
            self._fail(err)
            return
        from tensorboardX.proto.event_pb2 import Event

        self._write([Event(wall_time=time.time(), file_version="brain.Event:2")])

    def add(self, summaries: list[Any], step: int) -> None:
        """Append one event per summary at ``step`` and flush (events are visible while the run goes on)."""
        from tensorboardX.proto.event_pb2 import Event

        if self.ok and summaries:
            now = time.time()
            self._write([Event(wall_time=now, step=step, summary=s) for s in summaries])

    def _write(self, events: list[Any]) -> None:
        """TFRecord framing: length, its masked CRC-32C, the serialised event, its masked CRC-32C."""
        from tensorboardX.record_writer import masked_crc32c

        chunks = []
        for event in events:
            data = event.SerializeToString()
            header = struct.pack("<Q", len(data))
            chunks += [header, struct.pack("<I", masked_crc32c(header)), data, struct.pack("<I", masked_crc32c(data))]
        try:
            self._file.write(b"".join(chunks))
            self._file.flush()
        except OSError as err:
            self._fail(err)

    def _fail(self, err: OSError) -> None:
        log.warning("TensorBoard is off for the rest of this run: cannot write %s (%s); metrics.jsonl and the "
                    "checkpoints go on", self.path, err.strerror or err)
        self.ok = False
        self.close()

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:  # the buffered bytes that failed were reported by _fail already
                pass
            self._file = None


def summary_scalar(tag: str, value: float) -> Any:
    from tensorboardX.summary import scalar

    return scalar(tag, value)


def summary_image(tag: str, pixels: Any) -> Any:
    from tensorboardX.summary import image

    return image(tag, pixels, dataformats="HWC")


def save_state(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` atomically; a full disk or other I/O error is one line and the old file stays."""
    try:
        atomic_write_bytes(path, lambda f: torch.save(state, f))
    except RuntimeError as err:  # torch reports some failed writes (a full disk) as a RuntimeError
        reason = str(err).splitlines()[0][:120]
        kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
        raise UserError(f"cannot write {path} ({reason}); {kept}") from err


def strict_json_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with every non-finite float as None and their keys under ``nonfinite`` (JSON has no NaN)."""
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad:
        return record
    return {**{k: (None if k in bad else v) for k, v in record.items()}, "nonfinite": bad}


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """Load a checkpoint written by ``RunDir.save_checkpoint``, with a clear error when unreadable."""
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before refusing them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError as err:
        raise UserError(f"checkpoint {path} does not exist") from err
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise UserError(f"checkpoint {path} is unreadable or corrupt ({type(err).__name__})") from err
    return checkpoint.validate(state, path)


def warn_on_thread_change(state: dict[str, Any], device: torch.device) -> None:
    """Warn when a CPU run resumes on another thread count than its checkpoint was written with.

    CPU kernels split their sums by thread, so another count changes the late digits of every
    figure (1 and 2 threads differ from the first epoch on); the resumed run is then not identical
    to an uninterrupted one, and ``OMP_NUM_THREADS`` set to the saved count makes it so.
    """
    saved, now = state.get("cpu_threads"), torch.get_num_threads()
    if device.type == "cpu" and saved is not None and saved != now:
        log.warning("resuming on %d CPU threads a run checkpointed on %d: its figures will differ from an "
                    "uninterrupted run's in the late digits (OMP_NUM_THREADS=%d continues it exactly)", now, saved, saved)
