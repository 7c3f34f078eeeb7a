"""Train (or fetch from the store) a base model and evaluate it: ``galen train`` / ``python -m experiments.train``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch

from experiments.options import add_options, from_args, option
from workloads.base import obtain_base_model
from workloads.checkpoints import CheckpointStore
from workloads.datasets import dataset_names
from workloads.datasets.splits import SplitSizeError
from workloads.training import Recipe, RecipeError

log = logging.getLogger("galen.train")


@dataclass
class TrainConfig:
    """Which base model to train, on what, and how."""

    model: str = option("resnet20", "registered model, tv:<torchvision name>, or package.module:factory")
    dataset: str = option("fashion-mnist", "dataset", choices=dataset_names())
    data_dir: str | None = option(None, "directory holding the dataset files (tried before system installs and downloads)")
    epochs: int = option(5, "training epochs")
    batch_size: int = option(128, "images per SGD step")
    lr: float = option(0.1, "peak learning rate (cosine schedule to 0)")
    weight_decay: float = option(5e-4, "weight decay")
    val_size: int = option(5000, "training images held out for validation")
    train_limit: int | None = option(None, "train on the first N training images only (smoke runs)")
    seed: int = option(0, "seed for initialisation, split, shuffling and augmentation")
    threads: int = option(0, "torch intra-op threads; 0: one per core")
    store: str | None = option(None, "checkpoint store directory (default: $GALEN_HOME/checkpoints)")
    progress: bool = option(True, "show progress bars")

    def recipe(self) -> Recipe:
        return Recipe(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            val_size=self.val_size,
            train_limit=self.train_limit,
        )


def main(config: TrainConfig) -> dict[str, Any]:
    """Train (and evaluate) or reuse the base model; print and return a summary."""
    try:
        recipe = config.recipe()
    except RecipeError as error:  # the flag the user wrote, not the recipe's field
        raise ValueError(f"galen train: --{error.field.replace('_', '-')} is {error.value!r}; allowed: {error.allowed}") from None
    if config.threads < 0:
        raise ValueError(f"galen train: --threads is {config.threads}; allowed: an integer >= 0 (0: one per core)")
    # Deliberate: torch's default may over-subscribe a shared box; one thread per core measured fastest here.
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    try:
        base = obtain_base_model(
            config.model,
            config.dataset,
            recipe,
            config.seed,
            store=CheckpointStore(config.store),
            data_dir=config.data_dir,
            progress=config.progress,
        )
    except SplitSizeError as error:
        raise ValueError(
            f"galen train: --val-size is {error.val_size}; allowed: an integer in [0, {error.available}) for {config.dataset}"
        ) from None
    # The store's metadata holds the accuracies measured right after training; its weights are hash-verified.
    meta = base.meta
    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "checkpoint": str(base.path),
        "reused": base.reused,
        "val_acc": meta["val_acc"],
        "test_acc": meta["test_acc"],
        "test_loss": meta["test_loss"],
        "parameters": meta["parameters"],
        "train_seconds": base.meta["train_seconds"],
        "data_source": base.data.source,
    }
    print(format_summary(summary))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    val = "n/a (no validation split)" if summary["val_acc"] is None else f"{100 * summary['val_acc']:.2f}%"
    rows = [
        ("model", summary["model"]),
        ("dataset", f"{summary['dataset']} ({summary['data_source']})"),
        ("parameters", f"{summary['parameters']:,}"),
        ("validation accuracy", val),
        ("test accuracy", f"{100 * summary['test_acc']:.2f}%"),
        ("training time", f"{summary['train_seconds']:.0f} s" + (" (reused from the store)" if summary["reused"] else "")),
        ("checkpoint", summary["checkpoint"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def build_parser(parser: argparse.ArgumentParser | None = None, defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="galen train", description=__doc__)
    add_options(parser, TrainConfig, defaults)
    return parser


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(from_args(TrainConfig, args))
    return 0


if __name__ == "__main__":
    sys.exit(run())
