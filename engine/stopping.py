"""Stopping on SIGINT and SIGTERM at a safe point, with one line that says what was saved.

Schedulers (SLURM, Kubernetes) send SIGTERM, people press Ctrl-C; both raise ``Stopped`` in the
main thread. Work between checkpoints is redone on resume, so interrupting it anywhere is safe;
the only unsafe moment is the commit of an epoch (metrics line + checkpoint), which runs inside
``critical()``: a signal that arrives there waits until the commit is complete. The exit code is
128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell reports it.

With ``--save_on_signal`` the signal is not acted on where it lands but at the training loop's
next ``boundary()`` (between two shared steps, controller steps or retrain batches), where the
loop's ``saving_on_signal`` callback writes ``latest.pt`` first, so a scheduler's grace period loses
at most one step. That checkpoint is taken part-way through an epoch, whose running figures are not
saved: a resume restarts that epoch from its beginning with the saved weights, optimiser, sampler
and regulariser state. A second signal before the boundary stops at once, without that save.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """Raised by a stop signal; a BaseException so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.saved = ""  # what the interrupted mode kept, set on the way out
        self.comment = ""  # the run's --comment, for the resume command

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_depth = 0
_pending: int | None = None
_deferring = False  # --save_on_signal
_save: Callable[[], str] | None = None  # the running loop's checkpoint at a boundary; says what it saved


def _handler(signum: int, frame: Any) -> None:
    global _pending
    if _depth > 0 or (_deferring and _save is not None and _pending is None):
        _pending = signum
        return
    raise Stopped(signum)


@contextmanager
def stop_on_signals(save_on_signal: bool = False) -> Iterator[None]:
    """Within this block SIGINT and SIGTERM raise ``Stopped`` (main thread only; elsewhere a no-op);
    with ``save_on_signal`` a loop inside ``saving_on_signal`` saves at its next ``boundary()`` first."""
    global _deferring, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _deferring, _pending = save_on_signal, None
    try:
        yield
    finally:
        _deferring = False
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def saving_on_signal(save: Callable[[], str]) -> Iterator[None]:
    """Within this block (a training loop) ``save`` writes the loop's state at a boundary and
    returns what it kept, for the stop message."""
    global _save
    previous, _save = _save, save
    try:
        yield
    finally:
        _save = previous


def boundary() -> None:
    """A point between two updates, where the loop's state is whole: a deferred signal saves and stops here."""
    global _depth, _pending
    if _pending is None or _save is None or _depth > 0:
        return
    stop = Stopped(_pending)
    _depth += 1  # a second signal during the save waits for it
    try:
        stop.saved = _save()
    finally:
        _depth -= 1
        _pending = None
    raise stop


@contextmanager
def critical() -> Iterator[None]:
    """A block a stop signal does not cut: the signal is acted on once the block has finished."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if _depth == 0 and _pending is not None:
        signum, _pending = _pending, None
        raise Stopped(signum)
