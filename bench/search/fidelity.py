"""Does the per-episode accuracy rank policies like their accuracy after a real fine-tune? (Kendall tau)

Random policies are played through the joint env with the action wall at ``--budget`` (so every one
is within budget by construction). For each, the per-episode proxy is computed as an episode does
(physical pruning, batch-norm re-estimated on ``bn_batches`` x 64 training images, int8 artifact,
accuracy on ``val_size`` validation images), optionally with ``--distill-steps`` of distillation from
the uncompressed model, and the benchmark's fixed fine-tune (``--finetune-steps`` SGD steps,
batch 128, lr 0.01, simulated quantization) gives the test accuracy the proxy should predict.

Rows are appended to ``bench/results/fidelity-<model>.jsonl`` as they finish (resumable); the
summary (tau per proxy, seconds per episode) goes to ``bench/results/fidelity.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.search.fidelity", description=__doc__)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--base-epochs", type=int, default=5)
    p.add_argument("--checkpoint", default=None, help="a checkpoint directory (default: the store's entry)")
    p.add_argument(
        "--budget",
        default="0.5",
        help="latency budget of the wall (fraction of the uncompressed latency), or a range LO:HI from which each policy "
        "draws its own (policies that differ more than one budget's do)",
    )
    p.add_argument("--round-to", type=int, default=8, help="env.round_to: kept channels in multiples of this (the search benchmark's: 16)")
    p.add_argument("--policies", type=int, default=30)
    p.add_argument("--distill-steps", default="0,50", help="proxy variants: distillation steps after BN re-estimation")
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def kendall_tau(x: list[float], y: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(x, y).statistic)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    from agents.baselines import play
    from compression.policy import CompressionPolicy
    from envs import JointEnv
    from experiments.results import fixed_finetune
    from hardware.protocol import cpu_model

    args = parse_args(argv)
    torch.set_num_threads(2)
    config = {"model": args.model, "base_epochs": args.base_epochs, "checkpoint": args.checkpoint}
    low, _, high = args.budget.partition(":")
    budget_range = (float(low), float(high or low))
    config |= {"target_ratio": budget_range[1], "round_to": args.round_to}
    env = JointEnv(config)
    variants = [int(v) for v in args.distill_steps.split(",")]
    rows_path = RESULTS / f"fidelity-{args.model}.jsonl"
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    # rows of another setting stay in the file; the summary is of this one (rows before round_to was recorded: 8)
    rows = [
        r for r in rows
        if r.get("budget_range", r["budget"]) == _label(budget_range)
        and r["finetune_steps"] == args.finetune_steps and r.get("round_to", 8) == args.round_to
    ]  # fmt: skip
    for i in range(len(rows), args.policies):
        rng = np.random.default_rng([args.seed, i])
        budget = float(rng.uniform(*budget_range)) if budget_range[0] != budget_range[1] else budget_range[0]
        env = JointEnv({**config, "target_ratio": budget})  # the same shared context: model, data, predictor
        actions = rng.uniform(0, 1, (len(env.units), 2)).astype(np.float32)
        started = time.perf_counter()
        info = play(env, actions)
        proxies = {"0": info["accuracy"]}
        seconds = {"0": time.perf_counter() - started - info["seconds"]["latency"]}
        policy = CompressionPolicy.from_dict(info["policy"])
        for steps in variants:
            if steps == 0:
                continue
            started = time.perf_counter()
            artifact = env.build_compressed(policy, finetune_steps=steps).artifact
            proxies[str(steps)] = env.ctx.accuracy(artifact.data)
            seconds[str(steps)] = time.perf_counter() - started
        after, ft_seconds = fixed_finetune(env, policy, args.finetune_steps)
        row = {
            "index": i, "budget": budget, "budget_range": _label(budget_range), "round_to": args.round_to,
            "finetune_steps": args.finetune_steps, "policy": info["policy"],
            "latency_ratio": info["latency_ratio"], "predicted_ratio": info["predicted_ratio"], "within_budget": info["within_budget"],
            "proxy": proxies, "proxy_seconds": seconds, "test_after_finetune": after, "finetune_seconds": ft_seconds, "cpu": cpu_model(),
        }  # fmt: skip
        rows.append(row)
        with open(rows_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(f"policy {i}: proxy {proxies} after fine-tune {after:.4f} ({ft_seconds:.0f} s)", flush=True)
    summary = summarize(rows, args)
    path = RESULTS / "fidelity.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    previous = data.get(args.model) or {}
    others = previous.pop("other_settings", [])
    if previous and (previous.get("budget"), previous.get("round_to")) != (summary["budget"], summary["round_to"]):
        others = [o for o in others if (o.get("budget"), o.get("round_to")) != (previous.get("budget"), previous.get("round_to"))]
        others.append(previous)  # the summary of another setting is kept beside, not lost
    others = [o for o in others if (o.get("budget"), o.get("round_to")) != (summary["budget"], summary["round_to"])]
    data[args.model] = {**summary, **({"other_settings": others} if others else {})}
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return summary


def _label(budget_range: tuple[float, float]) -> float | str:
    """A row's setting: the budget (a float, as rows before ranges recorded it) or ``"LO:HI"``."""
    low, high = budget_range
    return low if low == high else f"{low:g}:{high:g}"


def summarize(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    after = [r["test_after_finetune"] for r in rows]
    variants = sorted({k for r in rows for k in r["proxy"]}, key=int)
    return {
        "policies": len(rows),
        "budget": args.budget if ":" in args.budget else float(args.budget),
        "round_to": args.round_to,
        "finetune_steps": args.finetune_steps,
        "cpu": rows[0]["cpu"] if rows else None,
        "within_budget": sum(r["within_budget"] for r in rows),
        # a variant measured on fewer rows (a later resume with other --distill-steps) is scored on the rows that have it
        "kendall_tau": {
            f"distill_{v}": kendall_tau(
                [r["proxy"][v] for r in rows if v in r["proxy"]], [r["test_after_finetune"] for r in rows if v in r["proxy"]]
            )
            for v in variants
        },
        "policies_per_variant": {f"distill_{v}": sum(v in r["proxy"] for r in rows) for v in variants},
        "seconds_per_episode": {
            f"distill_{v}": float(np.median([r["proxy_seconds"][v] for r in rows if v in r["proxy"]])) for v in variants
        },
        "test_after_finetune": {"min": min(after), "max": max(after)} if after else None,
    }


if __name__ == "__main__":
    main()
