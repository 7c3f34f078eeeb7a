from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from workloads.base import obtain_base_model
from workloads.checkpoints import CheckpointError, CheckpointKey, CheckpointStore, load_into
from workloads.models import build_model
from workloads.training import Recipe, evaluate, lr_at, train_model

# 64 SGD steps: enough to leave chance far behind on Fashion-MNIST, ~4 s on 2 cores.
SMOKE = Recipe(epochs=1, batch_size=32, train_limit=2048, warmup_steps=4, lr=0.05, val_size=500)


def test_schedule_warms_up_then_decays_to_zero() -> None:
    recipe = Recipe(lr=0.1, warmup_steps=10)
    assert lr_at(0, 100, recipe) == pytest.approx(0.01)
    assert lr_at(10, 100, recipe) == pytest.approx(0.1)
    assert lr_at(55, 100, recipe) == pytest.approx(0.05)
    assert lr_at(100, 100, recipe) == pytest.approx(0.0)


def test_recipe_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match=r"recipe field 'epochs' is 0; allowed: an integer >= 1"):
        Recipe(epochs=0)


@pytest.fixture(scope="module")
def data():
    from workloads.datasets import load_dataset

    return load_dataset("fashion-mnist", val_size=SMOKE.val_size, seed=0, allow_download=False)


def test_short_training_lowers_loss_and_is_reproducible(data) -> None:
    batch = next(iter(data.loader("val", 500)))
    losses, states = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("resnet20", 1, 10)
        before, _ = evaluate(model, [batch])
        train_model(model, data, SMOKE, seed=0, progress=False)
        after, acc = evaluate(model, [batch])
        losses.append((before, after, acc))
        states.append(model.state_dict())
    before, after, acc = losses[0]
    assert after < 0.75 * before, losses
    assert acc > 0.4  # chance is 0.1
    assert losses[0] == losses[1]  # same seed, same numbers
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    store = CheckpointStore(tmp_path_factory.mktemp("store"))
    return store, obtain_base_model("resnet20", "fashion-mnist", SMOKE, 0, store=store, data=data, progress=False)


def test_checkpoint_round_trips_with_metadata(trained, data) -> None:
    store, base = trained
    assert base.reused is False
    meta = json.loads((base.path / "meta.json").read_text())
    assert meta["model"] == "resnet20" and meta["dataset"] == "fashion-mnist" and meta["seed"] == 0
    assert meta["recipe"]["train_limit"] == 2048 and meta["epochs"] == 1
    assert 0.4 < meta["test_acc"] <= 1 and meta["versions"]["torch"] == torch.__version__
    assert len(meta["sha256"]) == 64 and meta["created"].endswith("+00:00")
    again = obtain_base_model("resnet20", "fashion-mnist", SMOKE, 0, store=store, data=data, train=False)
    assert again.reused is True and again.path == base.path
    for key, value in base.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key])
    some = data.loader("test", 512, limit=1024)  # the reloaded model computes what the trained one does (10,000 took 12 s)
    assert evaluate(again.model, some) == evaluate(base.model, some)


def test_tampered_checkpoint_is_refused_not_retrained(trained, data, tmp_path: Path) -> None:
    store, base = trained
    copy = CheckpointStore(tmp_path)
    target = copy.path(CheckpointKey("resnet20", "fashion-mnist", SMOKE, 0))
    target.mkdir()
    weights = bytearray((base.path / "model.pt").read_bytes())
    weights[-100] ^= 0xFF
    (target / "model.pt").write_bytes(bytes(weights))
    (target / "meta.json").write_text((base.path / "meta.json").read_text())
    with pytest.raises(
        CheckpointError,
        match=r"is corrupted or was modified: sha256 of model.pt is [0-9a-f]{16}\.\.\., meta.json "
        r"records [0-9a-f]{16}\.\.\.; delete the directory to retrain it",
    ):
        obtain_base_model("resnet20", "fashion-mnist", SMOKE, 0, store=copy, data=data)
    assert (target / "model.pt").read_bytes() == bytes(weights)  # untouched


def test_mismatched_checkpoint_is_refused(trained, data, tmp_path: Path) -> None:
    _, base = trained
    with pytest.raises(CheckpointError, match=r"does not fit model CifarResNet: Error\(s\) in loading state_dict for CifarResNet"):
        load_into(base.path, build_model("resnet32", 1, 10))
    with pytest.raises(
        CheckpointError,
        match=r"no checkpoint for resnet20--fashion-mnist--[0-9a-f]{10}--seed0 in .*; train it with: "
        r"galen train --model resnet20 --dataset fashion-mnist --epochs 1 --seed 0",
    ):
        obtain_base_model("resnet20", "fashion-mnist", SMOKE, 0, store=CheckpointStore(tmp_path), data=data, train=False)


def test_store_never_overwrites(trained) -> None:
    store, base = trained
    with pytest.raises(CheckpointError, match=r"already exists; it is never overwritten"):
        store.save(CheckpointKey("resnet20", "fashion-mnist", SMOKE, 0), nn.Linear(1, 1), {})


def test_data_must_match_the_recipe_split(trained, data, fmnist) -> None:
    with pytest.raises(ValueError, match=r"data has a validation split of 5000 images but the recipe asks for 500"):
        obtain_base_model("resnet20", "fashion-mnist", SMOKE, 0, store=trained[0], data=fmnist)
    with pytest.raises(ValueError, match=r"data was split with seed 0 but the model is requested with seed 1"):
        obtain_base_model("resnet20", "fashion-mnist", SMOKE, 1, store=trained[0], data=data)


def test_weights_are_loaded_without_pickle_execution(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"weight": Evil()}, tmp_path / "model.pt")
    digest = hashlib.sha256((tmp_path / "model.pt").read_bytes()).hexdigest()
    (tmp_path / "meta.json").write_text(json.dumps({"sha256": digest}))
    with pytest.raises(CheckpointError, match=r"cannot read model.pt \(Weights only load failed"):
        load_into(tmp_path, nn.Linear(1, 1))
