"""Tune sweeps (two concurrent trials on a multi-node cluster, ASHA, W&B offline; a failing trial; SIGTERM and resume), and
``ray job submit`` against a real local head."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml

from agents.recorder import read_episodes
from tests.ray_env import ray_temp_dir
from tests.test_search_runs import REPO, write_config

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "PYTHONPATH": str(REPO),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    }


@contextlib.contextmanager
def _three_nodes() -> Iterator[str]:
    """A local multi-node cluster (a head and two workers, one CPU each) with its own temp dir; yields its address.

    The test process starts the nodes but does not join as a driver (the sweep and the checks run in their own processes).
    """
    from ray.cluster_utils import Cluster

    with ray_temp_dir("galen-sw-") as tmp:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": tmp})
        try:
            for _ in range(2):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            yield cluster.address
        finally:
            cluster.shutdown()


SHARED_ACTORS = """
import json, ray
from ray._private.state import actors
ray.init(address="ADDRESS", logging_level="ERROR")
fields = ("Name", "State", "IsDetached", "NumRestarts")
print(json.dumps([{k: a[k] for k in fields} for a in actors().values() if a["Name"].startswith("galen-latency")]))
"""


def _span(records: list[dict]) -> tuple[float, float]:
    """When a run's episodes began and ended. A record's time is when its episode ended, so the run began at least its
    first episode's build and timing earlier (ASHA may stop a trial after one episode: its first record is its last)."""
    return records[0]["time"] - sum(records[0]["seconds"].values()), records[-1]["time"]


def test_two_concurrent_sweep_trials_on_a_multi_node_cluster_with_asha_and_wandb_offline(tmp_path, trained_resnet20) -> None:
    agent = {"algo": "sac", "warmup_episodes": 1, "env_runners": 0, "episodes_per_iteration": 1}
    config = write_config(tmp_path, trained_resnet20.path, "trial", agent, episodes=3)
    command = [
        sys.executable,
        "-m",
        "experiments.cli",
        "sweep",
        "--config",
        str(config),
        "--name",
        "sw",
        "--storage",
        str(tmp_path / "sweeps"),
        "--trials",
        "2",
        "--max-concurrent",
        "2",
        "--grace-period",
        "1",
        "--params",
        "lr,gamma",
        "--wandb-project",
        "galen-test",
    ]
    with _three_nodes() as address:
        env = _env(WANDB_MODE="offline", RAY_ADDRESS=address, GALEN_HOME=os.environ["GALEN_HOME"])
        out = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        check = [sys.executable, "-c", SHARED_ACTORS.replace("ADDRESS", address)]
        shared = subprocess.run(check, env=env, capture_output=True, text=True, timeout=120)
        assert shared.returncode == 0, shared.stderr[-3000:]
    assert "2 trials, by reward_mean_10" in out.stdout
    trials = [p for p in (tmp_path / "sweeps" / "sw").iterdir() if p.is_dir() and (p / "run").is_dir()]
    assert len(trials) == 2
    sampled, spans = [], []
    for trial in trials:
        records = read_episodes(trial / "run")
        assert len(records) >= 1
        spans.append(_span(records))
        agent_config = yaml.safe_load((trial / "run" / "config.yaml").read_text())["agent"]  # the trial's own snapshot
        sampled.append((agent_config["lr"], agent_config["gamma"]))
        assert 1e-4 <= agent_config["lr"] <= 3e-3 and 0.9 <= agent_config["gamma"] <= 1.0
    assert sampled[0] != sampled[1], "the searcher gave both trials the same hyperparameters"
    assert max(start for start, _ in spans) < min(end for _, end in spans), f"the trials did not run at the same time: {spans}"
    # The shared latency and cache actors outlived the trial that created them: alive, detached, never restarted (inside
    # that trial's placement group they died with it and the other trial failed)
    actors = json.loads(shared.stdout.strip().splitlines()[-1])
    assert sorted(a["Name"].split(":")[0] for a in actors) == ["galen-latency", "galen-latency-cache"], actors
    assert all(a["State"] == "ALIVE" and a["IsDetached"] and a["NumRestarts"] == 0 for a in actors), actors
    written = json.loads((tmp_path / "sweeps" / "sw" / "sweep.json").read_text())["trials"]
    assert sorted(t["trial"] for t in written) == sorted(t.name for t in trials) and all(t["status"] == "ok" for t in written)
    keys = set().union(*(t["metrics"] for t in written))
    assert any(k.startswith("learners/default_policy/") for k in keys), sorted(keys)  # RLlib's own metrics reach Tune
    assert any(k.startswith("env_runners/galen_") for k in keys), sorted(keys)
    offline = list(tmp_path.rglob("offline-run-*"))
    assert len(offline) >= 2, sorted(str(p) for p in tmp_path.rglob("wandb"))
    assert all(any(p.glob("*.wandb")) for p in offline)
    assert all("got exitcode: 0" in (p / "logs" / "debug.log").read_text() for p in offline)  # finished trials: not failed


def test_a_sweep_whose_trial_fails_exits_non_zero_and_names_the_trial(tmp_path) -> None:
    agent = {"algo": "sac", "warmup_episodes": 1, "env_runners": 0, "episodes_per_iteration": 1}
    config = write_config(tmp_path, tmp_path / "no-such-checkpoint", "trial", agent, episodes=2)
    command = [sys.executable, "-m", "experiments.cli", "sweep", "--config", str(config), "--name", "bad"]
    command += ["--storage", str(tmp_path / "sweeps"), "--trials", "1", "--params", "lr", "--wandb-project", "galen-test"]
    out = subprocess.run(command, cwd=tmp_path, env=_env(WANDB_MODE="offline"), capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "FAILED" in out.stdout
    assert "galen sweep: error: 1 of 1 trials failed:" in out.stderr and "no meta.json (not a checkpoint)" in out.stderr, out.stderr[-3000:]
    error_file = out.stderr.split("(error file: ")[1].split(")")[0]
    assert Path(error_file).is_file()
    # the trial's W&B run is marked failed (exit code 1; Ray's own callback ended it with 0)
    offline = list((tmp_path / "sweeps").rglob("offline-run-*"))
    assert len(offline) == 1, sorted(str(p) for p in tmp_path.rglob("wandb"))
    assert "got exitcode: 1" in (offline[0] / "logs" / "debug.log").read_text()


def test_a_sweep_stopped_with_sigterm_resumes_every_trial_where_it_stopped(tmp_path, trained_resnet20) -> None:
    episodes = 8  # headroom: an episode takes about a second, and a record in flight may still land after the stop
    agent = {"algo": "sac", "warmup_episodes": 1, "env_runners": 0, "episodes_per_iteration": 1}
    config = write_config(tmp_path, trained_resnet20.path, "trial", agent, episodes=episodes)
    command = [sys.executable, "-m", "experiments.cli", "sweep", "--config", str(config), "--name", "rs"]
    command += ["--storage", str(tmp_path / "sweeps"), "--trials", "1", "--params", "lr"]
    process = subprocess.Popen(command, cwd=tmp_path, env=_env(WANDB_MODE="disabled"), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    deadline, run_dir = time.time() + 600, None
    while time.time() < deadline:
        runs = list((tmp_path / "sweeps" / "rs").glob("*/run"))  # the trial's run directory: in the sweep's storage
        if runs and len(read_episodes(runs[0])) >= 2 and list((runs[0] / "checkpoints").glob("iter_*")):
            run_dir = runs[0]
            break
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(1)
    assert run_dir is not None, "the trial did not reach 2 episodes in time"
    time.sleep(2)  # let Tune write its experiment state once more
    os.killpg(process.pid, signal.SIGTERM)  # the driver and the Ray processes it started
    process.wait(timeout=120)
    before = _settled_episodes(run_dir)  # what the stopped run left, once nothing of it writes any more
    iterations = sorted(int(c.name.split("_")[1]) for c in (run_dir / "checkpoints").glob("iter_*"))
    assert 2 <= len(before) < episodes - 1, len(before)
    out = subprocess.run([*command, "--resume"], cwd=tmp_path, env=_env(WANDB_MODE="disabled"), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    after = read_episodes(run_dir)
    assert after[: len(before)] == before  # nothing written before the stop was lost or replayed
    assert [r["episode"] for r in after] == list(range(len(after)))  # numbering continues, no duplicates
    assert len([r for r in after if r["source"] == "sac"]) >= episodes
    resumed = sorted(int(c.name.split("_")[1]) for c in (run_dir / "checkpoints").glob("iter_*"))
    # the agent went on from its checkpoint's iteration (one episode per iteration: about 8 in all; an agent restarted
    # from scratch would end at 8 - len(before) <= 6)
    assert resumed[-1] > iterations[-1] and resumed[-1] >= episodes - 1, (iterations, resumed)


def _settled_episodes(run_dir: Path, quiet: float = 5.0, limit: float = 60.0) -> list:
    """The run's episodes once the file has not changed for ``quiet`` seconds (a stopped driver's actors may still
    finish a record)."""
    last, since, deadline = None, time.time(), time.time() + limit
    while time.time() < deadline:
        now = read_episodes(run_dir)
        if now != last:
            last, since = now, time.time()
        elif time.time() - since >= quiet:
            break
        time.sleep(0.5)
    return last


def test_ray_job_submit_on_a_local_head(tmp_path, trained_resnet20) -> None:
    temp = Path(tempfile.mkdtemp(prefix="gj-", dir="/tmp"))  # short: Ray's socket paths must stay under 108 bytes
    port, dashboard = _free_port(), _free_port()
    env = _env(GALEN_HOME=os.environ["GALEN_HOME"])
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2", f"--temp-dir={temp}"]
        + ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--disable-usage-stats"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "the local head did not come up"
                assert head.poll() is None, "ray start --head exited"
                time.sleep(1)
        # without the safety net (its 8 uniform episodes, 20 s here, are tested in test_baselines.py)
        config = write_config(tmp_path, trained_resnet20.path, "job", {"algo": "random"}, episodes=3)
        data = yaml.safe_load(config.read_text())
        submit = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO), "--"]
        entry = ["python", "-m", "experiments.search", "--config", str(config), "--no-progress"]
        for _ in range(12):  # the dashboard answers before the node's job agent is up ("No available agent")
            out = subprocess.run(submit + entry, env=env, capture_output=True, text=True, timeout=600)
            if "No available agent" not in out.stdout + out.stderr:
                break
            time.sleep(5)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "succeeded" in out.stdout
        assert "episodes 3/3: " in out.stdout, out.stdout[-3000:]  # the job's log counts a baseline's episodes (no terminal)
        run_dir = Path(data["run_dir"])
        records = read_episodes(run_dir)
        assert [r["episode"] for r in records] == [0, 1, 2] and {r["source"] for r in records} == {"random"}
        assert json.loads((run_dir / "state.json").read_text())["status"] == "finished"
        assert (run_dir / "summary.json").exists() and (run_dir / "report" / "pareto.png").exists()
        # a study submitted the same way: its trials on the head's Ray, its run directories in its storage
        study = tmp_path / "study.yaml"
        study.write_text(
            yaml.safe_dump(
                {"name": "js", "storage": str(tmp_path / "studies"), "search": str(config), "grid": {"seed": [0]}, "finetune_steps": 0}
                | {"set": {"episodes": 2, "env.objective": "macs", "env.target_ratio": 0.7}}
            )
        )
        out = subprocess.run(
            submit + ["python", "-m", "experiments.study", "--config", str(study)], env=env, capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0 and "succeeded" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
        cell = tmp_path / "studies" / "js" / "runs" / "seed-0"
        assert [r["episode"] for r in read_episodes(cell) if r["source"] == "random"] == [0, 1]
        assert (tmp_path / "studies" / "js" / "report" / "study.md").exists()
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # ray start --block stops the processes it started; never `ray stop`
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)
