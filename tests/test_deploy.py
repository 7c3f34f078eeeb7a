"""``galen export`` and ``galen finetune`` on a real run directory (two uniform episodes of the joint env, ResNet-20).

The run is made in-process (the search's own pieces: the config snapshot, the env, the episode log)
so the commands are checked on what a search leaves on disk, through the CLI as a user calls them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from agents.baselines import run_baseline
from agents.recorder import EpisodeLog, read_episodes
from experiments import cli
from experiments.config import SearchConfig
from experiments.results import make_env
from experiments.rundir import RunDir


@pytest.fixture(scope="module")
def run_dir(trained_resnet20, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("deploy")
    config = {
        "name": "deploy",
        "run_dir": str(root / "run"),
        "episodes": 2,
        "seed": 0,
        "workload": {"model": "resnet20", "dataset": "fashion-mnist", "checkpoint": str(trained_resnet20.path)},
        "env": {"kind": "joint", "target_ratio": 0.9, "val_size": 200, "sensitivity_images": 64, "calibration_images": 64},
        "agent": {"algo": "uniform"},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    search = SearchConfig.from_yaml(path)
    run = RunDir.open(search, resume=False)
    # the 2-step uniform grid at int8: every layer at its smallest width (episode 0), then at full width (episode 1)
    assert run_baseline("uniform", make_env(search), EpisodeLog(run.path), episodes=2, seed=0, uniform_steps=2) == 2
    return run.path


def initializer_shapes(model_path: Path) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(t.dims) for t in onnx.load(str(model_path)).graph.initializer}


def run_onnx(model_path: Path) -> tuple[int, ...]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in feed.shape]
    out = session.run(None, {feed.name: np.zeros(shape, dtype=np.float32)})[0]
    return out.shape


def test_export_rebuilds_the_best_policy_exactly_as_its_episode(run_dir: Path, capsys) -> None:
    records = read_episodes(run_dir)
    best = json.loads((run_dir / "best_policy.json").read_text())
    assert cli.main(["export", str(run_dir)]) == 0
    out = run_dir / "export"
    result = json.loads((out / "export.json").read_text())
    assert result["episode"] == best["episode"]
    record = records[best["episode"]]
    # the same base model, pruning, BN recalibration and int8 conversion as in the search: the same artifact size
    assert result["artifact_bytes"] == record["artifact_bytes"] == (out / "model.onnx").stat().st_size
    assert json.loads((out / "policy.json").read_text()) == record["policy"]
    assert 0.5 < result["test_accuracy"] <= 1.0  # full width at int8: about the base model's accuracy
    assert 0.0 < result["latency_ratio"] < 1.5 and result["reference_latency_ms"] > 0
    assert run_onnx(out / "model.onnx") == (1, 10)
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops  # the int8 QDQ graph ONNX Runtime runs with int8 kernels
    assert f"exported episode {best['episode']}" in capsys.readouterr().out


def test_finetune_steps_recover_a_heavily_pruned_policy_and_keep_its_structure(run_dir: Path, tmp_path: Path) -> None:
    exported = tmp_path / "export0"
    assert cli.main(["export", str(run_dir), "--episode", "0", "--out", str(exported)]) == 0
    tuned = tmp_path / "tuned0"
    assert cli.main(["finetune", str(run_dir), "--episode", "0", "--steps", "40", "--out", str(tuned)]) == 0
    result = json.loads((tuned / "finetune.json").read_text())
    assert result["episode"] == 0 and result["steps"] == 40 and "epochs" not in result
    before = json.loads((exported / "export.json").read_text())
    # the fine-tune starts from exactly the exported model, and 40 batches recover accuracy the pruning lost
    assert result["before"]["test_accuracy"] == pytest.approx(before["test_accuracy"])
    assert result["test_accuracy"] > before["test_accuracy"] + 0.05
    # fine-tuning changes weights, not the architecture: the same pruned widths and int8 layout
    assert initializer_shapes(tuned / "model.onnx") == initializer_shapes(exported / "model.onnx")
    assert run_onnx(tuned / "model.onnx") == (1, 10)


def test_export_and_finetune_reject_bad_input_with_a_clear_error(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert cli.main(["export", str(run_dir), "--episode", "7"]) == 1
    assert "--episode 7: the run has episodes 0..1" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path)]) == 1
    assert "is not a run directory (no config.yaml)" in capsys.readouterr().err
    assert cli.main(["finetune", str(run_dir), "--steps", "0"]) == 1
    assert "--steps must be a positive number of batches, got 0" in capsys.readouterr().err
    assert not (run_dir / "finetune").exists()  # nothing half-written


def _timing(reference_ms: float, ratio: float, cached: bool = False):
    from hardware.protocol import LatencyStats, Measurement

    stats = LatencyStats(reference_ms * ratio, 0.0, 0.0, 10)
    reference = LatencyStats(reference_ms, 0.0, 0.0, 10)
    return Measurement("local-cpu", stats, reference, ratio, 0.0, True, 1, "onnxruntime", "1", "cpu", "x86_64", 1, 1, cached)


def test_a_final_timing_taken_while_the_machine_runs_slow_is_taken_again() -> None:
    # the fine-tuned ResNet-56 of 2026-12-02: searched at 41.5%, timed at 56.7% right after the fine-tune with its
    # reference at 2.96 ms instead of 2.1 (this VM's slow state raises int8 ratios)
    from types import SimpleNamespace

    from experiments import results
    from hardware.client import LatencyClient, fastest_reference, lowest_ratio

    def env_with(timings: list) -> SimpleNamespace:
        queue = iter(timings)

        class Client:
            ran_slow = LatencyClient.ran_slow
            calls = 0
            target = SimpleNamespace(measurement=SimpleNamespace(pause_s=0.0))  # the target's pause between rounds

            def measure(self, artifact: bytes, reference: bytes):
                Client.calls += 1
                return next(queue)

            def retime(self, artifact: bytes, reference: bytes, previous, times: int = 2):
                Client.calls += 1
                return fastest_reference([previous, next(queue)])

            def confirm(self, artifact: bytes, reference: bytes, until, rounds: int):  # as LatencyClient's
                readings = []
                for _ in range(rounds):
                    Client.calls += 1
                    readings.append(next(queue))
                    if until(lowest_ratio(readings)):
                        break
                return lowest_ratio(readings)

        ctx = SimpleNamespace(client=Client(), reference=b"ref", reference_ms=2.1)
        return SimpleNamespace(ctx=ctx, config=SimpleNamespace(objective="latency", measured_objective=True))

    env = env_with([_timing(2.96, 0.567), _timing(2.8, 0.55), _timing(2.1, 0.415)])
    assert results.measure_final(env, b"artifact").ratio == 0.415
    env = env_with([_timing(2.2, 0.42)])  # within 15% of the calibration's reference: kept as it is
    assert results.measure_final(env, b"artifact").ratio == 0.42 and env.ctx.client.calls == 1
    env = env_with([_timing(3.0, 0.57, cached=True), _timing(2.1, 0.42)])  # a slow timing the cache kept: taken again
    assert results.measure_final(env, b"artifact").ratio == 0.42 and env.ctx.client.calls == 2
    slow = [_timing(3.0 - 0.01 * i, 0.57) for i in range(10)]  # slow throughout: bounded, the fastest reference kept
    env = env_with(slow)
    assert results.measure_final(env, b"artifact").reference.median_ms == 2.97 and env.ctx.client.calls == 1 + results.SLOW_RETRIES
    # the AMD EPYC's slow int8 mode, reference unchanged: the demo's int8 network, 45.4% in its search, read 55.4% after
    # its fine-tune; a reading more than 10% above the search's own is confirmed until one is near it, the lowest kept
    env = env_with([_timing(0.79, 0.554), _timing(0.79, 0.56), _timing(0.79, 0.455), _timing(0.79, 0.44)])
    assert results.measure_final(env, b"artifact", expected_ratio=0.454).ratio == 0.455 and env.ctx.client.calls == 3
    env = env_with([_timing(0.79, 0.48)])  # within 10% of the search's reading: kept as it is
    assert results.measure_final(env, b"artifact", expected_ratio=0.454).ratio == 0.48 and env.ctx.client.calls == 1
    env = env_with([_timing(0.79, 0.56)] * 4)  # slow throughout: bounded rounds, the reading stands
    assert results.measure_final(env, b"artifact", expected_ratio=0.454).ratio == 0.56 and env.ctx.client.calls == 1 + results.SLOW_RETRIES
