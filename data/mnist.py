"""MNIST from its four idx files: the one reader of every mode (search, two-model example, continual, PathNet).

Where it looks, in this order: ``<data_dir>/mnist/``, ``<data_dir>/MNIST/raw/`` (torchvision's layout) and
``<data_dir>`` itself; each file may be gzipped (``NAME.gz``) or not, told apart by its first bytes.

The files are checked by what they hold, not by an MD5 of their compressed bytes (re-compressing a file
changes those bytes, never the data, so an MD5 check refuses good copies): the idx magic (unsigned bytes,
3 dimensions for images, 1 for labels), 28x28 images, a payload of exactly the size the header announces,
as many labels as images, labels 0-9. Counts other than the official 60,000 / 10,000 are allowed (tests,
subsets) and said in the log line.

Reading never writes anything. :func:`download` (used only when the caller says downloading is the
user's choice) writes the four ``.gz`` files into one folder, atomically, and leaves nothing on failure.
"""

from __future__ import annotations

import gzip
import logging
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from data import DEFAULT_DATA_DIR
from utils import UserError, missing_dirs, remove_if_empty

log = logging.getLogger("wpl")

SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FILES = [name for pair in SPLITS.values() for name in pair]
LAYOUTS = ("mnist", "MNIST/raw", ".")  # under data_dir, in the order they are tried
OFFICIAL = {"train": 60000, "test": 10000}
SIZE = (28, 28)
UBYTE = 0x08  # the idx type code of unsigned bytes
MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # torchvision's first mirror of the official files


@dataclass
class Mnist:
    """The two splits as uint8 ``(N, 28, 28)`` images and int64 labels, and the folder they came from."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    folder: Path


def candidates(data_dir: str | Path) -> list[Path]:
    """The folders MNIST may sit in, in the order they are tried."""
    root = Path(data_dir)
    return [root if layout == "." else root / layout for layout in LAYOUTS]


def file_in(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists (plain first)."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def find(data_dir: str | Path) -> Path | None:
    """The first candidate folder that holds all four files, gzipped or not."""
    return next((d for d in candidates(data_dir) if all(file_in(d, n) for n in FILES)), None)


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (gzipped or not) as an array of the shape its header gives."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # the gzip magic, whatever the file's name
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise UserError(f"{path}: a damaged gzip file ({err})") from err
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != UBYTE or data[3] == 0:
        raise UserError(f"{path}: not an idx file of unsigned bytes (first bytes {data[:4].hex() or 'none'}, "
                        f"expected 0000 08 and a dimension count)")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise UserError(f"{path}: idx header cut short ({len(data)} bytes, {offset} needed for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", data[4:offset])
    if len(data) - offset != math.prod(dims):
        raise UserError(f"{path}: the header announces {' x '.join(map(str, dims))} = {math.prod(dims)} bytes of "
                        f"records, the file holds {len(data) - offset}")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


def read_split(folder: Path, split: str) -> tuple[Tensor, Tensor]:
    """One split's images and labels, checked against each other."""
    image_path, label_path = (file_in(folder, n) for n in SPLITS[split])
    assert image_path is not None and label_path is not None  # find() checked
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.shape[1:] != SIZE:
        raise UserError(f"{image_path}: expected N x 28 x 28 images, the header gives {' x '.join(map(str, images.shape))}")
    if labels.ndim != 1:
        raise UserError(f"{label_path}: expected one dimension of labels, the header gives {labels.ndim}")
    if len(images) != len(labels):
        raise UserError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
    if len(labels) == 0 or labels.max() > 9:
        raise UserError(f"{label_path}: labels must be digits 0-9 (found {labels.max() if len(labels) else 'none'})")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def load(data_dir: str | Path, download_missing: bool | None = None) -> Mnist:
    """MNIST from ``data_dir`` (see the module docstring); one log line says what was found where.

    ``download_missing``: fetch the files into ``<data_dir>/mnist/`` when no candidate folder holds them.
    By default only when ``data_dir`` is the project's own folder (``data.DEFAULT_DATA_DIR``): a folder the
    user named is theirs, read and never written.
    """
    if download_missing is None:
        download_missing = Path(data_dir) == Path(DEFAULT_DATA_DIR)
    folder = find(data_dir)
    if folder is None and download_missing:
        download(candidates(data_dir)[0])
        folder = find(data_dir)
    if folder is None:
        raise UserError(not_found(data_dir))
    (x, y), (xt, yt) = read_split(folder, "train"), read_split(folder, "test")
    packed = sorted({"gzip" if p.suffix == ".gz" else "plain" for n in FILES if (p := file_in(folder, n)) is not None})
    official = (len(y), len(yt)) == (OFFICIAL["train"], OFFICIAL["test"])
    log.info("MNIST: train %d / test %d images of 28x28%s from %s (%s idx files)", len(y), len(yt),
             "" if official else " (not the official 60000 / 10000)", folder, " and ".join(packed))
    return Mnist(x, y, xt, yt, folder)


def not_found(data_dir: str | Path) -> str:
    """One line: the files looked for, the folders looked in, and what each partial folder lacks."""
    partial = []
    for folder in candidates(data_dir):
        missing = [n for n in FILES if file_in(folder, n) is None]
        if len(missing) < len(FILES):
            partial.append(f"{folder} lacks {', '.join(missing)}")
    where = ", ".join(str(d) for d in candidates(data_dir))
    return (f"MNIST not found: looked for {', '.join(n + '[.gz]' for n in FILES)} in {where}"
            + (f" ({'; '.join(partial)})" if partial else "") + f"; the files are at {MIRROR} (downloaded "
            f"only into the default --data_dir={DEFAULT_DATA_DIR})")


def download(folder: Path) -> None:
    """Fetch the four official ``.gz`` files into ``folder`` (atomically each); a failure removes what it made."""
    from data.text import download_file

    made = missing_dirs(folder)
    fetched: list[Path] = []
    try:
        for name in FILES:
            path = folder / f"{name}.gz"
            if not path.is_file():
                log.info("downloading %s%s.gz into %s", MIRROR, name, folder)
                download_file(MIRROR + f"{name}.gz", path)
                fetched.append(path)
            read_idx(path)  # a bad download is refused here, before anything trains on it
    except (OSError, UserError) as err:
        for path in fetched:
            path.unlink(missing_ok=True)
        remove_if_empty(made)
        raise UserError(f"MNIST is missing and could not be downloaded into {folder} ({str(err)[:200]})") from err
