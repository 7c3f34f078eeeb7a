"""The dataset registry: what each dataset is, where its files may be, and how to read them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workloads.datasets.formats import DatasetFormatError, read_cifar_batch, read_idx, read_image_folder
from workloads.datasets.sources import Download


@dataclass(frozen=True)
class RawDataset:
    """A dataset as read from disk: uint8 images (N, C, H, W) and int64 labels, train and test."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]


@dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset."""

    name: str
    in_channels: int
    image_size: int  # side of the square images the models see by default (the files' side + 2 x pad)
    pad: int  # zero border added around the files' images by default (MNIST-style 28x28 -> 32x32)
    mean: tuple[float, ...] | None  # per channel, in [0, 1] units; None: computed from the training split
    std: tuple[float, ...] | None
    hflip: bool  # horizontal flips preserve the label (not for digits)
    crop_padding: int  # random-crop augmentation: pad by this many pixels, crop back
    read: Callable[[Path], RawDataset]
    subdirs: tuple[str, ...]  # where inside a --data-dir the files may sit
    system_dirs: tuple[Path, ...]  # system installs (Debian packages)
    download: Download | None
    install_hint: str


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _read_idx_dataset(classes: tuple[str, ...]) -> Callable[[Path], RawDataset]:
    def read(directory: Path) -> RawDataset:
        tr_x, tr_y, te_x, te_y = (read_idx(directory / name) for name in _IDX_FILES)
        if len(tr_x) != len(tr_y) or len(te_x) != len(te_y):
            raise DatasetFormatError(
                f"{directory}: {len(tr_x)} training images but {len(tr_y)} labels, or {len(te_x)} test images but {len(te_y)} labels"
            )
        # 28x28 as in the files; load_dataset adds the spec's 2-pixel zero border by default (32x32, as LeNet-5
        # did, so that every CIFAR-style model, with five 2x poolings in VGG, runs unchanged)
        return RawDataset(tr_x[:, None], tr_y.astype(np.int64), te_x[:, None], te_y.astype(np.int64), classes)

    return read


def _read_cifar10(directory: Path) -> RawDataset:
    batches = [read_cifar_batch(directory / f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = read_cifar_batch(directory / "test_batch")
    return RawDataset(np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]), test_x, test_y, CIFAR10_CLASSES)


def _read_image_folder(directory: Path, size: int = 32) -> RawDataset:
    """``<dir>/train/<class>/*`` and ``<dir>/test/<class>/*`` (or ``val/``), RGB, resized to ``size`` x ``size``."""
    test_dir = next((directory / n for n in ("test", "val") if (directory / n).is_dir()), None)
    if not (directory / "train").is_dir() or test_dir is None:
        raise FileNotFoundError(2, "expected train/ and test/ (or val/) sub-directories", str(directory / "train"))
    train_x, train_y, classes = read_image_folder(directory / "train", size, 3)
    test_x, test_y, _ = read_image_folder(test_dir, size, 3, classes)
    return RawDataset(train_x, train_y, test_x, test_y, tuple(classes))


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        in_channels=1,
        image_size=32,
        pad=2,
        mean=(0.2860,),  # Xiao et al. 2017 training-set statistics (28x28)
        std=(0.3530,),
        hflip=True,
        crop_padding=2,
        read=_read_idx_dataset(FASHION_CLASSES),
        subdirs=("", "fashion-mnist", "FashionMNIST/raw", "fashion"),
        system_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
        download=Download(
            base_urls=(
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
                "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion",
            ),
            files=(
                ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
                ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
                ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
            ),
        ),
        install_hint="on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist; or pass --data-dir with the four IDX .gz files",
    ),
    "mnist": DatasetSpec(
        name="mnist",
        in_channels=1,
        image_size=32,
        pad=2,
        mean=(0.1307,),
        std=(0.3081,),
        hflip=False,
        crop_padding=2,
        read=_read_idx_dataset(tuple(str(d) for d in range(10))),
        subdirs=("", "mnist", "MNIST/raw"),
        system_dirs=(),
        download=Download(
            base_urls=("https://ossci-datasets.s3.amazonaws.com/mnist", "https://storage.googleapis.com/cvdf-datasets/mnist"),
            files=(
                ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
                ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
                ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
            ),
        ),
        install_hint="pass --data-dir with the four MNIST IDX .gz files, or run once with internet access",
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        in_channels=3,
        image_size=32,
        pad=0,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        hflip=True,
        crop_padding=4,
        read=_read_cifar10,
        subdirs=("", "cifar-10-batches-py"),
        system_dirs=(),
        download=Download(
            base_urls=("https://www.cs.toronto.edu/~kriz",),
            files=(("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
            extract_tar=True,
        ),
        install_hint="pass --data-dir with the extracted cifar-10-batches-py directory, or run once with internet access",
    ),
    "imagefolder": DatasetSpec(
        name="imagefolder",
        in_channels=3,
        image_size=32,
        pad=0,
        mean=None,
        std=None,
        hflip=True,
        crop_padding=4,
        read=_read_image_folder,
        subdirs=("",),
        system_dirs=(),
        download=None,
        install_hint="pass --data-dir DIR with DIR/train/<class>/*.png and DIR/test/<class>/*.png",
    ),
}


def dataset_names() -> list[str]:
    return list(DATASETS)
