"""Shared fixtures. Every test run gets its own GALEN_HOME so no cache or checkpoint leaks between runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
TEST_MEASUREMENT = {"warmup": 10, "rounds": 11, "max_remeasures": 1}


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("galen_home")
    old = os.environ.get("GALEN_HOME")
    os.environ["GALEN_HOME"] = str(home)
    # local-cpu with a shorter protocol (real timings, 11 interleaved rounds instead of 21, one re-measure instead of
    # two): the suite measures hundreds of artifacts and ran 30 min on the CI's noisy machine; benchmarks keep the real one
    targets = tmp_path_factory.mktemp("targets")
    builtin = yaml.safe_load((Path(__file__).resolve().parents[1] / "hardware" / "targets" / "local-cpu.yaml").read_text())
    builtin["measurement"].update(TEST_MEASUREMENT)
    (targets / "local-cpu.yaml").write_text(yaml.safe_dump(builtin))
    os.environ["GALEN_TARGETS"] = str(targets)
    os.environ.setdefault("WANDB_MODE", "offline")
    torch.set_num_threads(2)
    yield home
    os.environ.pop("GALEN_TARGETS", None)
    if old is None:
        os.environ.pop("GALEN_HOME", None)
    else:
        os.environ["GALEN_HOME"] = old


@pytest.fixture(scope="session")
def fmnist():
    """Fashion-MNIST from the real system install (make setup installs Debian's dataset-fashion-mnist)."""
    from workloads.datasets import load_dataset

    assert FMNIST_SYSTEM_DIR.is_dir(), "Fashion-MNIST system install missing: apt-get install dataset-fashion-mnist (make setup does)"
    return load_dataset("fashion-mnist", val_size=5000, seed=0, allow_download=False)


@pytest.fixture(scope="session")
def trained_resnet20(fmnist):
    """ResNet-20 trained for one epoch on 25,000 Fashion-MNIST images (55 s on 2 cores, 82.8% test accuracy; the full
    55,000 took 150 s of the suite's time), stored in the test GALEN_HOME."""
    from workloads.base import obtain_base_model
    from workloads.training import Recipe

    return obtain_base_model("resnet20", "fashion-mnist", Recipe(epochs=1, train_limit=25_000), 0, data=fmnist, progress=False)
