"""Getting a trained base model: from the checkpoint store, or trained now and stored."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workloads.checkpoints import CheckpointError, CheckpointKey, CheckpointStore
from workloads.datasets import DataSplits, load_dataset
from workloads.models import build_model
from workloads.training import Recipe, evaluate, train_model

log = logging.getLogger(__name__)


@dataclass
class BaseModel:
    """A trained model with its data splits and checkpoint metadata."""

    model: nn.Module
    data: DataSplits
    meta: dict[str, Any]
    path: Path
    reused: bool  # True when it came from the store, False when trained by this call


def obtain_base_model(
    model_name: str,
    dataset: str,
    recipe: Recipe,
    seed: int = 0,
    *,
    store: CheckpointStore | None = None,
    data_dir: str | Path | None = None,
    data: DataSplits | None = None,
    train: bool = True,
    progress: bool = True,
) -> BaseModel:
    """Return the stored model for (model, dataset, recipe, seed), training and storing it first if absent.

    With ``train=False`` a missing checkpoint is an error instead. A checkpoint that exists but
    fails its checks raises :class:`CheckpointError`; it is never retrained over.
    """
    store = store or CheckpointStore()
    data = data or load_dataset(dataset, data_dir, val_size=recipe.val_size, seed=seed)
    if len(data.val) != recipe.val_size:
        raise ValueError(f"data has a validation split of {len(data.val)} images but the recipe asks for {recipe.val_size}")
    if data.seed != seed:
        raise ValueError(f"data was split with seed {data.seed} but the model is requested with seed {seed}")
    key = CheckpointKey(model_name, dataset, recipe, seed)
    torch.manual_seed(seed)
    model = build_model(model_name, data.in_channels, data.num_classes)
    if store.exists(key):
        meta = store.load(key, model)
        log.info("reusing checkpoint %s (test accuracy %.4f)", store.path(key), meta["test_acc"])
        return BaseModel(model.eval(), data, meta, store.path(key), reused=True)
    if not train:
        raise CheckpointError(
            f"no checkpoint for {key.dirname} in {store.root}; train it with: galen train --model "
            f"{model_name} --dataset {dataset} --epochs {recipe.epochs} --seed {seed}"
        )
    result = train_model(model, data, recipe, seed, progress=progress, on_epoch=lambda r: log.info("epoch %d: %s", r["epoch"], _fmt(r)))
    test_loss, test_acc = evaluate(model, data.loader("test", 512))
    last = result.history[-1]
    meta = {
        "val_acc": last.get("val_acc"),
        "test_acc": test_acc,
        "test_loss": test_loss,
        "epochs": recipe.epochs,
        "history": result.history,
        "train_seconds": result.seconds,
        "in_channels": data.in_channels,
        "num_classes": data.num_classes,
        "data_source": data.source,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    path = store.save(key, model, meta)
    return BaseModel(model.eval(), data, store.load(key, model), path, reused=False)


def _fmt(record: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items() if k != "epoch")
