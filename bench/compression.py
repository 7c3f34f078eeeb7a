"""Benchmark: the compression engine on this machine (``make bench-compression``).

1. Time to apply a policy, export and quantize (prune + ONNX export + ORT int8 QDQ with the
   precision check), median over random policies, for ResNet-20 and ResNet-56.
2. ONNX Runtime latency at batch 1, one thread, of fp32 / int8 everywhere / 50% pruned /
   50% pruned + int8 artifacts, with MACs beside each. The four artifacts of a model are timed
   in interleaved rounds in one process, and ratios to fp32 are taken per round: absolute times
   drift with machine load, ratios measured this way do not.

3. Accuracy of the torch simulation vs the ONNX Runtime artifact on the 10,000 test images, for
   int8 everywhere and a mixed policy, on the ``galen demo`` checkpoint (ResNet-20, 2 epochs;
   trained first if the store lacks it).

Writes ``bench/results/compression.json`` and its section of ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.report import environment, write_section
from compression.export import evaluate_onnx, session
from compression.pipeline import compress
from compression.policy import FLOAT_BITS, CompressionPolicy, Precision, uniform_policy
from compression.structure import discover
from workloads.base import obtain_base_model
from workloads.datasets import load_dataset
from workloads.models import build_model
from workloads.training import Recipe, evaluate

RESULTS = Path(__file__).parent / "results" / "compression.json"
MODELS = ("resnet20", "resnet56")


def random_policy(structure, rng: random.Random) -> CompressionPolicy:
    keep = {g: rng.uniform(0.2, 1.0) for g in structure.group_names}
    precision = {n: Precision(8, 8) if rng.random() < 0.5 else Precision(FLOAT_BITS, FLOAT_BITS) for n in structure.layer_names}
    return CompressionPolicy(keep, precision)


def time_policies(name: str, calib: torch.Tensor, count: int, seed: int) -> dict:
    model, x = build_model(name, 1, 10).eval(), calib[:1]
    structure, rng = discover(model, x), random.Random(seed)
    totals, stages = [], {"prune": [], "export": [], "quantize": []}
    for _ in range(count):
        start = time.perf_counter()
        result = compress(model, random_policy(structure, rng), x, calib)
        totals.append(time.perf_counter() - start)
        for stage, seconds in result.seconds.items():
            stages[stage].append(seconds)
    return {
        "model": name,
        "policies": count,
        "median_s": statistics.median(totals),
        "max_s": max(totals),
        "stage_median_s": {k: statistics.median(v) for k, v in stages.items()},
    }


def time_artifacts(name: str, calib: torch.Tensor, rounds: int, runs: int) -> list[dict]:
    model, x = build_model(name, 1, 10).eval(), calib[:1]
    structure = discover(model, x)
    variants = {
        "fp32": CompressionPolicy(),
        "int8": uniform_policy(structure, weight_bits=8),
        "50% pruned": uniform_policy(structure, keep=0.5),
        "50% pruned + int8": uniform_policy(structure, keep=0.5, weight_bits=8),
    }
    built = {label: compress(model, policy, x, calib) for label, policy in variants.items()}
    sessions = {label: session(c.artifact.data, threads=1) for label, c in built.items()}
    feed = {"input": calib[:1].numpy().astype(np.float32)}
    samples: dict[str, list[float]] = {label: [] for label in built}
    round_medians: dict[str, list[float]] = {label: [] for label in built}
    for sess in sessions.values():  # warm-up
        for _ in range(20):
            sess.run(None, feed)
    for _ in range(rounds):
        for label, sess in sessions.items():
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                sess.run(None, feed)
                times.append((time.perf_counter() - start) * 1e3)
            samples[label] += times
            round_medians[label].append(statistics.median(times))
    rows = []
    for label, c in built.items():
        ratios = [m / f for m, f in zip(round_medians[label], round_medians["fp32"], strict=True)]
        q = np.percentile(samples[label], [10, 90])
        rows.append(
            {
                "model": name,
                "variant": label,
                "macs": c.costs.macs,
                "artifact_bytes": c.artifact.size_bytes,
                "median_ms": statistics.median(samples[label]),
                "p10_ms": float(q[0]),
                "p90_ms": float(q[1]),
                "ratio_to_fp32": statistics.median(ratios),
                "ratio_range": [min(ratios), max(ratios)],
                "int8_layers": sum(layer.runs == "int8" for layer in c.artifact.layers),
                "layers": len(c.artifact.layers),
            }
        )
    return rows


def accuracy_agreement() -> list[dict]:
    base = obtain_base_model("resnet20", "fashion-mnist", Recipe(epochs=2), 0)
    model, data, x = base.model, base.data, base.data.calibration(1)
    structure, calib, test = discover(model, x), data.calibration(256), data.loader("test", 500)
    float_acc = evaluate(model, test)[1]
    policies = {
        "int8 everywhere": uniform_policy(structure, weight_bits=8),
        "mixed (every other layer int8)": CompressionPolicy({}, {n: Precision(8, 8) for n in structure.layer_names[1::2]}),
    }
    rows = []
    for label, policy in policies.items():
        compressed = compress(model, policy, x, calib)
        sim = compressed.simulate(calib)
        sim_acc = evaluate(compressed.model, test)[1]
        sim.remove()
        rows.append(
            {
                "policy": label,
                "float_acc": float_acc,
                "simulated_acc": sim_acc,
                "onnx_acc": evaluate_onnx(compressed.artifact.data, test),
                "checkpoint": str(base.path),
            }
        )
    return rows


def section(env: dict, policy_rows: list[dict], latency_rows: list[dict], agreement: list[dict]) -> list[str]:
    lines = [
        "## Compression engine (issue 3)",
        "",
        f"{env['cpu']}, {env['cores']} cores, torch {env['torch']}, onnxruntime {env['onnxruntime']}, {env['date']}. "
        "Calibration: 256 Fashion-MNIST training images. Raw data: `bench/results/compression.json`. "
        "Reproduce: `make bench-compression`.",
        "",
        "Apply a random policy (keep ratios uniform in [0.2, 1], each layer int8 or fp32), export and quantize, "
        "including the read-back precision check (aim: ResNet-20 < 2 s, ResNet-56 < 5 s):",
        "",
        "| model | policies | median | max | prune | export | quantize + check |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in policy_rows:
        s = r["stage_median_s"]
        lines.append(
            f"| {r['model']} | {r['policies']} | {r['median_s']:.2f} s | {r['max_s']:.2f} s | {s['prune']:.2f} s | "
            f"{s['export']:.2f} s | {s['quantize']:.2f} s |"
        )
    lines += [
        "",
        "ONNX Runtime latency, batch 1, one thread (interleaved rounds; ratio = median over rounds of variant / fp32 in the same round):",
        "",
        "| model | variant | MACs | int8 layers | artifact | median | p10-p90 | ratio to fp32 (min-max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in latency_rows:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['macs'] / 1e6:.1f} M | {r['int8_layers']}/{r['layers']} | "
            f"{r['artifact_bytes'] / 1024:.0f} KiB | {r['median_ms']:.3f} ms | {r['p10_ms']:.3f}-{r['p90_ms']:.3f} ms | "
            f"{r['ratio_to_fp32']:.2f} ({r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}) |"
        )
    lines += [
        "",
        "Accuracy on the 10,000 test images, ResNet-20 after 2 epochs (the `galen demo` checkpoint): torch float, torch with "
        "simulated quantization, and the int8 ONNX artifact run by ONNX Runtime (aim: simulation and artifact within 0.5 points):",
        "",
        "| policy | float | simulated | ONNX Runtime | difference |",
        "|---|---|---|---|---|",
    ]
    for r in agreement:
        lines.append(
            f"| {r['policy']} | {100 * r['float_acc']:.2f}% | {100 * r['simulated_acc']:.2f}% | {100 * r['onnx_acc']:.2f}% | "
            f"{100 * abs(r['simulated_acc'] - r['onnx_acc']):.2f} points |"
        )
    lines += [
        "",
        "Reading: on networks this small, int8 gives about 2x (not the ~4x measured on ResNet-18), and 50% pruning + int8 is "
        "barely faster than 50% pruning alone for ResNet-20 (10 M MACs): per-operator overhead dominates. Latency does not "
        "follow MACs or bit widths, which is why the search measures it on the target.",
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", type=int, default=20, help="random policies timed per model")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved latency rounds")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per artifact per round")
    args = parser.parse_args(argv)
    import onnxruntime

    torch.set_num_threads(1)
    calib = load_dataset("fashion-mnist").calibration(256)
    policy_rows = [time_policies(name, calib, args.policies, seed=0) for name in MODELS]
    latency_rows = [row for name in MODELS for row in time_artifacts(name, calib, args.rounds, args.runs)]
    torch.set_num_threads(os.cpu_count() or 1)  # accuracy evaluation is not a latency measurement
    agreement = accuracy_agreement()
    env = environment(torch=torch.__version__, onnxruntime=onnxruntime.__version__)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"environment": env, "apply_export_quantize": policy_rows, "latency": latency_rows, "accuracy_agreement": agreement}, indent=2
        )
    )
    lines = section(env, policy_rows, latency_rows, agreement)
    write_section("compression", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
