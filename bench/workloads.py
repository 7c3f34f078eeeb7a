"""Benchmark: base-model training on Fashion-MNIST on this machine (``make bench-workloads``).

Trains ResNet-20 and ResNet-56 with the default recipe (5 epochs), each from scratch into a fresh
store, and writes test accuracy and seconds per epoch to ``bench/results/workloads.json`` and the table in ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from bench.report import environment, write_section
from workloads.base import obtain_base_model
from workloads.checkpoints import CheckpointStore
from workloads.datasets import load_dataset
from workloads.training import Recipe

RESULTS = Path(__file__).parent / "results" / "workloads.json"
RUNS = [("resnet20", 5), ("resnet56", 5)]


def run(runs: list[tuple[str, int]]) -> list[dict]:
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    with tempfile.TemporaryDirectory() as store_dir:
        store = CheckpointStore(store_dir)
        for model, epochs in runs:
            recipe = Recipe(epochs=epochs)
            data = load_dataset("fashion-mnist", val_size=recipe.val_size, seed=0)
            start = time.perf_counter()
            base = obtain_base_model(model, "fashion-mnist", recipe, 0, store=store, data=data, progress=False)
            meta = base.meta
            rows.append(
                {
                    "model": model,
                    "epochs": epochs,
                    "test_acc": meta["test_acc"],
                    "val_acc": meta["val_acc"],
                    "seconds_per_epoch": meta["train_seconds"] / epochs,
                    "wall_seconds": time.perf_counter() - start,
                    "parameters": meta["parameters"],
                    "history": meta["history"],
                }
            )
            print(
                f"{model} {epochs} epochs: test {100 * meta['test_acc']:.2f}%, {meta['train_seconds'] / epochs:.0f} s/epoch",
                flush=True,
            )
    return rows


def write(rows: list[dict]) -> None:
    env = environment(torch=torch.__version__, threads=str(torch.get_num_threads()))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"environment": env, "runs": rows}, indent=2))
    lines = [
        "## Base-model training (issue 2)",
        "",
        "Fashion-MNIST (55,000 train / 5,000 val / 10,000 test, padded to 32x32), SGD + Nesterov, lr 0.1 with 100 "
        "warm-up steps and cosine decay, batch 128, weight decay 5e-4, random crop + flip, seed 0, channels_last. "
        f"{env['cpu']}, {env['cores']} cores, torch {env['torch']} with {env['threads']} threads, {env['date']}. "
        "Raw data: `bench/results/workloads.json`. Reproduce: `make bench-workloads`.",
        "",
        "| model | params | epochs | test acc | val acc | s / epoch (train) | wall (incl. eval) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {r['epochs']} | {100 * r['test_acc']:.2f}% | {100 * r['val_acc']:.2f}% | "
            f"{r['seconds_per_epoch']:.0f} | {r['wall_seconds']:.0f} s |"
        )
    lines += ["", "Target (issue 2): ResNet-20 >= 91% test accuracy within 5 epochs."]
    write_section("workloads", lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", default=[f"{m}:{e}" for m, e in RUNS], help="model:epochs pairs")
    args = parser.parse_args(argv)
    write(run([(r.split(":")[0], int(r.split(":")[1])) for r in args.runs]))


if __name__ == "__main__":
    main()
