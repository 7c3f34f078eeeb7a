"""Real searches through the command line: SAC killed with SIGKILL and resumed, PPO stopped with SIGTERM and resumed.

Each run is a real ``python -m experiments.search`` process with its own local Ray, RLlib env
runners, the latency actor and cache; the checks are on what it leaves on disk.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from agents.policy_net import ActorNet
from agents.recorder import RECORD_FIELDS, read_episodes
from compression.policy import CompressionPolicy

REPO = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, checkpoint: Path, name: str, agent: dict, episodes: int, safety_net: bool = False) -> Path:
    """A small search on the test model. Without the safety net unless asked (its 8 uniform episodes took about 20 s
    of each test that runs a search; its own tests: test_baselines.py, and the job submitted in test_cluster_jobs.py)."""
    config = {
        "name": name,
        "run_dir": str(tmp_path / name),
        "episodes": episodes,
        "seed": 0,
        "safety_net": safety_net,
        "workload": {"model": "resnet20", "dataset": "fashion-mnist", "checkpoint": str(checkpoint)},
        "env": {"kind": "joint", "target_ratio": 0.8, "val_size": 200, "sensitivity_images": 64, "calibration_images": 64, "bn_batches": 4},
        "agent": {"hidden": [32, 32], "episodes_per_iteration": 2, **agent},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start(config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "experiments.search", "--config", str(config), "--no-progress", *extra]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(run_dir: Path, episodes: int, process: subprocess.Popen, timeout: float = 420) -> None:
    """Until the run has ``episodes`` episodes and an agent checkpoint."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        checkpoints = list((run_dir / "checkpoints").glob("iter_*"))
        if checkpoints and len(read_episodes(run_dir)) >= episodes:
            return
        if process.poll() is not None:
            pytest.fail(f"search ended early ({process.returncode}):\n{process.stdout.read()}")
        time.sleep(1)
    process.kill()
    pytest.fail("search did not reach the kill point in time")


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out
    return out


def check_run(run_dir: Path, before: list[dict], episodes: int, algo: str) -> list[dict]:
    after = read_episodes(run_dir)
    assert after[: len(before)] == before  # nothing written before the stop was lost or changed
    assert [r["episode"] for r in after] == list(range(len(after)))  # numbering continues, no duplicates
    trained = [r for r in after if r["source"] == algo]
    assert len(trained) >= episodes
    assert after[-1]["source"] == f"{algo}-deterministic"  # the final policy, read out of the checkpoint
    for record in after:
        assert set(RECORD_FIELDS) - {"seconds"} <= set(record)
        assert 0.0 <= record["accuracy"] <= 1.0 and record["latency_ms"] > 0
        CompressionPolicy.from_dict(record["policy"])  # every policy loads
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "finished"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["baseline"]["latency_ratio"] == 1.0 and 0 < summary["best"]["latency_ratio"] < 1.5
    assert (run_dir / "report" / "pareto.png").stat().st_size > 10_000
    assert "## Pareto front" in (run_dir / "report" / "report.md").read_text()
    # The actor loads without Ray and acts deterministically.
    checkpoint = sorted((run_dir / "checkpoints").glob("iter_*"))[-1]
    actor = ActorNet(checkpoint)
    obs = np.zeros(actor.meta["obs_dim"], np.float32)
    action = actor.act(obs)
    assert action.shape == (2,) and np.all((0 <= action) & (action <= 1))
    assert np.array_equal(action, actor.act(obs))
    return after


def test_sac_search_killed_with_sigkill_resumes_without_losing_episodes(tmp_path, trained_resnet20) -> None:
    # env_runners 0: sampling in the driver (remote env runners: tests/test_envs_rllib.py); each would build the env again
    agent = {"algo": "sac", "warmup_episodes": 2, "env_runners": 0}
    config = write_config(tmp_path, trained_resnet20.path, "sac", agent, episodes=8)
    run_dir = tmp_path / "sac"
    process = start(config)
    wait_for(run_dir, 3, process)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    process.wait()
    before = read_episodes(run_dir)
    assert 3 <= len(before) < 8
    with pytest.raises(subprocess.CalledProcessError):  # an existing run is never overwritten
        subprocess.run([sys.executable, "-m", "experiments.search", "--config", str(config)], cwd=REPO, check=True, capture_output=True)
    out = finish(start(config, "--resume"))
    assert "best policy" in out and "test accuracy" in out
    after = check_run(run_dir, before, 8, "sac")
    # the replay buffer came back with the checkpoint, and the resumed run did not replay its warm-up
    restored = re.search(r"resumed the agent from .* \(iteration (\d+), (\d+) episodes back in its replay buffer, (\d+) measured", out)
    assert restored and int(restored.group(2)) >= 2, out
    # and the env runner's latency calibration and wall margin start from what the run measured before the kill
    assert int(restored.group(3)) == len({(r["predicted_ratio"], r["latency_ratio"]) for r in before}) > 0, out
    # no replayed warm-up: a replay would play episodes 0 and 1 again, in order, right after the resume (single
    # policies may repeat by themselves: the wall leaves few options near the budget)
    played = [json.dumps(r["policy"], sort_keys=True) for r in after if r["source"] == "sac"]
    resumed_at = len([r for r in before if r["source"] == "sac"])
    assert played[resumed_at : resumed_at + 2] != played[:2]


def test_ppo_search_stopped_with_sigterm_resumes(tmp_path, trained_resnet20) -> None:
    agent = {"algo": "ppo", "env_runners": 0, "ppo_epochs": 2}  # env_runners 0: sampling in the driver
    config = write_config(tmp_path, trained_resnet20.path, "ppo", agent, episodes=4)  # stopped after its first iteration
    run_dir = tmp_path / "ppo"
    process = start(config)
    wait_for(run_dir, 2, process)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert json.loads((run_dir / "state.json").read_text())["status"] == "interrupted"
    before = read_episodes(run_dir)
    finish(start(config, "--resume"))
    check_run(run_dir, before, 4, "ppo")
