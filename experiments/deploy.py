"""``galen export`` (the deployable ONNX + the policy JSON) and ``galen finetune`` (full fine-tune of a chosen policy).

Both take a run directory and an episode (default: the run's best policy), rebuild the policy's
model exactly as the episode did (same base model, pruning, batch-norm recalibration), and write
into ``<run_dir>/export`` or ``<run_dir>/finetune``: ``model.onnx`` (int8 kernels where the policy
quantizes), ``policy.json`` and a JSON with its test accuracy, latency on the target and size.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from compression.pipeline import finetune_and_build
from compression.policy import CompressionPolicy
from envs.jsonio import read_json, write_json
from experiments import rundir
from experiments.config import SearchConfig
from experiments.results import evaluate, make_env, pick_episode, simulated_note
from experiments.rundir import RunDir


def _open(run_dir: str, episode: int | None) -> tuple[SearchConfig, Any, dict[str, Any]]:
    path = Path(run_dir) / rundir.CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    config = SearchConfig.from_yaml(path)
    run = RunDir(run_dir)
    record = pick_episode(run.episodes(), read_json(run.path / rundir.BEST), episode)
    return config, make_env(config), record


def _write(out: Path, artifact: bytes, record: dict[str, Any], result: dict[str, Any], name: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(artifact)
    policy = CompressionPolicy.from_dict(record["policy"])
    (out / "policy.json").write_text(policy.to_json())
    result = {**result, "episode": record["episode"], "source": record["source"], "val_accuracy_in_search": record["accuracy"]}
    write_json(out / name, result)
    return result


def export(run_dir: str, episode: int | None = None, out: str | None = None) -> dict[str, Any]:
    torch.set_num_threads(1)
    _, env, record = _open(run_dir, episode)
    compressed = env.build_compressed(CompressionPolicy.from_dict(record["policy"]))
    result = evaluate(env, compressed, record.get("latency_ratio"))
    target = Path(out) if out else Path(run_dir) / "export"
    result = _write(target, compressed.artifact.data, record, result, "export.json")
    print(
        f"exported episode {record['episode']} to {target}/model.onnx: test accuracy {100 * result['test_accuracy']:.2f}%, "
        f"latency {result['latency_ms']:.3f} ms ({100 * result['latency_ratio']:.1f}% of baseline), "
        f"{result['artifact_bytes'] / 1024:.0f} KiB{simulated_note(result)}"
    )
    return result


def finetune_policy(
    run_dir: str, episode: int | None = None, epochs: int = 1, lr: float = 0.01, out: str | None = None, steps: int | None = None
) -> dict[str, Any]:
    """Fine-tune the chosen policy's pruned model on the training split, with simulated quantization.

    ``epochs`` with a cosine schedule, or, with ``steps``, only that many batches of 128 (a short
    recovery, as the benchmark's fixed fine-tune).
    """
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be a positive number of batches, got {steps}")
    if epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {epochs}")
    config, env, record = _open(run_dir, episode)
    ctx = env.ctx
    compressed = env.build_compressed(CompressionPolicy.from_dict(record["policy"]))
    before = evaluate(env, compressed, record.get("latency_ratio"))
    history = finetune_and_build(compressed, ctx.data, ctx.example, ctx.calibration, epochs=epochs, lr=lr, steps=steps, seed=config.seed)
    after = evaluate(env, compressed, record.get("latency_ratio"))
    length = {"steps": steps} if steps else {"epochs": epochs}
    result = {**after, "before": before, **length, "lr": lr, "train_seconds": history.seconds}
    target = Path(out) if out else Path(run_dir) / "finetune"
    result = _write(target, compressed.artifact.data, record, result, "finetune.json")
    how_long = f"{steps} steps" if steps else f"{epochs} epoch(s)"
    print(
        f"fine-tuned episode {record['episode']} for {how_long}: test accuracy {100 * before['test_accuracy']:.2f}% -> "
        f"{100 * after['test_accuracy']:.2f}%{simulated_note(after)}, latency {after['latency_ms']:.3f} ms; written to {target}"
    )
    return result


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory")
    parser.add_argument("--episode", type=int, default=None, help="episode number (default: the run's best policy)")
    parser.add_argument("--out", default=None, help="output directory (default: <run>/export or <run>/finetune)")


def build_export_parser(parser: argparse.ArgumentParser) -> None:
    add_common(parser)


def build_finetune_parser(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--epochs", type=int, default=1, help="training epochs, cosine schedule (default: 1)")
    parser.add_argument("--steps", type=int, default=None, help="only this many batches of 128 instead of whole epochs (a short recovery)")
    parser.add_argument("--lr", type=float, default=0.01, help="peak learning rate, cosine schedule (default: 0.01)")
