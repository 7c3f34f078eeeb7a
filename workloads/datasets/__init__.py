"""Datasets: Fashion-MNIST (default), MNIST, CIFAR-10 and image folders, read from local files or downloaded."""

from __future__ import annotations

from pathlib import Path

import torch

from workloads.datasets.formats import DatasetFormatError
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


def read_raw(name: str, data_dir: str | Path | None = None, allow_download: bool = True) -> tuple[RawDataset, str]:
    """Read a dataset's files from the first place that has a valid copy; returns the data and that place.

    Order: ``data_dir`` (and its known sub-directories), system installs, the download cache
    (``$GALEN_HOME/datasets/<name>``), then a download from the official location.
    """
    spec = get_spec(name)
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
        raw = try_directory(directory, spec.read, attempt, label)
        if raw is not None:
            return raw, f"{label} {directory}"
    if spec.download is not None and allow_download:
        try:
            download(spec.download, cache)
            raw = try_directory(places[-1][1], spec.read, attempt, "downloaded copy in")
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
) -> DataSplits:
    """Load a registered dataset into seeded train/val splits plus the official test set."""
    spec = get_spec(name)
    raw, source = read_raw(name, data_dir, allow_download)
    images, labels = torch.from_numpy(raw.train_images.copy()), torch.from_numpy(raw.train_labels.copy())
    train, val = split_train_val(images, labels, val_size, seed)
    test = ImageSet(torch.from_numpy(raw.test_images.copy()), torch.from_numpy(raw.test_labels.copy()))
    if spec.mean is not None and spec.std is not None:
        mean, std = torch.tensor(spec.mean), torch.tensor(spec.std)
    else:  # image folders: statistics of the training split
        pixels = train.images.float().div(255.0).transpose(0, 1).reshape(train.images.shape[1], -1)
        mean, std = pixels.mean(1), pixels.std(1).clamp_min(1e-3)
    return DataSplits(spec, raw.classes, train, val, test, mean, std, source, seed)
