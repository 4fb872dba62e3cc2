"""The one MNIST reader: both layouts, gzipped or not, checked by the idx header; nothing written where it reads."""

from __future__ import annotations

import gzip
import io
import logging
import struct
import urllib.request
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

import main
from data import DEFAULT_DATA_DIR, mnist
from data.image import load_images
from data.tasks import load_mnist
from utils import UserError

REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(array: np.ndarray, count: int | None = None) -> bytes:
    """An idx file of unsigned bytes; ``count`` overrides the first dimension the header announces."""
    dims = (count if count is not None else array.shape[0], *array.shape[1:])
    return struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *dims) + array.astype(np.uint8).tobytes()


def fake_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


def write_mnist(folder: Path, packing: str = "gzip", sizes: tuple[int, int] = (12, 5)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four files in ``folder``: ``gzip`` (``NAME.gz``), ``plain`` (``NAME``) or ``gzip-unnamed``
    (gzipped bytes under the plain name, as some unpackers leave them)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {"train": fake_split(sizes[0], 1), "test": fake_split(sizes[1], 2)}
    for split, arrays in data.items():
        for name, array in zip(NAMES[split], arrays):
            raw = idx_bytes(array)
            path = folder / (f"{name}.gz" if packing == "gzip" else name)
            path.write_bytes(raw if packing == "plain" else gzip.compress(raw))
    return data


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time: what "unchanged" means here."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("layout", ["mnist", "MNIST/raw", "."])
@pytest.mark.parametrize("packing", ["gzip", "plain", "gzip-unnamed"])
def test_reads_every_layout_gzipped_or_not(tmp_path: Path, layout: str, packing: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path if layout == "." else tmp_path / layout
    data = write_mnist(folder, packing)
    before = tree(tmp_path)
    with caplog.at_level(logging.INFO, logger="wpl"):
        found = mnist.load(tmp_path)
    assert found.folder == folder
    assert torch.equal(found.train_images, torch.from_numpy(data["train"][0]))
    assert found.train_labels.tolist() == data["train"][1].tolist() and found.train_labels.dtype == torch.int64
    assert found.test_images.shape == (5, 28, 28) and found.test_images.dtype == torch.uint8
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MNIST:")]
    assert len(lines) == 1 and str(folder) in lines[0] and "train 12 / test 5" in lines[0]
    assert ("plain" if packing == "plain" else "gzip") in lines[0]
    assert tree(tmp_path) == before  # reading writes nothing


def test_the_three_readers_agree(tmp_path: Path) -> None:
    """The search's image sets and the flat tensors of the other modes come from the same bytes."""
    data = write_mnist(tmp_path / "MNIST" / "raw", "plain", sizes=(30, 10))
    images = load_images(tmp_path, "mnist", valid_size=10, seed=0)
    assert (images.channels, images.size, len(images.classes), images.flip) == (1, (28, 28), 10, False)
    assert images.test is not None and torch.equal(images.test.images[:, 0], torch.from_numpy(data["test"][0]))  # type: ignore[attr-defined]
    x, _, _, yt = load_mnist(tmp_path)
    assert x.shape == (30, 784) and yt.tolist() == data["test"][1].tolist()


def test_a_corrupt_header_is_named(tmp_path: Path) -> None:
    write_mnist(tmp_path / "mnist", "plain")
    bad = tmp_path / "mnist" / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x1f\x8bnot really" + bad.read_bytes()[10:])  # gzip magic, then garbage
    with pytest.raises(UserError, match="damaged gzip"):
        mnist.load(tmp_path)
    bad.write_bytes(b"\x08\x03\x00\x00" + bad.read_bytes()[4:])  # the magic byte-swapped
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte: not an idx file .*first bytes 08030000"):
        mnist.load(tmp_path)


def test_wrong_counts_and_shapes_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    write_mnist(folder, "gzip")
    images, labels = fake_split(12, 1)
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images, count=13)))  # one record announced too many
    with pytest.raises(UserError, match="announces 13 x 28 x 28 = 10192 bytes of records, the file holds 9408"):
        mnist.load(tmp_path)
    path.write_bytes(gzip.compress(idx_bytes(images[:11])))  # 11 images, 12 labels
    with pytest.raises(UserError, match="11 train images but 12 labels"):
        mnist.load(tmp_path)
    path.write_bytes(gzip.compress(idx_bytes(images.reshape(12, 14, 56))))
    with pytest.raises(UserError, match="expected N x 28 x 28 images, the header gives 12 x 14 x 56"):
        mnist.load(tmp_path)
    path.write_bytes(gzip.compress(idx_bytes(images)))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels + 5)))
    with pytest.raises(UserError, match="digits 0-9"):
        mnist.load(tmp_path)


def test_missing_files_say_where_they_were_looked_for_and_create_nothing(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a --data_dir the user named is never downloaded into")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    write_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    before = tree(tmp_path)
    with pytest.raises(UserError) as err:
        mnist.load(tmp_path)
    message = str(err.value)
    assert "\n" not in message and "t10k-labels-idx1-ubyte[.gz]" in message
    for folder in (tmp_path / "mnist", tmp_path / "MNIST" / "raw", tmp_path):
        assert str(folder) in message
    assert f"{tmp_path / 'mnist'} lacks t10k-labels-idx1-ubyte" in message
    assert tree(tmp_path) == before and not (tmp_path / "MNIST").exists()


def serve(files: dict[str, bytes]) -> object:
    """A stand-in for ``urllib.request.urlopen`` serving ``files`` by their last path component."""
    class Response(io.BytesIO):
        headers: ClassVar[dict[str, str]] = {}

    def urlopen(url: str, timeout: float = 0) -> Response:
        name = url.rsplit("/", 1)[-1]
        if name not in files:
            raise OSError(f"{name}: no route to host")
        return Response(files[name])

    return urlopen


def test_the_default_folder_downloads_and_a_failed_download_leaves_nothing(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "source"
    write_mnist(source, "gzip")
    files = {p.name: p.read_bytes() for p in source.iterdir()}
    monkeypatch.setattr(urllib.request, "urlopen", serve({k: v for k, v in files.items() if "t10k-labels" not in k}))
    with pytest.raises(UserError, match="could not be downloaded into datasets/mnist"):
        mnist.load(DEFAULT_DATA_DIR)
    assert not (tmp_path / DEFAULT_DATA_DIR).exists()  # no partial files, no empty folders

    monkeypatch.setattr(urllib.request, "urlopen", serve(files))
    found = mnist.load(DEFAULT_DATA_DIR)
    assert found.folder == Path(DEFAULT_DATA_DIR) / "mnist" and len(found.train_labels) == 12
    assert sorted(p.name for p in found.folder.iterdir()) == sorted(files)


@pytest.mark.skipif(not (REAL / "mnist").is_dir(), reason="needs ../shared/data/mnist")
def test_real_mnist_as_it_is_feeds_a_tiny_search_and_stays_unchanged(tmp_path: Path) -> None:
    """The shared copy is gzipped again (its .gz MD5s are not the official ones): read as it is, nothing added."""
    before = tree(REAL)
    found = mnist.load(REAL)
    assert (len(found.train_labels), len(found.test_labels)) == (60000, 10000)
    assert torch.bincount(found.test_labels).tolist()[:2] == [980, 1135]  # the official test set's first counts
    argv = ["--network_type=micro_cnn", "--dataset=mnist", f"--data_dir={REAL}", f"--log_dir={tmp_path}",
            "--comment=tiny", "--num_blocks=2", "--cnn_num_modules=2", "--cnn_final_filter_size=8",
            "--cnn_num_repeat_normal=1", "--max_epoch=1", "--shared_max_step=2", "--num_batch_per_iter=1",
            "--train_controller=False", "--save_epoch=1", "--derive_num_sample=2", "--valid_size=50",
            "--batch_size=8", "--test_batch_size=16", "--num_workers=0", "--num_gpu=0", "--use_tensorboard=False",
            "--forgetting_eval_batches=1"]
    assert main.main(argv) == 0
    assert (tmp_path / "mnist_tiny" / "best_arch.json").is_file()
    assert tree(REAL) == before
