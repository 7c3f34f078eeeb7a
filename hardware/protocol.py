"""The measurement protocol: warm-up, interleaved timed rounds, medians with spread, re-measurement.

Measured here: single-process medians moved 2% between runs at batch 1 (up to 16% at batch 32)
and absolute times drift with machine load, while the ratio candidate / reference measured in
interleaved rounds in one process separated a 5% difference cleanly in every run. So each round
times the candidate and the reference (the uncompressed model) back to back, alternating which
goes first, and the reported ratio is the median of the per-round ratios. When the per-round
values spread more than ``max_round_spread``, the whole measurement is repeated (up to
``max_remeasures`` times); an unstable attempt is discarded, so the statistics are those of the
final attempt, and the result says how many attempts it took and whether it ended stable.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import platform
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hardware.cache import galen_home
from hardware.runtime import Prepared, get_runtime
from hardware.targets import HardwareTarget


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one artifact, milliseconds per batch."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    samples: int

    @classmethod
    def of(cls, times_ms: list[float]) -> LatencyStats:
        p10, p90 = np.percentile(times_ms, [10, 90])
        return cls(float(statistics.median(times_ms)), float(p10), float(p90), len(times_ms))


@dataclass(frozen=True)
class Measurement:
    """One measurement on one device, with what it ran on."""

    target: str
    candidate: LatencyStats
    reference: LatencyStats | None
    ratio: float | None  # median over rounds of candidate / reference
    spread: float  # (max - min) / median of the per-round ratios (or candidate medians without a reference)
    stable: bool  # spread <= max_round_spread at the last attempt
    attempts: int
    runtime: str
    runtime_version: str
    cpu: str
    machine: str
    threads: int
    batch_size: int
    cached: bool = False  # served from the latency cache (the numbers are those of the original timing)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        reference = LatencyStats(**data["reference"]) if data.get("reference") else None
        return cls(**{**data, "candidate": LatencyStats(**data["candidate"]), "reference": reference})


def fingerprint(data: bytes) -> str:
    """Content hash of an artifact (the latency cache's key)."""
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def device_lock(target: str) -> Iterator[None]:
    """Hold the machine-wide exclusive lock of ``target`` (a file lock under ``$GALEN_HOME/locks``) while timing."""
    directory = galen_home() / "locks"
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{target}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


IDENTITY_FIELDS = {  # /proc/cpuinfo key -> its word in cpu_identity()
    "cpu family": "family",
    "model": "model",
    "stepping": "stepping",
    "cpu implementer": "implementer",
    "cpu part": "part",
    "cpu variant": "variant",
}


def cpu_identity() -> str:
    """The CPU's model name with the identifiers a VM keeps when it hides the name: x86 family, model and stepping
    (ARM: implementer, part and variant). Two different CPUs were both named "AMD EPYC" (on a Zen 5, family 26,
    ResNet-56's floor, min keep and int8, measured 34.5% of its fp32 latency, on the other 26-29%), so the name alone
    does not say two timings are comparable.
    """
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in IDENTITY_FIELDS and key not in fields:
                fields[key] = value.strip()
            elif not key and fields:
                break  # the first processor's block is enough
    except OSError:
        pass
    details = ", ".join(f"{IDENTITY_FIELDS[k]} {v}" for k, v in fields.items())
    return f"{cpu_model()} ({details})" if details else cpu_model()


def _time_runs(prepared: Prepared, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        prepared.run()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _rounds(candidate: Prepared, reference: Prepared | None, target: HardwareTarget) -> tuple[list[float], list[float], list[float]]:
    """Interleaved rounds; returns all candidate samples, all reference samples, and the per-round values."""
    settings = target.measurement
    cand_all, ref_all, per_round = [], [], []
    for index in range(settings.rounds):
        if reference is None:
            times = _time_runs(candidate, settings.runs_per_round)
            cand_all += times
            per_round.append(statistics.median(times))
            continue
        order = (candidate, reference) if index % 2 == 0 else (reference, candidate)  # cancel drift within a round
        results = {id(p): _time_runs(p, settings.runs_per_round) for p in order}
        cand, ref = results[id(candidate)], results[id(reference)]
        cand_all += cand
        ref_all += ref
        per_round.append(statistics.median(cand) / statistics.median(ref))
    return cand_all, ref_all, per_round


def measure(candidate: bytes, target: HardwareTarget, reference: bytes | None = None) -> Measurement:
    """Time ``candidate`` (and ``reference``, interleaved) on this machine following ``target``'s protocol."""
    runtime = get_runtime(target.runtime)
    settings = target.measurement
    cand = runtime.prepare(candidate, target.threads, target.batch_size)
    ref = runtime.prepare(reference, target.threads, target.batch_size) if reference is not None else None
    for prepared in filter(None, (cand, ref)):
        _time_runs(prepared, settings.warmup)
    attempts = 0
    while True:
        attempts += 1
        cand_all, ref_all, per_round = _rounds(cand, ref, target)
        middle = statistics.median(per_round)
        # The interquartile range of the per-round values: with many short rounds (local-cpu: 21 x 10 runs; the same
        # ResNet-56 int8 artifact repeated 5 times spread 0.484-0.500, where 7 x 50 runs spread 0.497-0.663 on this shared
        # machine) single disturbed rounds are expected and the median ignores them; max - min would flag every call.
        quartiles = statistics.quantiles(per_round, n=4) if len(per_round) >= 4 else [min(per_round), middle, max(per_round)]
        spread = (quartiles[2] - quartiles[0]) / middle
        stable = spread <= settings.max_round_spread
        if stable or attempts > settings.max_remeasures:
            break
    return Measurement(
        target=target.name,
        candidate=LatencyStats.of(cand_all),
        reference=LatencyStats.of(ref_all) if ref_all else None,
        ratio=middle if ref is not None else None,
        spread=spread,
        stable=stable,
        attempts=attempts,
        runtime=runtime.name,
        runtime_version=runtime.version,
        cpu=cpu_model(),
        machine=platform.machine(),
        threads=target.threads,
        batch_size=target.batch_size,
    )
