"""Stopping on SIGINT and SIGTERM at a safe point, with one line that says what was saved.

Schedulers (SLURM, Kubernetes) send SIGTERM, people press Ctrl-C; both raise ``Stopped`` in the
main thread. Work between checkpoints is redone on resume, so interrupting it anywhere is safe;
the only unsafe moment is the commit of an epoch (metrics line + checkpoint), which runs inside
``critical()``: a signal that arrives there waits until the commit is complete. The exit code is
128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell reports it.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

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


def _handler(signum: int, frame: Any) -> None:
    global _pending
    if _depth > 0:
        _pending = signum
        return
    raise Stopped(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within this block SIGINT and SIGTERM raise ``Stopped`` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


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
