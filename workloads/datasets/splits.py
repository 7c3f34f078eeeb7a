"""In-memory splits, seeded batch loaders with augmentation, and the calibration subset.

Images stay uint8 in memory (Fashion-MNIST at 32x32 is 61 MB) and are normalised per batch.
Batches are cut from tensors directly rather than through a per-sample ``Dataset``: on two
cores the per-sample path spent more time in Python than in the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from workloads.datasets.preprocess import Preprocessing, apply_transform
from workloads.datasets.registry import DatasetSpec


@dataclass(frozen=True)
class ImageSet:
    """uint8 images (N, C, H, W) with int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[indices], self.labels[indices])


class BatchLoader:
    """Yields normalised float batches ``(x (B, C, H, W), y (B,))``; reshuffles every epoch from its own generator."""

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        mean: torch.Tensor,
        std: torch.Tensor,
        *,
        shuffle: bool = False,
        augment: DatasetSpec | None = None,
        seed: int = 0,
        drop_last: bool = False,
        transform: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.batch_size, self.shuffle, self.augment, self.drop_last = data, batch_size, shuffle, augment, drop_last
        self.transform = transform
        self.mean, self.std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        full, rest = divmod(len(self.data), self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.data)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for batch in range(len(self)):
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            images = self.data.images[index]
            if self.augment is not None:
                images = augment_batch(images, self.augment.crop_padding, self.augment.hflip, self.generator)
            yield self.normalize(images), self.data.labels[index]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the batch the model sees: scaled to [0, 1], then normalised, or the user's transform."""
        if self.transform is not None:
            return apply_transform(self.transform, images.float().div_(255.0))
        return (images.float().div_(255.0) - self.mean) / self.std


def augment_batch(images: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flips, for a uint8 batch (B, C, H, W)."""
    b, _, h, w = images.shape
    if padding > 0:
        padded = torch.nn.functional.pad(images, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (B, 1, 1, W)
        images = padded[torch.arange(b)[:, None, None, None], torch.arange(images.shape[1])[None, :, None, None], rows, cols]
    if hflip:
        flip = torch.rand(b, generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images


@dataclass
class DataSplits:
    """A dataset's train / validation / test splits with its normalisation.

    The validation split is a seeded random subset of the official training set; the test
    split is the official test set, untouched by any search.
    """

    spec: DatasetSpec
    classes: tuple[str, ...]
    train: ImageSet
    val: ImageSet
    test: ImageSet
    mean: torch.Tensor
    std: torch.Tensor
    source: str  # where the files were read from
    seed: int
    preprocessing: Preprocessing = Preprocessing()  # the user's input size, padding, normalisation (default: the dataset's own)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.spec.in_channels

    @property
    def input_side(self) -> int:
        """Side of the (square) images before any user transform."""
        return int(self.train.images.shape[-1] if len(self.train) else self.test.images.shape[-1])

    def split(self, name: str) -> ImageSet:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; choose one of train, val, test")
        return getattr(self, name)

    def loader(
        self,
        split: str,
        batch_size: int = 256,
        *,
        shuffle: bool = False,
        augment: bool = False,
        seed: int | None = None,
        limit: int | None = None,
        drop_last: bool = False,
    ) -> BatchLoader:
        """A batch loader over ``split``; ``limit`` keeps its first ``limit`` images (a fixed, seeded subset)."""
        data = self.split(split)
        if limit is not None and limit < len(data):
            data = data.subset(torch.arange(limit))
        return BatchLoader(
            data,
            batch_size,
            self.mean,
            self.std,
            shuffle=shuffle,
            augment=self.spec if augment else None,
            seed=self.seed if seed is None else seed,
            drop_last=drop_last,
            transform=self.preprocessing.transform,
        )

    def calibration(self, size: int = 512, seed: int | None = None) -> torch.Tensor:
        """A fixed, seeded subset of training images, normalised, without augmentation: (size, C, H, W)."""
        generator = torch.Generator().manual_seed(self.seed + 1 if seed is None else seed)
        index = torch.randperm(len(self.train), generator=generator)[: min(size, len(self.train))]
        return self.loader("train").normalize(self.train.images[index])


class SplitSizeError(ValueError):
    """A validation split that does not fit the training set (``val_size`` of ``available`` images)."""

    def __init__(self, val_size: int, available: int) -> None:
        self.val_size, self.available = val_size, available
        super().__init__(f"val_size must be in [0, {available}) for this dataset, got {val_size}")


def split_train_val(images: torch.Tensor, labels: torch.Tensor, val_size: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """Deterministic seeded split of the official training set into train and validation."""
    if not 0 <= val_size < len(labels):
        raise SplitSizeError(val_size, len(labels))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    train_idx, val_idx = order[val_size:].sort().values, order[:val_size].sort().values
    return ImageSet(images[train_idx], labels[train_idx]), ImageSet(images[val_idx], labels[val_idx])
