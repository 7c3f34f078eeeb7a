"""Datasets: Fashion-MNIST (default), MNIST, CIFAR-10 and image folders, read from local files or downloaded."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from workloads.datasets.formats import DatasetFormatError
from workloads.datasets.preprocess import Preprocessing, PreprocessingError, geometry, resize_and_pad, statistics
from workloads.datasets.registry import DATASETS, DatasetSpec, RawDataset, dataset_names
from workloads.datasets.sources import Attempt, DatasetNotFoundError, download, galen_home, try_directory
from workloads.datasets.splits import BatchLoader, DataSplits, ImageSet, split_train_val

__all__ = [
    "DATASETS",
    "BatchLoader",
    "DataSplits",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "ImageSet",
    "Preprocessing",
    "PreprocessingError",
    "UnknownDatasetError",
    "dataset_names",
    "get_spec",
    "load_dataset",
    "read_raw",
]


class UnknownDatasetError(ValueError):
    """A dataset name that is not registered."""


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UnknownDatasetError(f"unknown dataset {name!r}; registered datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def read_raw(name: str, data_dir: str | Path | None = None, allow_download: bool = True, size: int | None = None) -> tuple[RawDataset, str]:
    """Read a dataset's files from the first place that has a valid copy; returns the data and that place.

    Order: ``data_dir`` (and its known sub-directories), system installs, the download cache
    (``$GALEN_HOME/datasets/<name>``), then a download from the official location. ``size``: the side
    image folders are read at (files of a fixed size are read as they are).
    """
    spec = get_spec(name)
    read = spec.read if size is None or name != "imagefolder" else functools.partial(spec.read, size=size)
    attempt: Attempt = Attempt()
    places: list[tuple[str, Path]] = []
    if data_dir is not None:
        places += [("--data-dir", Path(data_dir).expanduser() / sub) for sub in spec.subdirs]
    elif spec.download is None:
        attempt.reject("--data-dir", f"not given; the {name} dataset is read only from a directory you name")
    places += [("system install", directory) for directory in spec.system_dirs]
    cache = galen_home() / "datasets" / name
    if spec.download is not None:
        places.append(("download cache", cache / ("cifar-10-batches-py" if spec.download.extract_tar else "")))
    for label, directory in places:
        raw = try_directory(directory, read, attempt, label)
        if raw is not None:
            return raw, f"{label} {directory}"
    if spec.download is not None and allow_download:
        try:
            download(spec.download, cache)
            raw = try_directory(places[-1][1], read, attempt, "downloaded copy in")
            if raw is not None:
                return raw, f"downloaded to {places[-1][1]}"
        except OSError as error:
            attempt.reject(f"download from {spec.download.base_urls[0]}", str(error))
    raise DatasetNotFoundError(f"dataset {name!r} not found or unreadable. Looked at:\n{attempt.report()}\nTo fix: {spec.install_hint}")


def load_dataset(
    name: str = "fashion-mnist",
    data_dir: str | Path | None = None,
    *,
    val_size: int = 5000,
    seed: int = 0,
    allow_download: bool = True,
    preprocessing: Preprocessing | None = None,
) -> DataSplits:
    """Load a registered dataset into seeded train/val splits plus the official test set.

    ``preprocessing`` (the user's input size, padding, normalisation or transform; default: the
    dataset's own) is applied here, once, so that every consumer of the splits sees the same inputs.
    """
    spec = get_spec(name)
    pre = preprocessing or Preprocessing()
    side, pad = geometry(spec.image_size - 2 * spec.pad, spec.pad, pre)
    raw, source = read_raw(name, data_dir, allow_download, size=side)
    images, labels = torch.from_numpy(raw.train_images.copy()), torch.from_numpy(raw.train_labels.copy())
    images = resize_and_pad(images, side, pad)
    train, val = split_train_val(images, labels, val_size, seed)
    test = ImageSet(resize_and_pad(torch.from_numpy(raw.test_images.copy()), side, pad), torch.from_numpy(raw.test_labels.copy()))
    if spec.mean is not None and spec.std is not None:
        mean, std = torch.tensor(spec.mean), torch.tensor(spec.std)
    else:  # image folders: statistics of the training split
        pixels = train.images.float().div(255.0).transpose(0, 1).reshape(train.images.shape[1], -1)
        mean, std = pixels.mean(1), pixels.std(1).clamp_min(1e-3)
    mean, std = statistics(pre, train.images.shape[1], mean, std)
    splits = DataSplits(spec, raw.classes, train, val, test, mean, std, source, seed, pre)
    if pre.transform is not None and len(train):
        splits.calibration(2)  # a transform that cannot be loaded or returns the wrong thing fails here, not mid-search
    return splits
