"""Small shared helpers: user-facing errors, seeding and RNG state, atomic files, logging, drawing."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

log = logging.getLogger("wpl")


class UserError(Exception):
    """A problem with the user's input (flags, files, data): reported as one line, no traceback."""


# ------------------------------------------------------------------------------------------- RNG
def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """Every generator's state, in a form ``torch.load(weights_only=True)`` accepts."""
    # The legacy form is a tuple (name, keys, pos, has_gauss, gauss); numpy's stubs also allow a dict.
    _, keys, pos, *_rest = cast(tuple, np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "python": _py_state_to_tensor(random.getstate()),
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "numpy_pos": int(pos),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore ``rng_state()``. Its tensors may sit on a GPU (a checkpoint loaded with
    ``map_location=cuda``); the generators only take CPU byte tensors, so they come back first."""
    random.setstate(_py_state_from_tensor(state["python"].cpu()))
    np.random.set_state(("MT19937", state["numpy"].cpu().numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _py_state_to_tensor(state: tuple) -> torch.Tensor:
    version, internal, gauss = state
    assert gauss is None, "random.gauss state is not saved"
    return torch.tensor([version, *internal], dtype=torch.int64)


def _py_state_from_tensor(t: torch.Tensor) -> tuple:
    values = t.tolist()
    return values[0], tuple(values[1:]), None


# ----------------------------------------------------------------------------------------- files
def current_umask() -> int:
    """The process umask, read without changing it where the system allows.

    ``os.umask`` can only be read by setting it; between the two calls another thread creating a file
    would get the wrong mode. Linux reports it in ``/proc/self/status``, so that is read first."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def open_mode(fd: int) -> None:
    """Give a file made by ``tempfile.mkstemp`` (always 0600) the mode ``open()`` would have given it,
    ``0o666 & ~umask``: run files on a shared machine are then as readable as the user's other files."""
    if hasattr(os, "fchmod"):  # POSIX; elsewhere the mode bits do not carry this meaning
        os.fchmod(fd, 0o666 & ~current_umask())


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it into place.

    The file ends with the mode a plain ``open(path, "wb")`` gives (umask applied), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            open_mode(f.fileno())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a read-only folder, ...: the previous file is untouched
        kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
        raise UserError(f"cannot write {path} ({err.strerror or err}); {kept}") from err
    finally:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)


def save_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def load_json(path: Path) -> Any:
    """A JSON file, read by ``safe_io.read_json`` (size and depth limits, a directory refused): every JSON a
    user can point this project at goes through it."""
    from options.safe_io import read_json  # safe_io builds on this module

    return read_json(Path(path))


# --------------------------------------------------------------------------------------- logging
def setup_logging(level: str, logfile: Path | None = None) -> None:
    """Console (and ``logfile``) logging at ``level``; data-parallel ranks other than 0 log warnings and
    errors only, to the console only (rank 0 speaks for the job and owns the run directory)."""
    from distributed.context import world

    if not world().is_main:
        level, logfile = "WARN" if level != "DEBUG" else level, None
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel({"WARN": logging.WARNING}.get(level, getattr(logging, level)))
    prefix = f"[rank {world().rank}] " if world().active else ""
    fmt = logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    root.addHandler(console)
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(logfile)
        handler.setFormatter(fmt)
        root.addHandler(handler)


def missing_dirs(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first (what a ``mkdir -p`` makes)."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders (deepest first) that are still empty: what failed leaves no empty folder behind."""
    for folder in folders:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def log_to_files(message: str) -> None:
    """``message`` as an ERROR line in the log files only: the console has printed it already, and a run's
    train.log should end with why the run ended."""
    record = logging.LogRecord("wpl", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def choose_device(num_gpu: int, local_rank: int = 0) -> torch.device:
    """``num_gpu=0`` is the CPU; ``>= 1`` is CUDA when present, else the CPU with one warning.

    A data-parallel worker takes the GPU of its ``local_rank`` (``num_gpu > 1`` starts one worker per
    GPU: distributed.launch), a single process the current one."""
    if num_gpu <= 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if local_rank == 0:
            log.warning("num_gpu=%d but CUDA is not available: running on the CPU", num_gpu)
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()}")
    if local_rank > 0 or "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cuda")


def keep_freed_memory() -> bool:
    """Keep freed memory in the process heap instead of handing it back to the kernel (glibc only).

    PyTorch's CPU allocator is plain ``malloc``, and glibc serves every block above its mmap
    threshold (at most 32 MiB) with fresh ``mmap`` pages that it unmaps on ``free``. A training step
    allocates and frees the same large tensors every time (logits and their gradients: 90 MB each at
    the paper's size), so each step page-faults them in again. With both thresholds raised, those
    blocks are reused from the heap: at paper size, an RNN step's minor page faults fell from 180k to
    4k and its system time from 0.34 s to 0.09 s (2 threads). Process-wide; returns False where it
    does not apply (not glibc).
    """
    import ctypes

    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers, from glibc's malloc.h
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


# --------------------------------------------------------------------------------------- drawing
_warned_no_dot = False
_said_renderer = False


def dot_program() -> str | None:
    """Graphviz's ``dot``, or the pip-installable ``graphviz-pure`` port with the same flags.

    Looked up on ``PATH`` and beside the running interpreter, so a virtualenv that is not
    activated (``.venv/bin/python main.py``) still finds the ``graphviz-pure`` it installed.
    """
    beside = str(Path(sys.executable).parent)
    for name in ("dot", "graphviz-pure"):
        found = shutil.which(name) or shutil.which(name, path=beside)
        if found:
            return found
    return None


def render_dot(source: str, png_path: Path) -> Path:
    """Write ``source`` as ``.gv`` beside ``png_path`` and render it; returns the file written.

    Without a dot program the ``.gv`` source is kept and a warning is logged once per process.
    """
    global _warned_no_dot, _said_renderer
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    gv_path = png_path.with_suffix(".gv")
    gv_path.write_text(source)
    program = dot_program()
    if program is None:
        if not _warned_no_dot:
            log.warning("no 'dot' program found (install graphviz or graphviz-pure): writing .gv sources only")
            _warned_no_dot = True
        return gv_path
    if not _said_renderer:
        log.info("drawing architectures with %s", program)
        _said_renderer = True
    result = subprocess.run([program, "-Tpng", str(gv_path), "-o", str(png_path)], check=False, capture_output=True,
                            text=True)
    if result.returncode != 0 or not png_path.is_file():
        log.warning("%s failed to draw %s: %s", program, gv_path, result.stderr.strip()[:200])
        return gv_path
    gv_path.unlink()
    return png_path
