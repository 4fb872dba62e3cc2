"""The hostile files of the family table: each ``setup`` makes one bad thing in a case's own folder.

Every function takes the case's folder ``tmp`` and the world's names (``{continual}``, ``{search}``, ...)
and returns nothing; the table in tests/test_family_cases.py says what each must produce.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from family_harness import write_mnist

from engine import stamp

Setup = Callable[[Path, dict[str, str]], None]
MARKER = "planted_pickle_ran"


class Planted:
    """A pickle that would create a file when loaded with ``weights_only=False``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.target,))


def copy_run(name: str, folder: str) -> Setup:
    """The world's finished run ``name`` copied to ``tmp/logs/<folder>`` (so it can be damaged)."""
    def setup(tmp: Path, names: dict[str, str]) -> None:
        shutil.copytree(names[name], tmp / "logs" / folder)
    return setup


def bad_checkpoint(name: str, folder: str, kind: str) -> Setup:
    """A copy of a finished run whose ``latest.pt`` is replaced by a bad one of ``kind``."""
    def setup(tmp: Path, names: dict[str, str]) -> None:
        copy_run(name, folder)(tmp, names)
        latest = tmp / "logs" / folder / "checkpoints" / "latest.pt"
        good = latest.read_bytes()
        writes: dict[str, Callable[[], Any]] = {
            "empty": lambda: latest.write_bytes(b""),
            "truncated": lambda: latest.write_bytes(good[: len(good) // 2]),
            "garbage": lambda: latest.write_bytes(os.urandom(4096)),
            "pickle": lambda: latest.write_bytes(pickle.dumps({"format": 1, "x": Planted(tmp / MARKER)})),
            "torch_pickle": lambda: torch.save({"format": 1, "x": Planted(tmp / MARKER)}, latest),
            "foreign": lambda: torch.save({"weights": torch.zeros(3)}, latest),
            "list": lambda: torch.save([1, 2, 3], latest),
            "format": lambda: torch.save({"format": 99, "epoch": 0, "model": {}, "config": {}}, latest),
            "search": lambda: torch.save(stamp("search", {"epoch": 1, "model": {}, "config": {}}), latest),
            "incomplete": lambda: torch.save(stamp(name, {"epoch": 1, "config": {}}), latest),
            "mangled": lambda: torch.save(stamp(name, {"epoch": 1, "model": {}, "config": {}, "runs": 5,
                                                       "records": 5, "current": None}), latest),
            "unstamped": lambda: torch.save({"config": {}, "records": [], "runs": {}, "current": None}, latest),
            "folder": lambda: (latest.unlink(), latest.mkdir()),
        }
        writes[kind]()
    return setup


def without_checkpoints(name: str, folder: str) -> Setup:
    def setup(tmp: Path, names: dict[str, str]) -> None:
        copy_run(name, folder)(tmp, names)
        shutil.rmtree(tmp / "logs" / folder / "checkpoints")
    return setup


def file_at(relative: str, content: bytes = b"x") -> Setup:
    def setup(tmp: Path, names: dict[str, str]) -> None:
        path = tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return setup


def folder_at(relative: str) -> Setup:
    def setup(tmp: Path, names: dict[str, str]) -> None:
        (tmp / relative).mkdir(parents=True, exist_ok=True)
    return setup


def sparse_file(relative: str, size: int) -> Setup:
    """A file of ``size`` bytes that takes no disk (a huge input, refused from its size alone)."""
    def setup(tmp: Path, names: dict[str, str]) -> None:
        path = tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(size)
    return setup


DEEP = b"[" * 100_000 + b"]" * 100_000


def bad_mnist(kind: str) -> Setup:
    """``tmp/data/mnist`` with one damaged file: data/mnist.py's errors, met through every MNIST mode."""
    def setup(tmp: Path, names: dict[str, str]) -> None:
        folder = write_mnist(tmp / "data" / "mnist", 60, 20)
        images, labels = folder / "train-images-idx3-ubyte.gz", folder / "train-labels-idx1-ubyte.gz"
        raw = gzip.decompress(images.read_bytes())
        if kind == "truncated_gzip":
            images.write_bytes(images.read_bytes()[:200])
        elif kind == "magic":
            images.write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + raw[4:]))
        elif kind == "short":
            images.write_bytes(gzip.compress(raw[: len(raw) // 2]))
        elif kind == "header":
            images.write_bytes(gzip.compress(raw[:10]))
        elif kind == "labels":
            labels.write_bytes(gzip.compress(struct.pack(">II", 0x0801, 60) + bytes([200] * 60)))
        elif kind == "empty":
            images.write_bytes(b"")
    return setup


def png_bomb(path: Path, side: int = 40_000) -> None:
    """A PNG whose header announces ``side`` x ``side`` pixels (over Pillow's decompression-bomb limit)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


def small_png(path: Path, shade: int) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8), shade).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


def image_folder(kind: str) -> Setup:
    """``tmp/data/imgs/train/<a..d>/`` of small PNGs and a task split; ``kind`` adds a bomb or a linked class."""
    def setup(tmp: Path, names: dict[str, str]) -> None:
        root = tmp / "data" / "imgs" / "train"
        for c, name in enumerate("abcd"):
            (root / name).mkdir(parents=True)
            for i in range(6):
                small_png(root / name / f"{i}.png", 40 * c + i)
        if kind == "bomb":
            for name in "abcd":
                png_bomb(root / name / "9.png")
        elif kind == "link":
            outside = tmp / "elsewhere" / "e"
            outside.mkdir(parents=True)
            for i in range(6):
                small_png(outside / f"{i}.png", 200)
            (root / "e").symlink_to(outside, target_is_directory=True)
        (tmp / "split.json").write_text('{"folder": "imgs", "tasks": [["a", "b"], ["c", "d"]]}')
    return setup


def drawings(kind: str) -> Setup:
    """``tmp/logs/run/networks/`` with two derived drawings, one of them bad (``corrupt`` or ``bomb``)."""
    def setup(tmp: Path, names: dict[str, str]) -> None:
        folder = tmp / "logs" / "run" / "networks"
        folder.mkdir(parents=True)
        small_png(folder / "0-derived.png", 10)
        if kind == "corrupt":
            (folder / "1-derived.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        elif kind == "bomb":
            png_bomb(folder / "1-derived.png")
        else:
            small_png(folder / "1-derived.png", 90)
    return setup


def run_with(name: str, folder: str, file: str, content: bytes) -> Setup:
    """A copy of a finished run with one of its files replaced."""
    def setup(tmp: Path, names: dict[str, str]) -> None:
        copy_run(name, folder)(tmp, names)
        (tmp / "logs" / folder / file).write_bytes(content)
    return setup


def arch_file(nodes: int) -> Setup:
    def setup(tmp: Path, names: dict[str, str]) -> None:
        arch = {"type": "rnn", "activations": ["tanh"] * nodes, "parents": [-1] + [0] * (nodes - 1)}
        import json

        (tmp / "arch.json").write_text(json.dumps({"arch": arch}))
    return setup
