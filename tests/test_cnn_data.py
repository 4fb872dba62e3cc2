"""The micro-CNN's image data: CIFAR-10 in torchvision's layout (faked, tests/test_cnn.py), image
folders, MNIST, the stratified hold-out, the batch stream and its augmentation."""

from __future__ import annotations

import pickle
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from data.image import ImageData, TensorImages, load_images, stratified_holdout
from data.image_stream import BatchStream, Preprocess, iterate_split
from cnn_fixtures import PER_BATCH, cifar_files, cnn_args, fake_cifar, one_thread, write_image_folder  # noqa: F401 - fixtures
from utils import UserError


def test_fake_cifar_is_read_by_torchvision_with_a_held_out_stratified_validation(fake_cifar: Path) -> None:
    data = load_images(fake_cifar, "cifar10", valid_size=20, seed=3)
    assert (data.channels, data.size, len(data.classes), data.flip, data.padding) == (3, (32, 32), 10, True, 4)
    assert (len(data.train), len(data.valid), len(data.test)) == (80, 20, PER_BATCH)
    assert torch.bincount(data.valid.labels).tolist() == [2] * 10  # class-stratified
    # pixels arrive as CHW in the pickles' channel-major order, and valid images are not training images
    raw = pickle.loads((fake_cifar / "cifar-10-batches-py" / "test_batch").read_bytes())
    assert torch.equal(data.test.images[3], torch.from_numpy(raw["data"][3]).view(3, 32, 32))
    train_rows = {bytes(x.flatten().numpy()) for x in data.train.images}
    assert not train_rows & {bytes(x.flatten().numpy()) for x in data.valid.images}
    again = load_images(fake_cifar, "cifar10", valid_size=20, seed=3)
    assert torch.equal(again.valid.images, data.valid.images)


def test_missing_cifar_offline_is_one_line_naming_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    with pytest.raises(UserError) as err:
        load_images(tmp_path, "cifar10", valid_size=10, seed=0)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "cifar-10-batches-py") in message


def test_image_folder_sets_channels_size_and_classes(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "shapes", {"train": 6, "test": 2})
    data = load_images(tmp_path, "shapes", valid_size=3, seed=0)
    assert (data.channels, data.size, data.classes) == (1, (10, 12), ["a", "b", "c"])
    assert (len(data.train), len(data.valid), len(data.test)) == (15, 3, 6) and data.valid_held_out
    assert torch.bincount(data.valid.labels).tolist() == [1, 1, 1]
    images, _ = data.train.__getitems__(list(range(len(data.train))))  # the odd-sized image is resized
    assert images.shape == (15, 1, 10, 12) and images.dtype == torch.uint8
    assert 0 < min(data.std) and all(0 < m < 1 for m in data.mean)

    write_image_folder(tmp_path / "own_valid", {"train": 2, "valid": 1})
    data = load_images(tmp_path, "own_valid", valid_size=3, seed=0)
    assert (len(data.train), len(data.valid), data.test, data.valid_held_out) == (6, 3, None, False)
    with pytest.raises(UserError, match="expected cifar10, mnist or an image folder"):
        load_images(tmp_path, "nothing_here", valid_size=3, seed=0)


def test_mnist_in_its_raw_idx_files_is_grey_28x28_without_flips(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 30), ("t10k", 10)):
        pixels = np.random.default_rng(2).integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + pixels.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + bytes(k % 10 for k in range(n)))
    data = load_images(tmp_path, "mnist", valid_size=10, seed=0)
    assert (data.channels, data.size, len(data.classes), data.flip, data.padding) == (1, (28, 28), 10, False, 3)
    assert (len(data.train), len(data.valid), len(data.test)) == (20, 10, 10)
    assert torch.bincount(data.valid.labels).tolist() == [1] * 10


def test_stratified_holdout_is_proportional_seeded_and_disjoint() -> None:
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    train, valid = stratified_holdout(labels, 10, seed=5)
    assert torch.bincount(labels[valid]).tolist() == [6, 3, 1]
    assert sorted(train.tolist() + valid.tolist()) == list(range(100))
    assert torch.equal(valid, stratified_holdout(labels, 10, seed=5)[1])
    assert not torch.equal(valid, stratified_holdout(labels, 10, seed=6)[1])
    with pytest.raises(UserError):
        stratified_holdout(labels, 100, seed=0)


def small_data(n: int = 10) -> ImageData:
    images = torch.arange(n * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 3, 4, 4)
    split = TensorImages(images, torch.arange(n))
    return ImageData("tiny", [str(k) for k in range(n)], 3, (4, 4), (0.5,) * 3, (0.25,) * 3, True, split, split, split)


def test_stream_rolls_over_epochs_and_resumes_on_the_same_batches() -> None:
    prep = Preprocess(small_data(), torch.device("cpu"))
    stream = BatchStream(small_data().train, 3, prep, seed=1, salt=1, augment=True, num_workers=0)
    seen = [stream.next() for _ in range(7)]
    epoch0 = torch.cat([labels for _, labels in seen[:3]])
    assert len(set(epoch0.tolist())) == 9 and stream.state_dict() == {"epoch": 2, "pos": 1}  # 3 full batches an epoch
    assert not torch.equal(epoch0, torch.cat([labels for _, labels in seen[3:6]]))  # reshuffled per epoch

    replay = BatchStream(small_data().train, 3, prep, seed=1, salt=1, augment=True, num_workers=0)
    replay.load_state_dict({"epoch": 1, "pos": 1})
    for images, labels in seen[4:]:
        again = replay.next()
        assert torch.equal(again[0], images) and torch.equal(again[1], labels)


def test_evaluation_reads_every_image_once_in_a_fixed_class_mixed_order() -> None:
    data = small_data(10)  # stored class by class, like an image folder
    prep = Preprocess(data, torch.device("cpu"))
    batches = [labels for _, labels in iterate_split(data.valid, 4, prep, 0, seed=3)]
    assert [len(b) for b in batches] == [4, 4, 2]
    order = torch.cat(batches).tolist()
    assert sorted(order) == list(range(10)) and order != list(range(10))
    assert torch.cat([labels for _, labels in iterate_split(data.valid, 4, prep, 0, seed=3)]).tolist() == order


def test_augmentation_is_a_crop_of_the_zero_padded_image_maybe_flipped() -> None:
    data = small_data(6)
    prep = Preprocess(data, torch.device("cpu"))
    images = data.train.images.clamp(min=1)  # no zero pixels, so padding is recognisable
    out = prep.augment(images, torch.Generator().manual_seed(0))
    padded = F.pad(images, (1, 1, 1, 1))  # padding 1 for 4x4 images
    for k in range(len(images)):
        windows = [padded[k, :, dy:dy + 4, dx:dx + 4] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(out[k], w) or torch.equal(out[k], w.flip(2)) for w in windows)
    assert not torch.equal(out, images)
    normalised = prep(images[:2])
    assert torch.allclose(normalised, (images[:2].float() / 255 - 0.5) / 0.25)


