"""Readers for the standard on-disk formats, with numpy and no arbitrary unpickling.

- IDX (MNIST, Fashion-MNIST): http://yann.lecun.com/exdb/mnist/ ("FILE FORMATS" section),
  optionally gzip-compressed.
- CIFAR-10 "python version": pickled dicts of numpy arrays, written by Python 2's cPickle.
  They are read with an unpickler that may only rebuild numpy arrays and dtypes, so a crafted
  batch file cannot run code.
"""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import numpy as np


class DatasetFormatError(ValueError):
    """A file that exists but is not a valid file of the expected format."""


# IDX type codes (third byte of the magic number) to numpy dtypes, big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into an array of its declared shape."""
    data = path.read_bytes()  # a missing file raises FileNotFoundError: reported as missing, not corrupted
    try:
        raw = gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DatasetFormatError(f"{path}: not a readable gzip file ({error})") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetFormatError(f"{path}: bad IDX magic number {raw[:4].hex() or '(empty file)'}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(shape) != ndim or len(raw) != expected:
        raise DatasetFormatError(f"{path}: IDX header declares shape {shape} ({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip-compressed IDX file (used by tests and tools)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    path.write_bytes(gzip.compress(header + array.tobytes()))


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else executable."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR batches hold only numpy arrays")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch: images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    data = path.read_bytes()
    try:
        batch = _ArraysOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError) as error:
        raise DatasetFormatError(f"{path}: not a CIFAR-10 python batch ({error})") from error
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetFormatError(f"{path}: not a CIFAR-10 python batch (no b'data'/b'labels' entries)")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DatasetFormatError(f"{path}: data of shape {data.shape} with {len(labels)} labels, expected (N, 3072) and N labels")
    return data.reshape(-1, 3, 32, 32), labels


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write a CIFAR-10 python batch (protocol 2, as the official files) for tests and tools."""
    batch = {
        b"batch_label": b"written by galen",
        b"labels": [int(v) for v in labels],
        b"data": np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1),
        b"filenames": [f"{i}.png".encode() for i in range(len(images))],
    }
    with path.open("wb") as handle:
        pickle.dump(batch, handle, protocol=2)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def read_image_folder(
    root: Path, image_size: int, channels: int, classes: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read ``root/<class>/<image>`` into (N, C, S, S) uint8 images, labels, and the sorted class names."""
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - pillow comes with matplotlib
        raise DatasetFormatError("image folders need Pillow: pip install pillow") from error
    classes = classes or sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DatasetFormatError(f"{root}: no class sub-directories (expected {root}/<class>/<image>.png)")
    images, labels = [], []
    mode = "L" if channels == 1 else "RGB"
    for label, name in enumerate(classes):
        for file in sorted((root / name).glob("*")):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as image:
                    pixels = np.asarray(image.convert(mode).resize((image_size, image_size), Image.BILINEAR))
            except OSError as error:
                raise DatasetFormatError(f"{file}: unreadable image ({error})") from error
            images.append(pixels.reshape(image_size, image_size, channels).transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DatasetFormatError(f"{root}: no images with suffix {', '.join(IMAGE_SUFFIXES)}")
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes
