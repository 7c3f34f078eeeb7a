from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from workloads.datasets import DatasetNotFoundError, UnknownDatasetError, load_dataset
from workloads.datasets.formats import DatasetFormatError, read_cifar_batch, read_idx, write_cifar_batch, write_idx
from workloads.datasets.sources import Download, download
from workloads.datasets.splits import augment_batch


def test_fashion_mnist_from_system_install(fmnist) -> None:
    assert fmnist.source == "system install /usr/share/datasets/fashion-mnist"
    assert (len(fmnist.train), len(fmnist.val), len(fmnist.test)) == (55_000, 5_000, 10_000)
    assert fmnist.train.images.shape[1:] == (1, 32, 32) and fmnist.train.images.dtype == torch.uint8
    assert fmnist.classes[0] == "T-shirt/top" and fmnist.num_classes == 10
    # the official test set: 1,000 images per class
    assert torch.bincount(fmnist.test.labels).tolist() == [1000] * 10
    # 28x28 images padded with a 2-pixel zero border
    assert fmnist.test.images[:, :, :2].sum() == 0 and fmnist.test.images[:, :, 2:30, 2:30].float().mean() > 50


def _write_mnist_dir(directory: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    train_x, test_x = (
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
    )
    train_y, test_y = rng.integers(0, 10, n_train, dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8)
    for name, array in [
        ("train-images-idx3-ubyte.gz", train_x),
        ("train-labels-idx1-ubyte.gz", train_y),
        ("t10k-images-idx3-ubyte.gz", test_x),
        ("t10k-labels-idx1-ubyte.gz", test_y),
    ]:
        write_idx(directory / name, array)
    return train_x, train_y


def test_idx_header_written_by_hand_is_read(tmp_path: Path) -> None:
    # magic 0x00000803 (uint8, 3 dims), dims 2x2x3 big-endian, then 12 pixels: the format of the MNIST page
    raw = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(12))
    (tmp_path / "x-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    array = read_idx(tmp_path / "x-idx3-ubyte.gz")
    assert array.shape == (2, 2, 3) and array[1, 1, 2] == 11


def test_mnist_loader_on_small_official_files(tmp_path: Path) -> None:
    train_x, train_y = _write_mnist_dir(tmp_path / "MNIST" / "raw")
    data = load_dataset("mnist", tmp_path, val_size=10, seed=3, allow_download=False)
    assert data.source == f"--data-dir {tmp_path / 'MNIST' / 'raw'}"
    assert (len(data.train), len(data.val), len(data.test)) == (50, 10, 20)
    # every original training image is in exactly one of train/val, padded to 32x32
    together = torch.cat([data.train.images, data.val.images])[:, 0, 2:30, 2:30]
    assert sorted(map(bytes, together.numpy())) == sorted(map(bytes, train_x))
    assert data.spec.hflip is False  # digits are not flipped


def test_cifar10_loader_on_small_official_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images, labels = rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 8)
        write_cifar_batch(root / name, images, labels)
        batches.append((images, labels))
    data = load_dataset("cifar10", tmp_path, val_size=4, seed=0, allow_download=False)
    assert data.source == f"--data-dir {root}"
    assert (len(data.train), len(data.val), len(data.test)) == (36, 4, 8)
    assert data.in_channels == 3 and data.classes[3] == "cat"
    np.testing.assert_array_equal(data.test.images.numpy(), batches[-1][0])
    np.testing.assert_array_equal(data.test.labels.numpy(), batches[-1][1])


def test_cifar_batch_with_code_is_refused(tmp_path: Path) -> None:
    class Exploit:
        def __reduce__(self):
            return (eval, ("1",))  # not print: Ray's tqdm_ray replaces builtins.print once RLlib ran in this process

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}, protocol=2))
    with pytest.raises(
        DatasetFormatError,
        match=r"data_batch_1: not a CIFAR-10 python batch "
        r"\(refusing to load __builtin__.eval: CIFAR batches hold only numpy arrays\)",
    ):
        read_cifar_batch(tmp_path / "data_batch_1")


def test_imagefolder_loader(tmp_path: Path) -> None:
    from PIL import Image

    for split, count in (("train", 6), ("test", 2)):
        for label, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 48), color).save(tmp_path / split / label / f"{i}.png")
    data = load_dataset("imagefolder", tmp_path, val_size=2, seed=0)
    assert data.classes == ("cat", "dog") and data.train.images.shape[1:] == (3, 32, 32)
    assert len(data.train) + len(data.val) == 12 and len(data.test) == 4
    cat = data.test.images[data.test.labels == 0][0]
    assert cat[0].float().mean() == 255 and cat[2].float().mean() == 0
    # statistics computed from the training split: red channel of half the images is 1.0
    assert data.mean[0].item() == pytest.approx(len(data.train.labels[data.train.labels == 0]) / len(data.train), abs=1e-6)


def test_split_is_deterministic_and_seeded(tmp_path: Path) -> None:
    _write_mnist_dir(tmp_path)
    a, b = (load_dataset("mnist", tmp_path, val_size=15, seed=7, allow_download=False) for _ in range(2))
    c = load_dataset("mnist", tmp_path, val_size=15, seed=8, allow_download=False)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.labels, b.train.labels)
    assert not torch.equal(a.val.images, c.val.images)
    batches_a = [y for _, y in a.loader("train", 8, shuffle=True, augment=True, seed=1)]
    batches_b = [y for _, y in b.loader("train", 8, shuffle=True, augment=True, seed=1)]
    assert all(torch.equal(x, y) for x, y in zip(batches_a, batches_b, strict=True))
    assert torch.equal(a.calibration(16), b.calibration(16)) and a.calibration(16).shape == (16, 1, 32, 32)


def test_augmentation_crops_and_flips_exactly() -> None:
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    out = augment_batch(image.repeat(64, 1, 1, 1), padding=1, hflip=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (64, 1, 4, 4)
    # every output is the image shifted by at most one pixel (zeros shifted in), possibly mirrored
    candidates = set()
    padded = torch.nn.functional.pad(image, (1, 1, 1, 1))[0, 0]
    for dy in range(3):
        for dx in range(3):
            crop = padded[dy : dy + 4, dx : dx + 4]
            candidates |= {bytes(crop.numpy()), bytes(crop.flip(1).numpy())}
    assert {bytes(o[0].numpy()) for o in out} <= candidates
    assert len({bytes(o[0].numpy()) for o in out}) > 4  # actually random


def test_normalisation_uses_dataset_statistics(fmnist) -> None:
    x, _ = next(iter(fmnist.loader("test", 4)))
    raw = fmnist.test.images[:4].float() / 255
    torch.testing.assert_close(x, (raw - 0.2860) / 0.3530)


def test_unknown_dataset_lists_registered() -> None:
    with pytest.raises(
        UnknownDatasetError, match=r"unknown dataset 'svhn'; registered datasets: fashion-mnist, mnist, cifar10, imagefolder"
    ):
        load_dataset("svhn")


def test_missing_dataset_names_every_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALEN_HOME", str(tmp_path / "home"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", tmp_path / "nowhere", allow_download=False)
    message = str(info.value)
    assert message.startswith("dataset 'mnist' not found or unreadable. Looked at:\n")
    for place in (
        tmp_path / "nowhere",
        tmp_path / "nowhere" / "mnist",
        tmp_path / "nowhere" / "MNIST/raw",
        tmp_path / "home/datasets/mnist",
    ):
        assert f"{place}: no such directory" in message
    assert message.endswith("To fix: pass --data-dir with the four MNIST IDX .gz files, or run once with internet access")


def test_corrupted_dataset_is_reported_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALEN_HOME", str(tmp_path / "home"))
    _write_mnist_dir(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b truncated")
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"--data-dir .*: missing file train-labels-idx1-ubyte.gz"):
        load_dataset("mnist", tmp_path, allow_download=False)
    _write_mnist_dir(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(bytes([0, 0, 8, 3, 0, 0, 0, 5, 0, 0, 0, 28, 0, 0, 0, 28]) + b"short")
    )
    with pytest.raises(
        DatasetNotFoundError,
        match=r"corrupted: .*t10k-images-idx3-ubyte.gz: IDX header declares shape \(5, 28, 28\) "
        r"\(3936 bytes\) but the file has 21 bytes",
    ):
        load_dataset("mnist", tmp_path, allow_download=False)


@pytest.fixture
def local_server(tmp_path: Path):
    """A real HTTP server on loopback serving ``tmp_path / 'www'``."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_verifies_checksums(local_server, tmp_path: Path) -> None:
    root, url = local_server
    _write_mnist_dir(root)
    files = tuple((p.name, hashlib.md5(p.read_bytes()).hexdigest()) for p in sorted(root.iterdir()))
    download(Download((url,), files), tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [name for name, _ in files]
    bad = ((files[0][0], "0" * 32),)
    with pytest.raises(OSError, match=rf"{url}/{files[0][0]}: md5 [0-9a-f]{{32}} != official 0{{32}}"):
        download(Download((url,), bad), tmp_path / "cache2")
    assert list((tmp_path / "cache2").iterdir()) == []  # nothing half-written is left behind
