"""User-supplied files and a hostile file system as one line, in every entry point.

Two pieces, so that no entry point has to know every way a file can go wrong:

* ``read_json`` / ``parse_json``: the one reader of JSON a user can hand over (``--arch``,
  ``--task_split``, a run's ``params.json`` and ``metrics.jsonl`` in ``compare_runs.py``). It
  refuses a directory, a file over ``MAX_JSON_BYTES`` and nesting deeper than ``MAX_JSON_DEPTH``
  *before* parsing: Python's decoder recurses per level, so 100,000 nested brackets end in a
  ``RecursionError`` (or, near the limit, a crash of the C stack) rather than an error message.
* ``one_line_errors``: the net every entry point's body runs in. It turns what an ordinary
  program lets escape as a traceback on bad input (``OSError`` from an unwritable, read-only or
  too-long path; ``RecursionError``; Pillow's decompression-bomb refusal; an allocation that does
  not fit, from a batch or width far too large) into a ``UserError``,
  which each entry point already prints as ``error: ...`` with a non-zero exit code.
"""

from __future__ import annotations

import errno
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from utils import UserError

MAX_JSON_BYTES = 64 << 20  # the largest params.json / results file a real run writes is well under 1 MiB
MAX_JSON_DEPTH = 64  # the deepest structure this project writes is 5 levels

OUT_OF_MEMORY = re.compile(r"can't allocate memory|out of memory", re.IGNORECASE)  # torch's CPU and CUDA wording
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(data: bytes) -> int:
    """The deepest bracket nesting of a JSON text, without parsing it (strings are skipped).

    Linear and iterative: it is what makes a 100,000-deep document safe to reject."""
    bare = np.frombuffer(_STRING.sub(b'""', data), dtype=np.uint8)
    if bare.size == 0:
        return 0
    step = np.isin(bare, (ord("["), ord("{"))).astype(np.int32) - np.isin(bare, (ord("]"), ord("}"))).astype(np.int32)
    return int(np.cumsum(step).max(initial=0))


def parse_json(data: bytes | str, source: str) -> Any:
    """``json.loads`` with the size and depth limits; ``source`` names the input in the error line."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_JSON_BYTES:
        raise UserError(f"{source} is {len(raw)} bytes: over the {MAX_JSON_BYTES} bytes this program reads as JSON")
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise UserError(f"{source} is nested {depth} levels deep: over the limit of {MAX_JSON_DEPTH} levels of JSON nesting")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"{source} is not UTF-8 text (byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{source} is not valid JSON ({err.msg}, line {err.lineno} column {err.colno})") from err
    except (RecursionError, ValueError) as err:  # e.g. an integer of more digits than Python converts
        raise UserError(f"{source} is not JSON this program can read ({str(err)[:120] or type(err).__name__})") from err


def read_bytes(path: Path, what: str = "", limit: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of a user-named file, refusing a directory, a missing file and one over ``limit``."""
    label = f"{what}={path}" if what else str(path)
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{label} is a directory; a file is expected")
    try:
        size = path.stat().st_size
        if size > limit:
            raise UserError(f"{label} is {size} bytes: over the {limit} bytes this program reads as JSON")
        return path.read_bytes()
    except FileNotFoundError as err:
        raise UserError(f"{label} does not exist") from err
    except OSError as err:
        raise UserError(f"cannot read {label} ({err.strerror or err})") from err


def read_json(path: Path, what: str = "") -> Any:
    """A user-supplied JSON file, within the size and depth limits; ``what`` names the option (``--arch``)."""
    return parse_json(read_bytes(path, what), f"{what}={path}" if what else str(path))


def describe_os_error(err: OSError) -> str:
    """One line for an OSError: what failed, on which path, and the usual cause."""
    where = err.filename if err.filename is not None else ""
    reason = err.strerror or str(err) or type(err).__name__
    hints = {errno.EACCES: "no permission", errno.EROFS: "read-only file system", errno.ENAMETOOLONG: "a name is too long",
             errno.ENOSPC: "the disk is full", errno.ENOTDIR: "a file stands where a folder is expected",
             errno.EISDIR: "a folder stands where a file is expected", errno.EPERM: "not permitted"}
    hint = hints.get(err.errno or -1)
    text = f"cannot use {where} ({reason})" if where else f"a file operation failed ({reason})"
    return text + (f": {hint}" if hint and hint.lower() not in reason.lower() else "")


def as_user_error(err: BaseException) -> UserError | None:
    """The one-line ``UserError`` for an input or file-system failure, or None for a genuine bug."""
    if isinstance(err, UserError):
        return err
    if isinstance(err, OSError):
        return UserError(describe_os_error(err))
    if isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and OUT_OF_MEMORY.search(str(err))):
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return UserError(f"out of memory ({first[:160]}): a smaller batch size, width or number of tasks fits")
    if isinstance(err, RecursionError):
        return UserError("an input is nested too deeply to process (Python's recursion limit)")
    if type(err).__name__ == "DecompressionBombError":  # PIL.Image.DecompressionBombError, without importing PIL
        return UserError(f"an image is refused as a decompression bomb ({str(err).split('.')[0][:160]})")
    return None


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Run an entry point's body: input and file-system failures become ``UserError`` (one line)."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:  # as_user_error says which are input or file-system failures
        converted = as_user_error(err)
        if converted is None:
            raise
        raise converted from err
