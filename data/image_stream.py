"""Batches of an image split for the micro-CNN: normalisation, augmentation and resumable endless streams.

Augmentation (zero-pad + random crop, horizontal flip) and normalisation run per batch on the
model's device, drawing from a generator seeded by ``(seed, stream, epoch, position)``. DataLoader
workers therefore only decode, and a stream's whole state is two integers: a resumed run sees
exactly the batches an uninterrupted one would have seen. The splits themselves come from
:mod:`data.image`.

Data-parallel: every rank draws the same global batch of ``batch_size`` indices and keeps its
contiguous share (``distributed.context.World.part``); the augmentation is drawn for the whole global
batch and sliced, so the ranks together see the images a single process would have seen.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader, Sampler

from data.image import ImageData, ImageSet
from distributed.context import world
from utils import UserError


def worker_error_line(err: UserError) -> UserError:
    """A UserError re-raised by a DataLoader worker carries the worker's whole traceback: keep its last line."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    last = lines[-1] if lines else str(err)
    return UserError(last.split("UserError: ", 1)[-1])


def mixed_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from several integers (seed, stream, epoch, position)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class Preprocess:
    """uint8 batches to normalised float batches on ``device``, with the training augmentation if asked."""

    def __init__(self, data: ImageData, device: torch.device) -> None:
        self.device = device
        self.padding = data.padding
        self.flip = data.flip
        mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std), mean / std

    def __call__(self, images: Tensor, generator: torch.Generator | None = None, part: slice | None = None,
                 total: int = 0) -> Tensor:
        images = images.to(self.device, non_blocking=True)
        if generator is not None:
            images = self.augment(images, generator, part, total)
        return images.float() * self.scale - self.shift

    def augment(self, images: Tensor, generator: torch.Generator, part: slice | None = None, total: int = 0) -> Tensor:
        """Random crop of the zero-padded image (torchvision's RandomCrop(padding=p)), then a random flip.

        ``images`` may be the ``part`` of a batch of ``total`` images: the draws are made for the whole
        batch and sliced, so each image is augmented as it would be in the whole batch."""
        n, _, h, w = images.shape
        part = part if part is not None else slice(0, n)
        drawn = total or n
        p = self.padding
        padded = F.pad(images, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (drawn, 1), generator=generator)[part]
        dx = torch.randint(0, 2 * p + 1, (drawn, 1), generator=generator)[part]
        rows, cols = dy + torch.arange(h), dx + torch.arange(w)
        if self.flip:
            flipped = torch.rand(drawn, 1, generator=generator)[part] < 0.5
            cols = torch.where(flipped, cols.flip(1), cols)
        rows, cols = rows.to(self.device), cols.to(self.device)
        batch = torch.arange(n, device=self.device)[:, None, None]
        return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()  # (n, h, w, c) -> NCHW


def _as_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """``__getitems__`` already returns a stacked batch."""
    return batch


class _EpochBatches(Sampler[list[int]]):
    """The batches of one epoch from position ``start`` on: a permutation seeded by (seed, stream, epoch)."""

    def __init__(self, size: int, batch_size: int, seed: int, salt: int, part: slice = slice(None)) -> None:
        self.size, self.batch_size, self.seed, self.salt, self.part = size, batch_size, seed, salt, part
        self.epoch = 0
        self.start = 0

    @property
    def per_epoch(self) -> int:
        return self.size // self.batch_size

    def __len__(self) -> int:
        return self.per_epoch - self.start

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(mixed_seed(self.seed, self.salt, self.epoch))
        order = torch.randperm(self.size, generator=generator)
        batches = order[: self.per_epoch * self.batch_size].view(self.per_epoch, self.batch_size)
        for batch in batches[self.start :]:
            yield batch[self.part].tolist()


def make_loader(images: ImageSet, batch_sampler: Sampler[list[int]], num_workers: int, device: torch.device,
                persistent: bool) -> DataLoader:
    """A DataLoader whose workers decode lazy splits; in-memory splits are gathered in-process.

    Its own generator keeps it from drawing worker seeds from the global RNG whenever an iterator
    starts, which would shift the controller's samples after a resume (the workers draw nothing).
    """
    workers = num_workers if images.lazy else 0
    return DataLoader(images, batch_sampler=batch_sampler, num_workers=workers, collate_fn=_as_batch,  # type: ignore[arg-type]
                      pin_memory=device.type == "cuda", persistent_workers=persistent and workers > 0,
                      generator=torch.Generator())


class BatchStream:
    """Endless full batches of one split, reshuffled every epoch; its state is ``(epoch, position)``.

    The DataLoader iterator persists across calls (workers keep prefetching) and rolls over to the
    next epoch when exhausted. ``load_state_dict`` restarts it at the saved position without decoding
    the skipped batches, and the augmentation is re-drawn from the same seeds.
    """

    def __init__(self, images: ImageSet, batch_size: int, preprocess: Preprocess, *, seed: int, salt: int,
                 augment: bool, num_workers: int) -> None:
        if len(images) < batch_size:
            raise UserError(f"a split of {len(images)} images is smaller than the batch size {batch_size}")
        self.preprocess, self.seed, self.salt, self.augment = preprocess, seed, salt, augment
        self.batch_size, self.part = batch_size, world().part(batch_size)  # this rank's share of each batch
        self.sampler = _EpochBatches(len(images), batch_size, seed, salt, self.part)
        self.loader = make_loader(images, self.sampler, num_workers, preprocess.device, persistent=True)
        self.epoch, self.pos = 0, 0
        self._iter: Iterator[tuple[Tensor, Tensor]] | None = None

    def next(self) -> tuple[Tensor, Tensor]:
        """The next ``(images, labels)`` on the device, images normalised (and augmented if asked)."""
        while True:
            if self._iter is None:
                self.sampler.epoch, self.sampler.start = self.epoch, self.pos
                self._iter = iter(self.loader)
            try:
                images, labels = next(self._iter)
                break
            except UserError as err:
                raise worker_error_line(err) from None
            except StopIteration:
                self.epoch, self.pos, self._iter = self.epoch + 1, 0, None
        generator = torch.Generator().manual_seed(mixed_seed(self.seed, self.salt, self.epoch, self.pos)) if self.augment else None
        self.pos += 1
        return self.preprocess(images, generator, self.part, self.batch_size), labels.to(self.preprocess.device, non_blocking=True)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._iter = None


def iterate_split(images: ImageSet, batch_size: int, preprocess: Preprocess, num_workers: int,
                  seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Every image of a split once, un-augmented, in one fixed shuffled order (the last batch may be smaller).

    Shuffled because splits are often stored class by class, and a model that normalises with batch
    statistics cannot classify a batch holding a single class; seeded so that evaluations repeat.
    """
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).tolist()
    batches = [order[s : s + batch_size] for s in range(0, len(images), batch_size)]
    if world().active:  # each rank its share of every batch (the last, smaller one may leave a rank none)
        batches = [share for b in batches if (share := b[world().part(len(b))])]
    loader = iter(make_loader(images, batches, num_workers, preprocess.device, persistent=False))  # type: ignore[arg-type]
    while True:
        try:
            images_, labels = next(loader)
        except StopIteration:
            return
        except UserError as err:
            raise worker_error_line(err) from None
        yield preprocess(images_), labels.to(preprocess.device, non_blocking=True)
