"""The user's preprocessing (input size, padding, normalisation, a transform) reaches every batch the model sees."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.config import EnvConfig, EnvConfigError
from experiments.config import SearchConfig
from workloads.datasets import Preprocessing, PreprocessingError, load_dataset
from workloads.datasets.formats import write_idx


def _mnist(directory: Path, n_train: int = 40, n_test: int = 10) -> np.ndarray:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    train_x = rng.integers(1, 256, (n_train, 28, 28), dtype=np.uint8)  # no zero pixel: the border is the only zero
    for name, array in [
        ("train-images-idx3-ubyte.gz", train_x),
        ("train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_train, dtype=np.uint8)),
        ("t10k-images-idx3-ubyte.gz", rng.integers(1, 256, (n_test, 28, 28), dtype=np.uint8)),
        ("t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test, dtype=np.uint8)),
    ]:
        write_idx(directory / name, array)
    return train_x


def _load(tmp_path: Path, **fields) -> object:
    return load_dataset("mnist", tmp_path, val_size=5, seed=0, allow_download=False, preprocessing=Preprocessing(**fields))


def test_default_is_the_datasets_own_and_pad_zero_gives_the_files_images(tmp_path: Path) -> None:
    _mnist(tmp_path)
    own, raw = _load(tmp_path), _load(tmp_path, pad=0, normalize=False)
    assert own.train.images.shape[1:] == (1, 32, 32) and raw.train.images.shape[1:] == (1, 28, 28)
    assert torch.equal(own.train.images[:, :, 2:30, 2:30], raw.train.images)
    assert own.train.images[:, :, :2].sum() == 0  # the 2-pixel zero border of MNIST-style files
    # no normalisation: the model sees pixels in [0, 1], in every loader and in the calibration batch
    x, _ = next(iter(raw.loader("val", 5)))
    assert torch.equal(x, raw.val.images.float() / 255) and raw.calibration(4).max() <= 1.0
    assert own.calibration(4).min() < 0  # the dataset's own mean/std


def test_input_size_mean_and_std(tmp_path: Path) -> None:
    _mnist(tmp_path)
    data = _load(tmp_path, input_size=48, pad=4, mean=(0.5,), std=(0.25,))
    assert data.test.images.shape[1:] == (1, 48, 48) and data.test.images[:, :, :4].sum() == 0
    assert data.test.images[:, :, 4:44, 4:44].min() > 0  # the image resized to 40x40 inside the border
    x, _ = next(iter(data.loader("test", 10)))
    assert torch.allclose(x, (data.test.images.float() / 255 - 0.5) / 0.25)
    with pytest.raises(PreprocessingError, match=r"mean is \[0.5, 0.5\]; allowed: 1 number\(s\), one per channel"):
        _load(tmp_path, mean=(0.5, 0.5), std=(0.2, 0.2))


def test_a_transform_replaces_the_normalisation(tmp_path: Path, monkeypatch) -> None:
    _mnist(tmp_path)
    module = tmp_path / "userprep.py"
    module.write_text("def double(x):\n    return x * 2 - 1\n\ndef broken(x):\n    return x.numpy()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = _load(tmp_path, transform="userprep:double")
    x, _ = next(iter(data.loader("test", 10)))
    assert torch.allclose(x, data.test.images.float() / 255 * 2 - 1)
    with pytest.raises(PreprocessingError, match=r"transform is 'userprep:broken'; allowed: a callable returning a float tensor"):
        _load(tmp_path, transform="userprep:broken")
    with pytest.raises(PreprocessingError, match=r"transform is 'userprep:nothing'; allowed: an importable"):
        _load(tmp_path, transform="userprep:nothing")
    sys.modules.pop("userprep", None)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pad": -1}, r"field 'pad' is -1; allowed: an integer >= 0"),
        ({"input_size": 8, "pad": 4}, r"field 'pad' is 4; allowed: less than half of input_size \(8\)"),
        ({"mean": [0.5]}, r"field 'std' is None; allowed: given with the other of mean and std"),
        ({"mean": [0.5], "std": [0.0]}, r"field 'std' is \[0.0\]; allowed: numbers > 0"),
        ({"normalize": False, "transform": "a.b:c"}, r"field 'transform' is 'a.b:c'; allowed: null when mean/std or normalize"),
        ({"transform": "nocolon"}, r"field 'transform' is 'nocolon'; allowed: 'package.module:callable'"),
        ({"mean": "0.5", "std": [1]}, r"field 'mean' is '0.5'; allowed: a list of numbers"),
    ],
)
def test_bad_preprocessing_names_the_workload_field(fields, message) -> None:
    with pytest.raises(EnvConfigError, match="search config: field 'workload." + message.removeprefix("field '")):
        SearchConfig.from_dict({"workload": {"weights": "model.pt", **fields}})


def test_preprocessing_needs_the_users_own_weights() -> None:
    with pytest.raises(
        EnvConfigError, match=r"field 'workload.pad' is 0; allowed: the dataset's own \(null\) unless the model is your own"
    ):
        SearchConfig.from_dict({"workload": {"pad": 0}})
    config = SearchConfig.from_dict({"workload": {"weights": "model.pt", "mean": 0.5, "std": [0.25]}})
    assert config.env.preprocessing == Preprocessing(mean=(0.5,), std=(0.25,))
    assert config.to_dict()["workload"]["mean"] == [0.5]  # YAML-friendly
    assert SearchConfig.from_dict(config.to_dict()) == config
    assert config.env.context_key() != EnvConfig(weights="model.pt").context_key()
