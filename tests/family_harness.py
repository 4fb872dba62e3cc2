"""The harness of the hostile-user table (tests/test_family_cases.py): a world of finished runs, and one call.

Issue 31 asked that every mode and script answer bad input as the search does: exit non-zero with one
``error:`` line (or argparse's ``usage`` + one line), no traceback, and nothing of an earlier run changed.
``World`` builds, once per module, the runs a hostile user would aim at (a finished continual run, a
finished PathNet run, a finished search, a finished retrain) on tiny generated data; ``call`` runs one
entry point in-process and returns its exit code and what it printed; ``snapshot`` is the content of a
folder, to compare before and after.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SEARCH = ["--dataset=tiny", "--max_epoch=1", "--shared_max_step=2", "--num_batch_per_iter=2", "--controller_max_step=2",
          "--train_controller=True", "--save_epoch=1", "--shared_embed=8", "--shared_hid=8", "--batch_size=4",
          "--test_batch_size=2", "--num_blocks=3", "--derive_num_sample=2", "--num_gpu=0", "--forgetting_eval_batches=1",
          "--use_tensorboard=False", "--policy_batch_size=2"]
RETRAIN = ["--mode=retrain", "--dataset=tiny", "--num_blocks=3", "--retrain_embed=8", "--retrain_hid=8",
           "--retrain_batch_size=16", "--test_batch_size=2", "--retrain_epochs=1", "--num_gpu=0",
           "--use_tensorboard=False"]
CONTINUAL = ["--mode=continual", "--strategies=none,ewc", "--seeds=1", "--cl_iters=2", "--cl_eval_every=1",
             "--cl_hidden=8", "--importance_samples=20", "--use_tensorboard=False", "--num_gpu=0"]
PATHNET = ["--mode=pathnet", "--num_gpu=0", "--seeds=1", "--pathnet_layers=2", "--pathnet_modules=3",
           "--pathnet_units=4", "--pathnet_active=2", "--pathnet_population=2", "--pathnet_batches=1",
           "--pathnet_batch_size=8", "--pathnet_max_generations=1", "--pathnet_variants=pathnet,wpl",
           "--tasks=1v3,1v2", "--use_tensorboard=False"]
TOY = ["--shared_layers", "1", "--alpha", "0", "--iterations", "2", "--a_iterations", "2", "--batch_size", "8",
       "--eval_every", "1", "--fisher_samples", "8", "--seeds", "1", "--hidden", "8", "--device", "cpu"]


def write_mnist(folder: Path, train: int = 300, test: int = 100) -> Path:
    """Four gzipped idx files of random digits (a bright row marks the label), as data/mnist.py reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train", train, 0), ("t10k", test, 1)):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.random((n, 28, 28)) * 50).astype(np.uint8)
        images[np.arange(n), labels, :] = 255
        with gzip.open(folder / f"{name}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 0x0803, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{name}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 0x0801, n) + labels.tobytes())
    return folder


@dataclass
class Outcome:
    code: int
    err: str
    out: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith(("error:", "stopped by", "usage:"))
                or ": error: " in line]


def call(entry: str, argv: list[str]) -> Outcome:
    """Run one entry point in-process (``main``, ``toy``, ``compare``, ``gif``, ``sweep``): its exit code and output.

    ``SystemExit`` (argparse, toy_mnist.py's one-line exit) is an exit code like any other; any other
    exception escapes, so a traceback fails the test that met it."""
    import compare_runs
    import generate_gif
    import main
    import sweep
    import toy_mnist

    functions: dict[str, Callable[[list[str]], Any]] = {"main": main.main, "toy": toy_mnist.main,
                                                        "compare": compare_runs.main, "gif": generate_gif.main,
                                                        "sweep": sweep.main}
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            result = functions[entry](argv)
            code = result if isinstance(result, int) else 0
        except SystemExit as stop:
            if isinstance(stop.code, str):
                print(stop.code, file=sys.stderr)
                code = 1
            else:
                code = int(stop.code or 0)
    return Outcome(code, err.getvalue(), out.getvalue())


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the digest of its bytes (empty when the folder is absent)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass
class World:
    """Tiny data and finished runs of every kind, built once; ``names`` maps placeholders to paths."""

    root: Path
    names: dict[str, str] = field(default_factory=dict)

    def build(self, corpus_dir: Path) -> World:
        import shutil

        data = self.root / "data"
        write_mnist(data / "mnist")
        shutil.copytree(corpus_dir / "tiny", data / "tiny")
        logs = self.root / "logs"
        runs = [("main", [*CONTINUAL, f"--data_dir={data}", f"--log_dir={logs}", "--comment=done"]),
                ("main", [*PATHNET, f"--data_dir={data}", f"--log_dir={logs}", "--comment=done"]),
                ("main", [*SEARCH, f"--data_dir={data}", f"--log_dir={logs}", "--comment=search"]),
                ("main", [*RETRAIN, f"--data_dir={data}", f"--log_dir={logs}", "--comment=retrain",
                          f"--load_path={logs / 'tiny_search'}"])]
        for entry, argv in runs:
            result = call(entry, argv)
            assert result.code == 0, result.err[-2000:]
        self.names = {"data": str(data), "logs": str(logs), "continual": str(logs / "split_mnist_done"),
                      "pathnet": str(logs / "pathnet_done"), "search": str(logs / "tiny_search"),
                      "retrain": str(logs / "tiny_retrain")}
        return self

    def fill(self, argv: list[str], tmp: Path) -> list[str]:
        return [a.format(tmp=tmp, **self.names) for a in argv]
