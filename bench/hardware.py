"""Benchmark: the hardware layer on this machine (``make bench-hardware``).

1. Repeatability: the same artifact (ResNet-20 50% pruned, against the unpruned reference)
   measured 5 separate times (new sessions each time, cache bypassed): spread of the 5 medians and
   of the 5 ratios, (max - min) / median. Aim: <= 3% at batch 1.
2. Throughput: measurements per minute on one device (the target's full protocol, candidate and
   reference interleaved), in-process and through a latency actor on a local Ray cluster; with the
   time to build each artifact beside it.
3. Predictor: the per-layer table filled for 62 random policies, calibrated on 12 of them
   (unpruned fp32 as the anchor, int8 everywhere, 10 random) and evaluated on the other 50: MAPE of the predicted
   median latency and of the predicted ratio to the unpruned model, for ResNet-20 and ResNet-56.
   Aim: MAPE <= 10%.

Random policies: keep ratios uniform in [0.2, 1], each layer int8 or fp32 with probability 1/2;
calibration images for int8 are random (latency does not depend on them). Writes
``bench/results/hardware.json`` and its section of ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

from bench.compression import random_policy
from bench.report import environment, write_section
from compression.pipeline import compress
from compression.plan import layer_specs
from compression.policy import CompressionPolicy, Precision, uniform_policy
from compression.structure import discover
from hardware.cache import LatencyCache
from hardware.client import LatencyClient
from hardware.predictor import LatencyPredictor, mape
from hardware.targets import get_target, parse_target
from workloads.models import build_model

RESULTS = Path(__file__).parent / "results" / "hardware.json"


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def repeatability(client: LatencyClient, candidate: bytes, reference: bytes, repeats: int) -> dict:
    runs = [client.measure(candidate, reference) for _ in range(repeats)]
    medians = [m.candidate.median_ms for m in runs]
    ratios = [m.ratio for m in runs]
    return {
        "repeats": repeats,
        "medians_ms": medians,
        "ratios": ratios,
        "median_spread": spread(medians),
        "ratio_spread": spread(ratios),
        "attempts": [m.attempts for m in runs],
    }


def throughput(client: LatencyClient, artifacts: list[bytes], reference: bytes) -> float:
    start = time.perf_counter()
    for data in artifacts:
        client.measure(data, reference)
    return len(artifacts) / (time.perf_counter() - start) * 60


def ray_throughput(target_spec: dict, artifacts: list[bytes], reference: bytes) -> float:
    import ray
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="galen-bench-")
    os.environ.update(RAY_TMPDIR=tmp, RAY_AUTH_MODE="disabled")
    os.makedirs(os.path.join(tmp, "ray"), exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": tmp})
    name = target_spec["name"]
    cluster.add_node(num_cpus=1, labels={"hardware": name}, resources={name: 1})
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    try:
        client = LatencyClient(parse_target(target_spec), cache=None)
        client.measure(reference, reference)  # actor start-up is not a measurement
        return throughput(client, artifacts, reference)
    finally:
        ray.shutdown()
        cluster.shutdown()


def predictor_error(
    name: str, client: LatencyClient, calibrate_n: int, evaluate_n: int, seed: int, repeat: bool = False, round_to: int = 8
) -> dict:
    """The predictor's error on ``evaluate_n`` random policies of ``name`` after calibrating on ``calibrate_n`` others
    (channel counts rounded to multiples of ``round_to``, as a search with that ``env.round_to`` builds them).

    With ``repeat`` every evaluated policy is measured a second time after the first pass (uncached), and
    ``mape_repeat`` is the measurement's own error: the MAPE of the first ratios against the second. A predictor cannot be
    judged by a MAPE below the one the target's timing itself has."""
    model, x = build_model(name, 1, 10).eval(), torch.randn(1, 1, 32, 32)
    calib, structure, rng = torch.randn(64, 1, 32, 32), discover(model, x), random.Random(seed)
    policies = [CompressionPolicy(), CompressionPolicy(precision={n: Precision(8, 8) for n in structure.layer_names})]
    policies += [random_policy(structure, rng) for _ in range(calibrate_n - 2 + evaluate_n)]
    specs = [layer_specs(structure, p, round_to) for p in policies]
    predictor = LatencyPredictor(client)
    start, timed = time.perf_counter(), client.stats()["timings"]
    entries = predictor.fill(specs)
    table_s, timed = time.perf_counter() - start, client.stats()["timings"] - timed
    reference = compress(model, policies[0], x, calib, structure=structure, round_to=round_to).artifact.data
    measured, ratios, evaluated = [], [], []
    for i, policy in enumerate(policies):
        artifact = compress(model, policy, x, calib, structure=structure, round_to=round_to).artifact.data
        m = client.measure(artifact, reference)
        measured.append(m.candidate.median_ms)
        ratios.append(m.ratio)
        if repeat and i >= calibrate_n:
            evaluated.append(artifact)  # only the ones timed again are kept (VGG-11's are up to 37 MB each)
    again = None
    if repeat:  # uncached: the same artifacts timed again, after every other one
        fresh = LatencyClient(client.target, cache=None)
        again = [fresh.measure(artifact, reference).ratio for artifact in evaluated]
    calibration = predictor.calibrate(list(zip(specs[:calibrate_n], measured[:calibrate_n], strict=True)), anchor=0)
    predicted = [predictor.predict(s) for s in specs[calibrate_n:]]
    predicted_ratio = [predictor.predict_ratio(s, specs[0]) for s in specs[calibrate_n:]]
    raw = [sum(predictor.features(s)[:2]) for s in specs[calibrate_n:]]
    return {
        "model": name,
        "round_to": round_to,
        "layers": len(structure.layers),
        "table_entries": entries,
        "table_timed": timed,  # the rest came from the latency cache (shapes shared with an earlier model)
        "table_seconds": table_s,
        "calibration": calibration.to_dict(),
        "evaluated": evaluate_n,
        "mape_ms": mape(predicted, measured[calibrate_n:]),
        "mape_ratio": mape(predicted_ratio, ratios[calibrate_n:]),
        "mape_uncalibrated_sum": mape(raw, measured[calibrate_n:]),
        "mape_repeat": None if again is None else mape(ratios[calibrate_n:], again),
        "repeated_ratio": again,
        "measured_ms": measured,
        "measured_ratio": ratios,
        "predicted_ms": predicted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--throughput-artifacts", type=int, default=20)
    parser.add_argument("--calibrate", type=int, default=12)
    parser.add_argument("--evaluate", type=int, default=50)
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    target = get_target("local-cpu")
    with tempfile.TemporaryDirectory() as tmp:
        nocache = LatencyClient(target, cache=None)
        model, x = build_model("resnet20", 1, 10).eval(), torch.randn(1, 1, 32, 32)
        calib, structure = torch.randn(64, 1, 32, 32), discover(model, x)
        reference = compress(model, CompressionPolicy(), x, calib, structure=structure).artifact.data
        half = compress(model, uniform_policy(structure, keep=0.5), x, calib, structure=structure).artifact.data
        repeat = repeatability(nocache, half, reference, args.repeats)
        rng = random.Random(args.seed + 1)
        start = time.perf_counter()
        artifacts = [
            compress(model, random_policy(structure, rng), x, calib, structure=structure).artifact.data
            for _ in range(args.throughput_artifacts)
        ]
        build_s = (time.perf_counter() - start) / len(artifacts)
        local_rate = throughput(nocache, artifacts, reference)
        actor_rate = ray_throughput(target.to_dict() | {"name": "bench-device", "local": False}, artifacts, reference)
        client = LatencyClient(target, cache=LatencyCache(Path(tmp) / "latency.sqlite"))
        predictors = [predictor_error(name, client, args.calibrate, args.evaluate, args.seed) for name in args.models]
    results = {
        "environment": environment(onnxruntime=ort.__version__, torch=torch.__version__),
        "target": target.to_dict(),
        "repeatability": repeat,
        "throughput": {"in_process_per_min": local_rate, "ray_actor_per_min": actor_rate, "build_s_per_artifact": build_s},
        "predictor": predictors,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    env, m = results["environment"], target.measurement
    lines = [
        "## Hardware layer (issue 4)",
        "",
        f"{env['cpu']}, {env['cores']} cores, onnxruntime {env['onnxruntime']}, target `local-cpu` (1 thread, batch 1; "
        f"warm-up {m.warmup}, {m.rounds} interleaved rounds x {m.runs_per_round} runs, re-measure above {m.max_round_spread:.0%} "
        f"round spread), {env['date']}. Raw data: `bench/results/hardware.json`. Reproduce: `make bench-hardware`.",
        "",
        f"Repeatability, ResNet-20 50% pruned against the unpruned model, {repeat['repeats']} separate measurements "
        "(aim: <= 3% at batch 1):",
        "",
        "| quantity | values | spread (max-min)/median |",
        "|---|---|---|",
        f"| candidate median | {', '.join(f'{v:.3f}' for v in repeat['medians_ms'])} ms | {repeat['median_spread']:.1%} |",
        f"| ratio to reference | {', '.join(f'{v:.3f}' for v in repeat['ratios'])} | {repeat['ratio_spread']:.1%} |",
        "",
        f"Throughput on one device (full protocol, candidate + reference): {local_rate:.0f} measurements/min in-process, "
        f"{actor_rate:.0f}/min through a latency actor on a local Ray cluster; building an artifact (prune, export, "
        f"quantize, check) takes {build_s:.2f} s beside it (ResNet-20, random policies).",
        "",
        f"Latency predictor: per-layer table + calibration on {args.calibrate} measured models, evaluated on "
        f"{args.evaluate} other random policies (aim: MAPE <= 10%):",
        "",
        "| model | table entries (newly timed) | table fill | calibration (fp32, int8, switch) | MAPE latency | MAPE ratio "
        "| MAPE raw table sum |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in predictors:
        c = p["calibration"]
        lines.append(
            f"| {p['model']} | {p['table_entries']} ({p['table_timed']}) | {p['table_seconds']:.1f} s | "
            f"{c['fp32_scale']:.2f}, {c['int8_scale']:.2f}, "
            f"{c['switch_scale'] * 1e3:.2f} us/kvalue | {p['mape_ms']:.1f}% | {p['mape_ratio']:.1f}% | {p['mape_uncalibrated_sum']:.1f}% |"
        )
    write_section("hardware", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
