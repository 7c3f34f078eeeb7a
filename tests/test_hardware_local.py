"""Hardware layer without Ray: targets, the measurement protocol on real ONNX Runtime, the SQLite cache."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest
import torch

from compression.pipeline import compress
from compression.policy import CompressionPolicy, uniform_policy
from compression.structure import discover
from hardware.cache import CacheKey, LatencyCache
from hardware.protocol import Measurement, fingerprint, measure
from hardware.targets import TargetError, get_target, load_targets, parse_target
from workloads.models import build_model


def test_builtin_targets() -> None:
    targets = load_targets()
    assert {"local-cpu", "arm-board"} <= set(targets)
    local = targets["local-cpu"]
    assert (local.local, local.runtime, local.threads, local.batch_size) == (True, "onnxruntime", 1, 1)
    assert targets["arm-board"].label_selector == {"hardware": "arm-board"} and targets["arm-board"].resource == "arm-board"


def test_unknown_target_lists_known_ones() -> None:
    known = "arm-board, local-cpu, local-cpu-2t, openvino-cpu"
    with pytest.raises(TargetError, match=rf"^unknown hardware target 'tpu-v9'; known targets: {known}$"):
        get_target("tpu-v9")


def test_user_target_directory(tmp_path: Path) -> None:
    (tmp_path / "jetson.yaml").write_text("name: jetson\nthreads: 6\nmeasurement: {rounds: 3}\n")
    target = get_target("jetson", tmp_path)
    assert (target.threads, target.measurement.rounds, target.measurement.runs_per_round) == (6, 3, 50)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "runtime": "tensorrt"}, r"target 'x': field 'runtime' is 'tensorrt'; allowed: onnxruntime"),
        ({"name": "x", "threads": 0}, r"target 'x': field 'threads' is 0; allowed: an integer >= 1"),
        ({"name": "x", "cores": 4}, r"target 'x': unknown field 'cores'; allowed fields: activation_bits, batch_size, description, "),
        ({"name": "x", "measurement": {"round": 3}}, r"target 'x': unknown field 'measurement.round'; allowed: max_remeasures, "),
        (
            {"name": "x", "measurement": {"max_round_spread": 2}},
            r"field 'measurement.max_round_spread' is 2; allowed: a number in \(0, 1\)",
        ),
        ({"name": "x", "measurement": {"pause_s": -1}}, r"field 'measurement.pause_s' is -1; allowed: a number of seconds in \[0, 60\]"),
        ({"name": "x", "weight_bits": [1]}, r"field 'weight_bits' is \[1\]; allowed: a list of 2..8, 16, 32"),
        ({"threads": 2}, r"<dict>: a target needs at least a 'name' field"),
    ],
)
def test_bad_targets_are_rejected(data: dict, message: str) -> None:
    with pytest.raises(TargetError, match=message):
        parse_target(data)


@pytest.fixture(scope="module")
def artifacts() -> dict[str, bytes]:
    model, x = build_model("resnet20", 1, 10).eval(), torch.randn(1, 1, 32, 32)
    calib, structure = torch.randn(32, 1, 32, 32), discover(model, x)
    return {
        "reference": compress(model, CompressionPolicy(), x, calib).artifact.data,
        "half": compress(model, uniform_policy(structure, keep=0.5), x, calib).artifact.data,
    }


def test_pruned_model_measures_faster_as_a_ratio(artifacts) -> None:
    target = get_target("local-cpu")
    result = measure(artifacts["half"], target, artifacts["reference"])
    assert result.ratio < 0.75, result  # 25% of the MACs; measured ratio about 0.5 here
    same = measure(artifacts["reference"], target, artifacts["reference"])
    assert 0.9 < same.ratio < 1.1
    # an unstable attempt is discarded: the statistics are those of the final attempt
    settings = target.measurement
    assert result.reference.samples == result.candidate.samples == settings.rounds * settings.runs_per_round
    assert 1 <= result.attempts <= settings.max_remeasures + 1
    assert result.candidate.p10_ms <= result.candidate.median_ms <= result.candidate.p90_ms
    assert result.runtime == "onnxruntime" and result.cpu and result.machine
    assert Measurement.from_dict(result.to_dict()) == result


def test_cache_hits_survive_a_restart(tmp_path: Path, artifacts) -> None:
    key = CacheKey("local-cpu", "onnxruntime==1.31.1", fingerprint(artifacts["half"]))
    cache = LatencyCache(tmp_path / "latency.sqlite")
    assert cache.get(key) is None
    cache.put(key, {"ratio": 0.5})
    assert cache.get(key) == {"ratio": 0.5}
    assert cache.stats() == {"hits": 1, "misses": 1, "entries": 1}
    cache.close()
    reopened = LatencyCache(tmp_path / "latency.sqlite")
    assert reopened.get(key) == {"ratio": 0.5} and reopened.stats()["hits"] == 1
    assert sqlite3.connect(tmp_path / "latency.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _writer(path: str, worker: int, count: int) -> None:
    cache = LatencyCache(path)
    for i in range(count):
        cache.put(CacheKey("t", "rt", f"{worker}-{i}"), {"worker": worker, "i": i, "payload": "x" * 500})
    cache.close()


def test_two_processes_writing_leave_the_cache_consistent(tmp_path: Path) -> None:
    path = str(tmp_path / "latency.sqlite")
    LatencyCache(path).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(path, w, 300)) for w in range(2)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
    assert [p.exitcode for p in workers] == [0, 0]
    cache = LatencyCache(path)
    assert len(cache) == 600
    assert cache.get(CacheKey("t", "rt", "1-299")) == {"worker": 1, "i": 299, "payload": "x" * 500}
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


FAST = {"warmup": 2, "rounds": 3, "runs_per_round": 20}


def test_local_client_times_once_then_serves_from_the_cache(tmp_path: Path, artifacts) -> None:
    from hardware.client import LatencyClient

    target = parse_target({"name": "local-x", "local": True, "measurement": FAST})
    client = LatencyClient(target, cache=tmp_path / "latency.sqlite")
    cold = client.measure(artifacts["half"], artifacts["reference"])
    warm = client.measure(artifacts["half"], artifacts["reference"])
    assert (cold.cached, warm.cached) == (False, True)
    assert client.stats() == {"hits": 1, "misses": 1, "timings": 1}
    assert warm.ratio == cold.ratio
    alone = client.measure(artifacts["half"])  # another reference (none) is another key
    assert alone.ratio is None and client.stats()["timings"] == 2
    # a new process (a restarted driver) finds the result on disk
    again = LatencyClient(target, cache=tmp_path / "latency.sqlite")
    assert again.measure(artifacts["half"], artifacts["reference"]).cached and again.stats()["timings"] == 0
    # another thread count is another measurement
    other = LatencyClient(
        parse_target({"name": "local-x", "local": True, "threads": 2, "measurement": FAST}), cache=tmp_path / "latency.sqlite"
    )
    assert not other.measure(artifacts["half"], artifacts["reference"]).cached


def test_confirm_times_afresh_and_replaces_a_disturbed_cached_timing(tmp_path: Path, artifacts) -> None:
    import dataclasses

    from hardware.client import LatencyClient

    target = parse_target({"name": "local-x", "local": True, "measurement": FAST})
    client = LatencyClient(target, cache=tmp_path / "latency.sqlite")
    first = client.measure(artifacts["half"], artifacts["reference"])
    disturbed = dataclasses.replace(first, ratio=first.ratio * 3)  # as a busy neighbour would leave it in the cache
    client._cache_put(client.key(artifacts["half"], artifacts["reference"]), disturbed.to_dict())
    assert client.measure(artifacts["half"], artifacts["reference"]).ratio == pytest.approx(first.ratio * 3)
    confirmed = client.confirm(artifacts["half"], artifacts["reference"])
    assert not confirmed.cached and client.stats()["timings"] == 4  # three fresh timings, the lowest ratio kept
    assert confirmed.ratio < first.ratio * 2  # the disturbed value is gone ...
    assert client.measure(artifacts["half"], artifacts["reference"]).ratio == confirmed.ratio  # ... from the cache too


def test_confirm_keeps_the_lowest_of_its_fresh_timings(tmp_path: Path, artifacts, monkeypatch) -> None:
    import dataclasses

    from hardware.client import LatencyClient

    client = LatencyClient(parse_target({"name": "local-x", "local": True, "measurement": FAST}), cache=tmp_path / "latency.sqlite")
    real = client.measure(artifacts["half"], artifacts["reference"])
    # the VM's slow mode: two of three timings read 30% high, the reference's own time unchanged
    readings = iter([real.ratio * 1.3, real.ratio, real.ratio * 1.3])
    monkeypatch.setattr(client, "_time", lambda candidate, reference: dataclasses.replace(real, ratio=next(readings), cached=False))
    confirmed = client.confirm(artifacts["half"], artifacts["reference"])
    assert confirmed.ratio == real.ratio
    assert client.measure(artifacts["half"], artifacts["reference"]).ratio == real.ratio  # and the cache holds it
    # with ``until``: another round only while the lowest so far does not satisfy it (a slow mode longer than a round)
    readings = iter([real.ratio * 1.3] * 3 + [real.ratio, real.ratio * 1.3, real.ratio * 1.3])
    before = client.stats()["timings"]
    settled = client.confirm(artifacts["half"], artifacts["reference"], until=lambda m: m.ratio <= real.ratio, rounds=3, pause_s=0)
    assert settled.ratio == real.ratio and client.stats()["timings"] - before == 6  # two rounds, not three


def test_a_timing_taken_while_the_reference_runs_slow_is_taken_again(tmp_path: Path, artifacts, monkeypatch) -> None:
    import dataclasses

    from hardware.client import LatencyClient

    target = parse_target({"name": "local-x", "local": True, "measurement": FAST})
    client = LatencyClient(target, cache=None)
    real = client.measure(artifacts["half"], artifacts["reference"])  # the fastest reference seen so far
    # the machine drifts into its slow state for one timing (everything 40% slower, the ratio up too), then back
    slow = dataclasses.replace(
        real,
        ratio=real.ratio * 1.2,
        reference=dataclasses.replace(real.reference, median_ms=real.reference.median_ms * 1.4),
    )
    states = iter([slow, real])
    monkeypatch.setattr(client, "_time_once", lambda candidate, reference: next(states))
    monkeypatch.setattr("hardware.client.time.sleep", lambda seconds: None)
    again = client.measure(artifacts["half"], artifacts["reference"])
    assert again.ratio == real.ratio and client.slow_retries == 1
    # without a reference there is no witness: one timing, as it came
    monkeypatch.setattr(client, "_time_once", lambda candidate, reference: slow)
    assert client.measure(artifacts["half"]).ratio == slow.ratio and client.slow_retries == 1


def test_remote_target_without_a_cluster_is_a_clear_error() -> None:
    import ray

    from hardware.client import LatencyClient, TargetUnavailableError

    assert not ray.is_initialized()
    with pytest.raises(
        TargetUnavailableError,
        match=r"^hardware target 'arm-board' is served by Ray nodes labelled hardware=arm-board; connect to the cluster first "
        r"\(ray.init\(address=\.\.\.\) or RAY_ADDRESS\); a device joins with: ray start --address=<head> --num-cpus=0 "
        r"--labels=hardware=arm-board --resources='\{\"arm-board\": 1\}'$",
    ):
        LatencyClient(get_target("arm-board"))


def test_what_a_device_node_imports_needs_no_torch_and_no_onnx() -> None:
    import subprocess
    import sys

    code = (
        "import sys, hardware.actors, hardware.client; "
        "print(sorted(m for m in ('torch', 'onnx', 'compression', 'workloads') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_openvino_runs_each_layer_in_the_precision_the_artifact_asks_and_a_mismatch_is_an_error() -> None:
    from compression.policy import Precision
    from hardware.runtime import OpenVinoRuntime, RuntimePrecisionError

    torch.manual_seed(0)
    model, x = build_model("resnet20", 1, 10).eval(), torch.randn(1, 1, 32, 32)
    structure = discover(model, x)
    half = CompressionPolicy(precision={n: Precision(8, 8) for i, n in enumerate(structure.layer_names) if i % 2 == 0})
    mixed = compress(model, half, x, torch.randn(8, 1, 32, 32), structure=structure).artifact
    runtime = OpenVinoRuntime()
    runs = runtime.check(runtime.compile(mixed.data, 1, 1), mixed.data)
    # layer by layer what ONNX Runtime runs too (the artifact's own check, compression.export.verify_artifact)
    assert runs == {layer.node: layer.runs for layer in mixed.layers} and set(runs.values()) == {"int8", "fp32"}
    prepared = runtime.prepare(mixed.data, threads=1, batch_size=1)
    assert prepared.input_shape == (1, 1, 32, 32) and prepared.run() is not None
    # what OpenVINO compiled is not the artifact (here: the float model checked against the mixed one): refused
    float_model = compress(model, CompressionPolicy(), x, torch.randn(8, 1, 32, 32), structure=structure).artifact
    with pytest.raises(RuntimePrecisionError, match=r"^ONNX node '/conv1/Conv': the artifact asks int8 but OpenVINO runs it in fp32"):
        runtime.check(runtime.compile(float_model.data, 1, 1), mixed.data)
    # and the target measures through it like any other
    m = measure(mixed.data, get_target("openvino-cpu"), float_model.data)
    assert m.runtime == "openvino" and 0.2 < m.ratio < 1.5
