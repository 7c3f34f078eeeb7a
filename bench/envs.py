"""Benchmark: one episode of the joint environment (``make bench-envs``).

For ResNet-20 and ResNet-56 on Fashion-MNIST (the store's base models: ResNet-20 of ``galen demo``,
2 epochs, and a 1-epoch ResNet-56, trained first when absent; latency does not depend on epochs),
target ``local-cpu``: the wall time of an episode of random actions with a cold latency cache (a
policy never measured: its latency is timed) and a warm one (the same policies again: their
latency comes from the cache), the env's build time (base model, reference artifact and its
accuracy) and first reset (sensitivity analysis, cached on disk afterwards), and the memory of the
process per env (resident set size growth after building an env, then after a second env of
the same settings). Aim: median <= 3 s per warm episode for ResNet-20.

Writes ``bench/results/envs.json`` and its section of ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.report import environment, write_section
from envs import JointEnv

RESULTS = Path(__file__).parent / "results" / "envs.json"


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def episode(env: JointEnv, actions: np.ndarray) -> tuple[float, dict]:
    start = time.perf_counter()
    env.reset()
    for action in actions:
        _, _, terminated, _, info = env.step(action)
    assert terminated
    return time.perf_counter() - start, info


def bench_model(spec: str, episodes: int, seed: int) -> dict:
    model, _, epochs = spec.partition(":")
    before = rss_mb()
    start = time.perf_counter()
    config = {"model": model, "base_epochs": int(epochs or 5), "train_base": True, "val_size": 1000, "seed": seed}
    env = JointEnv(config)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    env.reset()
    first_reset_s = time.perf_counter() - start
    after_one = rss_mb()
    JointEnv(config)  # a second env of the same settings shares the context
    after_two = rss_mb()
    rng = np.random.default_rng(seed)
    action_sets = [rng.uniform(0.3, 1.0, (len(env.units), 3)).astype(np.float32) for _ in range(episodes)]
    cold = [episode(env, actions) for actions in action_sets]
    warm = [episode(env, actions) for actions in action_sets]
    assert all(info["latency_cached"] for _, info in warm)
    return {
        "model": model,
        "base_epochs": int(epochs or 5),
        "units": len(env.units),
        "base_test_accuracy": env.ctx.meta.get("test_acc"),
        "build_s": build_s,
        "first_reset_s": first_reset_s,
        "cold_s": [s for s, _ in cold],
        "warm_s": [s for s, _ in warm],
        "cold_median_s": statistics.median(s for s, _ in cold),
        "warm_median_s": statistics.median(s for s, _ in warm),
        "stage_s": {k: statistics.median(info["seconds"][k] for _, info in cold) for k in ("build", "latency")},
        "rss_first_env_mb": after_one - before,
        "rss_second_env_mb": after_two - after_one,
        "accuracy": [info["accuracy"] for _, info in cold],
        "latency_ratio": [info["latency_ratio"] for _, info in cold],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["resnet20:2", "resnet56:1"], help="model:base-epochs (store entries)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [bench_model(model, args.episodes, args.seed) for model in args.models]
    results = {"environment": environment(torch=torch.__version__), "models": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    env = results["environment"]
    bases = ", ".join(f"{r['model']} {r['base_epochs']} epochs" for r in rows)
    lines = [
        "## Environments (issue 5)",
        "",
        f"{env['cpu']}, {env['cores']} cores, torch {env['torch']} with 2 threads, {env['date']}. Joint env, Fashion-MNIST, "
        f"base models from the store ({bases}), "
        "target `local-cpu`, 1,000 validation images per episode, batch-norm recalibration on 8 x 64 "
        f"images, no fine-tuning; {args.episodes} episodes of random actions in [0.3, 1]. Cold: the policy's latency is timed; "
        "warm: the same policies again, latency from the cache. Raw data: `bench/results/envs.json`. Reproduce: `make bench-envs`.",
        "",
        "| model | steps | env build | first reset (sensitivity) | episode cold (median) | episode warm (median) "
        "| memory, first env | memory, second env |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['units']} | {r['build_s']:.1f} s | {r['first_reset_s']:.1f} s | {r['cold_median_s']:.2f} s "
            f"| {r['warm_median_s']:.2f} s | {r['rss_first_env_mb']:.0f} MB | {r['rss_second_env_mb']:.0f} MB |"
        )
    lines += ["", "Aim: median <= 3 s per warm episode for ResNet-20."]
    write_section("envs", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
