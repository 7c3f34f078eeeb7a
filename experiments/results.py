"""What a finished search hands back: the baseline against the best policy, on the test split, on the target.

Used by ``galen search`` (its closing table and ``summary.json``), ``galen export`` and ``galen finetune``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from agents.accuracy import rank_agreement
from compression.export import evaluate_onnx
from compression.pipeline import Compressed, policy_accuracy
from compression.policy import CompressionPolicy
from envs import ENV_IDS
from envs.compression_env import CompressionEnv
from experiments.config import SearchConfig

ENV_BY_KIND = {cls.kind: cls for cls in ENV_IDS.values()}


def make_env(config: SearchConfig) -> CompressionEnv:
    """The search's env in this process (builds or reuses the shared context: model, data, reference); a target timed
    on Ray nodes joins the cluster first (``RAY_ADDRESS``)."""
    from experiments import cluster

    cluster.connect_for(config.env.target)
    if config.env.kind == "two-stage":  # a search of two envs: its first (experiments.stages)
        from experiments.stages import stage_one_env

        return stage_one_env(config)
    return ENV_BY_KIND[config.env.kind](config.env)


def pick_episode(records: list[dict[str, Any]], best: dict[str, Any] | None, episode: int | None) -> dict[str, Any]:
    """Episode ``episode`` of a run, or its best one."""
    if episode is None:
        if best is None:
            raise ValueError("the run has no episodes yet")
        return best
    for record in records:
        if record["episode"] == episode:
            return record
    raise ValueError(f"--episode {episode}: the run has episodes 0..{len(records) - 1}")


def test_accuracy(env: CompressionEnv, model: bytes | Compressed) -> float:
    """Top-1 accuracy on the whole test split, on up to 2 threads (the search is over; 10,000 images took 6 s on 1).

    ``model``: an ONNX artifact, or a compressed model, scored at its policy's precisions (simulated where the policy
    asks for bits the CPU kernels do not run: ``compression.pipeline.policy_accuracy``).
    """
    ctx = env.ctx
    threads = min(2, os.cpu_count() or 1)
    if isinstance(model, Compressed):
        return policy_accuracy(model, ctx.data.loader("test", 250), ctx.calibration, threads=threads)
    return evaluate_onnx(model, ctx.data.loader("test", 250), threads=threads)


def fixed_finetune(env: CompressionEnv, policy: Any, steps: int) -> tuple[float, float]:
    """Test accuracy of ``policy`` after a fixed, short fine-tune (``steps`` SGD steps of batch 128, lr 0.01, simulated
    quantization, seed 0: the same for every policy, so their outcomes compare), and its seconds. What the studies and the
    search benchmark rank policies by."""
    from compression.pipeline import finetune_and_build

    ctx = env.ctx
    started = time.perf_counter()
    compressed = env.build_compressed(policy, finetune_steps=0)
    finetune_and_build(compressed, ctx.data, ctx.example, ctx.calibration, steps=steps, lr=0.01, seed=0, progress=False)
    return test_accuracy(env, compressed), time.perf_counter() - started


SLOW_RETRIES = 3  # rounds of fresh timings for a final measurement taken while the machine ran slow


def measure_final(env: CompressionEnv, artifact: bytes, expected_ratio: float | None = None) -> Any:
    """The latency of an artifact whose number is reported (a fine-tuned or exported policy): cache first, and a timing
    (fresh or cached) whose interleaved reference ran more than 15% slower than the context's calibration timed it is
    taken again (up to ``SLOW_RETRIES`` rounds, pausing between them; the fastest-reference timing is kept and cached).

    A process's first timing has no fastest reference of its own to compare with, and in this VM's slow state int8
    ratios rise by up to 40%: a fine-tuned ResNet-56 policy searched at 41.5% measured 56.7% right after its
    fine-tune (the same policy; its reference ran at 2.96 ms instead of 2.1).

    ``expected_ratio``: what the search measured for this policy's network (a fine-tune changes weights, not shapes).
    A ratio more than ``CompressionEnv.SURPRISE`` above it is confirmed like the search's own surprising timings: rounds of fresh
    timings, the lowest kept, until one is near it. On the AMD EPYC VM int8 timings have a second, slow mode with the
    reference's own time unchanged: the demo's int8 network, 45.4% in its search, read 55.4% after the fine-tune.
    """
    ctx = env.ctx
    client = ctx.client
    m = client.measure(artifact, ctx.reference)
    if env.config.measured_objective:
        fastest = ctx.reference_ms  # the calibration's timing of the reference (itself kept from its fastest-reference timing)
    else:  # no latency predictor to build for it (its per-layer table is hundreds of timings): the fastest this search saw
        fastest = client.fastest_reference_ms(ctx.reference)
    for _ in range(SLOW_RETRIES if fastest is not None else 0):
        if not client.ran_slow(m, fastest):
            break
        time.sleep(client.target.measurement.pause_s)
        m = client.retime(artifact, ctx.reference, m)
    near = None if expected_ratio is None else expected_ratio * (1.0 + CompressionEnv.SURPRISE)  # the env's own threshold
    if near is not None and m.ratio > near:
        confirmed = client.confirm(artifact, ctx.reference, until=lambda r: r.ratio <= near, rounds=SLOW_RETRIES)
        m = min(m, confirmed, key=lambda r: r.ratio)
    return m


def evaluate(env: CompressionEnv, model: bytes | Compressed, expected_ratio: float | None = None) -> dict[str, Any]:
    """Test accuracy (``test_accuracy``), latency on the target (cache first, slow-state and surprising timings taken
    again; ``expected_ratio``: see ``measure_final``) and size of an artifact or a compressed model's artifact."""
    artifact = model.artifact.data if isinstance(model, Compressed) else model
    m = measure_final(env, artifact, expected_ratio)
    result = {
        "test_accuracy": test_accuracy(env, model),
        "latency_ms": m.candidate.median_ms,
        "latency_ratio": m.ratio,
        "reference_latency_ms": m.reference.median_ms if m.reference else None,
        "artifact_bytes": len(artifact),
    }
    simulated = model.policy.simulated_layers() if isinstance(model, Compressed) else []
    if simulated:  # the accuracy above is the policy's; the ONNX file runs those layers as int8 (or float)
        result.update(simulated_layers=len(simulated), artifact_test_accuracy=test_accuracy(env, artifact))
    return result


def simulated_note(result: dict[str, Any]) -> str:
    """A sentence for a result whose accuracy was simulated (``evaluate``), else empty."""
    if not result.get("simulated_layers"):
        return ""
    return (
        f" ({result['simulated_layers']} layer(s) at precisions the CPU kernels do not run are simulated; the ONNX file "
        f"runs them as int8 or float: {100 * result['artifact_test_accuracy']:.2f}%)"
    )


def summarize(env: CompressionEnv, best: dict[str, Any], episodes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Baseline (the uncompressed model's artifact) vs the best policy: accuracy, latency, size.

    With the run's ``episodes``, also the lowest cost any episode reached (how far an unmet budget was).
    """
    policy = CompressionPolicy.from_dict(best["policy"])
    compressed = env.build_compressed(policy)
    baseline = evaluate(env, env.ctx.reference)
    found = evaluate(env, compressed, best.get("latency_ratio"))
    baseline.update(val_accuracy=env.ctx.reference_accuracy, macs=env.ctx.reference_costs.macs, latency_ratio=1.0)
    found.update(val_accuracy=best["accuracy"], macs=compressed.costs.macs, episode=best["episode"], source=best["source"])
    return {
        "baseline": baseline,
        "best": found,
        "within_budget": best["within_budget"],
        "target_ratio": best["target_ratio"],
        "objective": best["objective"],
        "lowest_cost_ratio": min((e["cost_ratio"] for e in episodes), default=None) if episodes else None,
        "frozen": dict(env.ctx.structure.frozen),  # pruning groups left unpruned (compression.pruning.freeze_unprunable)
        "accuracy_predictor": rank_agreement(episodes or []),  # a screened search: how well its predictor ranked
    }


def format_summary(summary: dict[str, Any]) -> str:
    b, f = summary["baseline"], summary["best"]
    rows = [
        ("", "baseline", f"best policy (episode {f['episode']}, {f['source']})"),
        ("test accuracy", f"{100 * b['test_accuracy']:.2f}%", f"{100 * f['test_accuracy']:.2f}%"),
        ("validation accuracy", f"{100 * b['val_accuracy']:.2f}%", f"{100 * f['val_accuracy']:.2f}%"),
        ("latency (median)", f"{b['latency_ms']:.3f} ms", f"{f['latency_ms']:.3f} ms ({100 * f['latency_ratio']:.1f}% of baseline)"),
        ("MACs", f"{b['macs'] / 1e6:.1f} M", f"{f['macs'] / 1e6:.1f} M"),
        ("artifact size", f"{b['artifact_bytes'] / 1024:.0f} KiB", f"{f['artifact_bytes'] / 1024:.0f} KiB"),
        (
            f"budget ({summary['objective']})",
            f"{100 * summary['target_ratio']:.0f}% of baseline",
            "met" if summary["within_budget"] else "NOT met (the policy with the best reward shown)",
        ),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    text = "\n".join(f"{a:<{w0}}  {b_:<{w1}}  {c}" for a, b_, c in rows)
    predictor = summary.get("accuracy_predictor")
    if predictor and predictor.get("kendall_tau") is not None:
        text += (
            f"\naccuracy predictor (screening): Kendall tau {predictor['kendall_tau']:.2f} between predicted and scored accuracy"
            f" over the {predictor['episodes']} screened episodes"
        )
    lowest = summary.get("lowest_cost_ratio")
    if not summary["within_budget"] and lowest is not None:
        text += (
            f"\nno episode met the budget: the lowest cost reached was {100 * lowest:.1f}% of baseline "
            f"(budget {100 * summary['target_ratio']:.0f}%). If even the most compressed policies stay above it, the budget "
            "is out of reach for this model on this target; the report's Pareto front shows what is reachable."
        )
    return text
