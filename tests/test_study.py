"""``galen study``: a grid of searches as one Tune experiment (config validation; two concurrent cells on a multi-node
cluster with W&B offline, stopped with SIGTERM, resumed, and the report)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from agents.recorder import read_episodes
from experiments.study import StudyConfig, method_label, setting_label
from tests.test_cluster_jobs import _env, _span, _three_nodes
from tests.test_search_runs import write_config


def _search(tmp_path: Path, checkpoint: Path, episodes: int) -> Path:
    return write_config(tmp_path, checkpoint, "base", {"algo": "random"}, episodes=episodes)


def _study(tmp_path: Path, search: Path, grid: dict, **extra) -> Path:
    path = tmp_path / "study.yaml"
    # MACs as the cost: the study's mechanics do not need the latency table (its timings are the search tests' subject)
    data = {"name": "st", "storage": str(tmp_path / "studies"), "search": str(search), "grid": grid, "finetune_steps": 5}
    data |= {"set": {"env.objective": "macs", "env.target_ratio": 0.7}, **extra}
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_study_config_is_checked_cell_by_cell_before_anything_runs(tmp_path) -> None:
    search = _search(tmp_path, tmp_path / "model", 4)
    study = StudyConfig.from_yaml(
        _study(tmp_path, search, {"agent.algo": ["sac", "random"], "env.target_ratio": [0.5, 0.7], "seed": [0, 1]})
    )
    cells = study.cells()
    assert [c.name for c in cells][:3] == [
        "algo-sac_target_ratio-0.5_seed-0",
        "algo-sac_target_ratio-0.5_seed-1",
        "algo-sac_target_ratio-0.7_seed-0",
    ]
    assert len(cells) == 8 and len({c.config["run_dir"] for c in cells}) == 8
    assert all(c.config["run_dir"].startswith(str(tmp_path / "studies" / "st" / "runs")) for c in cells)
    assert cells[0].search.env.target_ratio == 0.5 and cells[-1].search.seed == 1 and cells[-1].search.agent.algo == "random"
    assert method_label(cells[0], study) == "sac" and setting_label(cells[0]) == "env.target_ratio=0.5"
    bad = [
        ({"grid": {"agent.algo": ["sac", "dqn"]}}, r"the cell algo-dqn \(agent.algo=dqn\): .*agent.algo.*dqn"),
        ({"grid": {"agent.algo": "sac"}}, r"grid.agent.algo.*a non-empty list of values"),
        ({"grid": {"run_dir": ["a"]}}, r"grid.run_dir"),
        ({"grid": {"agent.algo": ["sac"]}, "budget": 0.5}, r"budget.*allowed.*grid"),
        ({"grid": {"agent.algo": ["sac"]}, "max_concurrent": -1}, r"max_concurrent.*an integer >= 0"),
        ({"grid": {"agent.algo": ["sac"]}, "search": "nosuch.yaml"}, r"nosuch.yaml"),
    ]
    for change, message in bad:
        data = {"name": "st", "search": str(search), **change}
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            StudyConfig.from_dict(data)


def test_two_concurrent_cells_on_a_multi_node_cluster_stopped_with_sigterm_resume_finish_and_report(tmp_path, trained_resnet20) -> None:
    # one study for both: concurrency on a cluster, and a stop in the middle (the two were separate tests, 190 s together)
    episodes = 6
    search = _search(tmp_path, trained_resnet20.path, episodes)
    config = _study(tmp_path, search, {"agent.algo": ["random", "tpe"]}, max_concurrent=2, wandb={"project": "galen-test"})
    root = tmp_path / "studies" / "st"
    first = root / "runs" / "algo-random"
    command = [sys.executable, "-m", "experiments.study", "--config", str(config)]
    with _three_nodes() as address:
        env = _env(WANDB_MODE="offline", RAY_ADDRESS=address, GALEN_HOME=os.environ["GALEN_HOME"])
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)  # fmt: skip
        deadline = time.time() + 600
        while time.time() < deadline and not (first.is_dir() and len(read_episodes(first)) >= 2):
            assert process.poll() is None, process.stdout.read()[-3000:]
            time.sleep(0.5)
        os.killpg(process.pid, signal.SIGTERM)  # the study's driver; its trials end with its job on the cluster
        process.wait(timeout=120)
        from tests.test_cluster_jobs import _settled_episodes

        before = _settled_episodes(first)
        assert 2 <= len(before) < episodes, len(before)
        out = subprocess.run([*command, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    after = read_episodes(first)
    assert after[: len(before)] == before  # nothing written before the stop was lost or replayed
    assert [r["episode"] for r in after] == list(range(len(after)))  # numbering continues, no duplicates
    spans = []
    for algo in ("random", "tpe"):
        own = [r for r in read_episodes(root / "runs" / f"algo-{algo}") if r["source"] == algo]
        assert len(own) == episodes, (algo, [r["source"] for r in own])
        spans.append(_span(own))
    assert max(s for s, _ in spans) < min(e for _, e in spans), f"the cells did not run at the same time: {spans}"
    results = json.loads((root / "study.json").read_text())
    cells = {c["cell"]: c for c in results["cells"]}
    assert set(cells) == {"algo-random", "algo-tpe"}
    for cell in cells.values():
        assert cell["status"] == "finished" and cell["episodes"] == episodes
        assert 0 < cell["best_accuracy"] <= 1 and 0 < cell["best_accuracy_after_finetune"] <= 1
        assert 0 < cell["latency_ratio_remeasured"] < 1.5 and cell["reach_95_episodes"] >= 1
    assert set(results["comparison"]["all cells"]) == {"random", "tpe"}
    md = (root / "report" / "study.md").read_text()
    assert "| random | 1 |" in md and "| tpe | 1 |" in md and (root / "report" / "setting-0.png").is_file()
    # W&B runs named after the cells, with the method as the job type, grouped by the study (each trial's run before the
    # stop and after the resume; a run killed early may not have flushed its name)
    offline = list(root.rglob("offline-run-*"))
    data = [b"".join(f.read_bytes() for f in p.glob("*.wandb")) for p in offline]
    assert len(offline) >= 2, sorted(map(str, offline))
    for cell in ("algo-random", "algo-tpe"):
        assert any(cell.encode() in d and cell.split("-")[1].encode() in d for d in data), cell
    # the report again, from the command: measures nothing new (cached) and prints the table
    again = subprocess.run(
        [*command[:3], "report", "--config", str(config)], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0 and "# Study st" in again.stdout, again.stderr[-3000:]
    # a study that exists is not started again by mistake
    out = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "pass --resume to continue it" in out.stderr
