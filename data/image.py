"""Image datasets for the micro-CNN search: CIFAR-10, MNIST or an image folder, split into train/valid/test.

Every split is a set of *un-augmented* uint8 images ``(C, H, W)`` with integer labels. CIFAR-10 comes
through torchvision (downloaded and checksummed when missing), MNIST through :mod:`data.mnist` (the
reader every mode shares); both live in memory as one tensor; an image folder ``<data_dir>/<name>/{train,valid,test}/<class>/*.{jpg,jpeg,png}`` is decoded
on demand in DataLoader workers. Validation is always held out of the training images (unless the
folder has its own ``valid/``): the official test split is only read by ``--mode=test``.

Batches, augmentation and the resumable streams over these splits are in :mod:`data.image_stream`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from utils import UserError

log = logging.getLogger("wpl")
CIFAR_MEAN = (0.49139968, 0.48215827, 0.44653124)  # the paper code's per-channel statistics
CIFAR_STD = (0.24703233, 0.24348505, 0.26158768)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
MNIST_CLASSES = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
                 "8 - eight", "9 - nine"]  # the names torchvision gave them
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "F"}  # PIL modes without colour
STATS_SAMPLE = 2000  # folder datasets: training images read to estimate the normalisation


class ImageSet(Protocol):
    """A split: uint8 images and int64 labels, fetched a batch at a time (DataLoader's ``__getitems__``)."""

    labels: Tensor
    lazy: bool  # decoded on demand (worth DataLoader workers) rather than held in memory

    def __len__(self) -> int: ...

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]: ...

    def subset(self, indices: Tensor) -> ImageSet: ...


class TensorImages:
    """A split held in memory as one ``(N, C, H, W)`` uint8 tensor: a batch is a single gather.

    Workers would only add inter-process copies to a gather, so streams read it in the main process.
    """

    lazy = False

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
            raise ValueError(f"expected (N, C, H, W) uint8 images and N labels, got {tuple(images.shape)} {images.dtype}")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx], self.labels[idx]

    def subset(self, indices: Tensor) -> TensorImages:
        return TensorImages(self.images[indices], self.labels[indices])


class FolderImages:
    """Image files decoded on demand into ``channels`` x ``size``; other sizes are resized to it."""

    lazy = True

    def __init__(self, paths: Sequence[str], labels: Tensor, channels: int, size: tuple[int, int]) -> None:
        self.paths = list(paths)
        self.labels = labels.long()
        self.channels = channels
        self.size = size

    def __len__(self) -> int:
        return len(self.labels)

    def decode(self, index: int) -> Tensor:
        from PIL import Image

        height, width = self.size
        try:
            with Image.open(self.paths[index]) as image:
                image = image.convert("L" if self.channels == 1 else "RGB")
                if image.size != (width, height):
                    image = image.resize((width, height), Image.Resampling.BILINEAR)
                array = np.array(image)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:  # corrupt, truncated, a bomb
            raise UserError(f"cannot decode image {self.paths[index]}: {_first_line(err)}") from err
        return torch.from_numpy(array).view(height, width, -1).permute(2, 0, 1)

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return torch.stack([self.decode(int(i)) for i in idx]), self.labels[idx]

    def subset(self, indices: Tensor) -> FolderImages:
        return FolderImages([self.paths[int(i)] for i in indices], self.labels[indices], self.channels, self.size)


@dataclass
class ImageData:
    """The three splits of a dataset and what the model and the augmentation need to know about it."""

    name: str
    classes: list[str]
    channels: int
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool  # horizontal flips keep the label (not for digits)
    train: ImageSet
    valid: ImageSet
    test: ImageSet | None  # an image folder may have no test split
    valid_held_out: bool = True  # False when an image folder brings its own valid/

    @property
    def padding(self) -> int:
        """Zero padding before the random crop: 4 pixels for 32x32 images, as the paper code."""
        return max(1, min(self.size) // 8)


# -------------------------------------------------------------------------------------- loading
def load_images(data_dir: str | Path, name: str, valid_size: int, seed: int) -> ImageData:
    """``cifar10`` (torchvision, downloaded when missing), ``mnist`` (:mod:`data.mnist`) or the folder
    ``<data_dir>/<name>``."""
    root = Path(data_dir)
    if name not in ("cifar10", "mnist"):
        return _image_folder(root / name, valid_size, seed)
    (full, test), classes = _torchvision(root) if name == "cifar10" else _mnist(root)
    train_idx, valid_idx = stratified_holdout(full.labels, valid_size, seed)
    train, valid = full.subset(train_idx), full.subset(valid_idx)
    if name == "cifar10":
        return ImageData(name, classes, 3, (32, 32), CIFAR_MEAN, CIFAR_STD, True, train, valid, test)
    return ImageData(name, classes, 1, (28, 28), MNIST_MEAN, MNIST_STD, False, train, valid, test)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:160] if text else type(err).__name__


def _torchvision(root: Path) -> tuple[tuple[TensorImages, TensorImages], list[str]]:
    """CIFAR-10 through torchvision (downloaded and checksummed when missing), as uint8 NCHW."""
    from torchvision.datasets import CIFAR10

    where = f"the extracted cifar-10-batches-py folder (python version) at {root / 'cifar-10-batches-py'}"
    try:
        splits = [CIFAR10(str(root), train=train, download=True) for train in (True, False)]
    except (OSError, RuntimeError) as err:
        raise UserError(f"CIFAR10 is missing and could not be downloaded ({_first_line(err)}): put {where}") from err
    images = [torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous() for s in splits]  # numpy NHWC
    tensors = tuple(TensorImages(x, torch.as_tensor(s.targets)) for x, s in zip(images, splits))
    return tensors, list(splits[0].classes)  # type: ignore[return-value]


def _mnist(root: Path) -> tuple[tuple[TensorImages, TensorImages], list[str]]:
    """MNIST's idx files (:func:`data.mnist.load`) as uint8 N x 1 x 28 x 28; class names as torchvision's."""
    from data import mnist

    found = mnist.load(root)
    train = TensorImages(found.train_images.unsqueeze(1).contiguous(), found.train_labels)
    test = TensorImages(found.test_images.unsqueeze(1).contiguous(), found.test_labels)
    return (train, test), MNIST_CLASSES


def _scan(folder: Path, classes: list[str] | None) -> tuple[list[str], list[str], Tensor]:
    """Class names, image paths and labels of ``folder/<class>/*``; ``classes`` fixes the label order."""
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    root = folder.resolve().parent  # the dataset's folder: train/, valid/ and test/ may link within it
    outside = [name for name in found if not (folder / name).resolve().is_relative_to(root)]
    if outside:  # a linked class folder would train on files from anywhere on the machine
        raise UserError(f"{folder}: class folder {outside[0]} is a link to {(folder / outside[0]).resolve()}, outside "
                        f"the dataset {root}; copy the images in instead")
    empty = [name for name in found if not _images_in(folder / name)]
    if empty:
        log.warning("%s: ignoring %d class folder(s) without images: %s", folder, len(empty), ", ".join(empty[:5]))
        found = [name for name in found if name not in empty]
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise UserError(f"{folder} has classes the training split lacks: {', '.join(unknown[:5])}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        directory = folder / name
        files = _images_in(directory)
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    if not paths:
        raise UserError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {folder}/<class>/")
    return classes, paths, torch.tensor(labels)


def _images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if directory.is_dir() else []


def _image_folder(folder: Path, valid_size: int, seed: int) -> ImageData:
    if not (folder / "train").is_dir():
        raise UserError(f"no dataset {folder.name!r}: expected cifar10, mnist or an image folder "
                        f"{folder}/train/<class>/*.jpg (with optional valid/ and test/ beside train/)")
    classes, paths, labels = _scan(folder / "train", None)
    channels, size = _image_format(paths, seed)
    train = FolderImages(paths, labels, channels, size)
    held_out = not (folder / "valid").is_dir()
    if held_out:
        train_idx, valid_idx = stratified_holdout(labels, valid_size, seed)
        train, valid = train.subset(train_idx), train.subset(valid_idx)
    else:
        _, valid_paths, valid_labels = _scan(folder / "valid", classes)
        valid = FolderImages(valid_paths, valid_labels, channels, size)
    test = None
    if (folder / "test").is_dir():
        _, test_paths, test_labels = _scan(folder / "test", classes)
        test = FolderImages(test_paths, test_labels, channels, size)
    mean, std = _channel_stats(train, seed)
    return ImageData(folder.name, classes, channels, size, mean, std, True, train, valid, test, held_out)


def _image_format(paths: Sequence[str], seed: int) -> tuple[int, tuple[int, int]]:
    """Channels (1 if every sampled image is grey, else 3) and the most common (height, width).

    Only the headers of up to ``STATS_SAMPLE`` seeded images are read.
    """
    from PIL import Image

    picked = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))[:STATS_SAMPLE]
    modes: set[str] = set()
    sizes: Counter[tuple[int, int]] = Counter()
    for k in picked.tolist():
        try:
            with Image.open(paths[k]) as image:
                modes.add(image.mode)
                sizes[(image.height, image.width)] += 1
        except (OSError, Image.DecompressionBombError) as err:  # a bomb is refused from its header, before decoding
            raise UserError(f"cannot read {paths[k]}: {_first_line(err)}") from err
    channels = 1 if modes <= GREY_MODES else 3
    return channels, sizes.most_common(1)[0][0]


def _channel_stats(images: FolderImages, seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of up to ``STATS_SAMPLE`` seeded training images, in [0, 1] units."""
    n = min(len(images), STATS_SAMPLE)
    picked = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    pixels = images.__getitems__(picked.tolist())[0].float().div_(255).transpose(0, 1).flatten(1)
    std = pixels.std(1).clamp_min(1e-3)  # a constant channel would divide by zero
    return tuple(pixels.mean(1).tolist()), tuple(std.tolist())


def stratified_holdout(labels: Tensor, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Sorted ``(train, valid)`` indices with ``size`` images held out, every class in proportion.

    Each class is shuffled (seeded); its k-th of n images gets the rank (k + 0.5) / n and the ``size``
    lowest ranks are held out, so each class gives its share up to rounding.
    """
    n = len(labels)
    if not 0 < size < n:
        raise UserError(f"--valid_size={size} must be between 1 and {n - 1} (the training split has {n} images)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    shuffled = labels[perm]
    order = torch.argsort(shuffled, stable=True)  # class by class, shuffled order inside each class
    counts = torch.bincount(shuffled)
    starts = counts.cumsum(0) - counts
    within = torch.empty(n, dtype=torch.long)
    within[order] = torch.arange(n) - starts[shuffled[order]]
    rank = (within + 0.5) / counts[shuffled]
    held = torch.zeros(n, dtype=torch.bool)
    held[torch.argsort(rank, stable=True)[:size]] = True
    return perm[~held].sort().values, perm[held].sort().values
