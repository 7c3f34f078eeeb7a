"""The Galen benchmark's plan, scoring and peak microbenchmark, and a tiny end-to-end run on ResNet-20."""

from __future__ import annotations

import gzip
import json
import math
import shutil

import pytest

from bench.galen.peak import floor_ms, matmul_peak
from bench.galen.plan import plan
from experiments import analysis
from tests.ray_env import ray_temp_dir


def _rec(episode: int, accuracy: float, cost: float, t: float, cached: bool = False, source: str = "sac") -> dict:
    return {"episode": episode, "source": source, "accuracy": accuracy, "cost_ratio": cost, "time": t, "latency_cached": cached}


def test_plan_shares_reward_blind_methods_and_runs_the_grid_once() -> None:
    runs = plan(["sac-joint", "uniform", "random"], [0.2, 0.1], seeds=2)
    labels = [r.label for r in runs]
    assert labels == [
        "sac-joint/b20/seed0",
        "uniform/shared/seed0",
        "random/shared/seed0",
        "sac-joint/b10/seed0",
        "sac-joint/b20/seed1",
        "random/shared/seed1",
        "sac-joint/b10/seed1",
    ]
    shared = next(r for r in runs if r.method == "random")
    assert shared.scored_budgets == (0.2, 0.1) and shared.budget == 0.2
    with pytest.raises(ValueError, match="unknown method 'dqn'; allowed: sac-joint, sac-prune"):
        plan(["dqn"], [0.2], 1)


def test_scoring_best_within_budget_reach_and_pauses() -> None:
    records = [
        _rec(0, 0.50, 0.30, 100.0),
        _rec(1, 0.60, 0.18, 110.0, cached=True),
        _rec(2, 0.70, 0.19, 120.0),
        _rec(3, 0.90, 0.40, 1000.0),  # after a pause (a resumed run): counted as a typical 10 s
        _rec(4, 0.72, 0.20, 1010.0, cached=True),
        _rec(5, 0.10, 0.05, 1020.0, source="sac-deterministic"),  # the read-out: not a searched episode
    ]
    s = analysis.score(records, 0.2)
    assert s["episodes"] == 5 and s["within"] == 3
    assert s["best"]["episode"] == 4 and s["best"]["accuracy"] == 0.72
    assert s["lowest_cost"]["episode"] == 1
    assert s["reach_episodes"] == 3  # 0.70 >= 0.95 * 0.72
    assert s["reach_seconds"] == pytest.approx(30.0)  # typical step 10 s for the first episode, then 10 + 10
    assert s["wall_seconds"] == pytest.approx(50.0)
    assert s["cache_hit_rate"] == pytest.approx(0.4)
    assert math.isnan(s["best_so_far"][0]) and s["best_so_far"][1:] == [0.60, 0.70, 0.70, 0.72]
    assert analysis.score(records, 0.1)["best"] is None and analysis.score(records, 0.1)["reach_episodes"] is None
    assert [r["episode"] for r in analysis.pareto(analysis.searched(records))] == [1, 2, 4, 3]
    assert analysis.score(records, 0.2, episodes=2)["best"]["episode"] == 1


def test_peak_throughput_and_floor() -> None:
    peak = matmul_peak(sizes=(64, 128), repeats=5, warmup=1)
    for kind in ("fp32", "int8"):
        assert 1e8 < peak[kind]["macs_per_s"] < 1e13, peak
        assert peak[kind]["macs_per_s"] == max(peak[kind]["by_size"].values()) and peak[kind]["n"] in (64, 128)
    assert floor_ms(peak["fp32"]["macs_per_s"] / 1e3, 0, peak) == pytest.approx(1.0)
    assert floor_ms(0, peak["int8"]["macs_per_s"] / 1e3, peak) == pytest.approx(1.0)


@pytest.mark.own_process  # starts Ray: a fresh interpreter (tests/conftest.py)
def test_tiny_benchmark_end_to_end(tmp_path, trained_resnet20, monkeypatch) -> None:
    import ray

    from bench.galen import archive
    from bench.galen import run as bench_run

    monkeypatch.setattr(bench_run, "base_model", lambda args: {"path": str(trained_resnet20.path), "test_acc": 0.9, "epochs": 1})
    # the reward-blind methods: one run each, scored under both budgets (runs per budget: test_plan_shares_...)
    argv = ["--model", "resnet20", "--methods", "random,uniform", "--budgets", "0.5,0.3", "--seeds", "1", "--episodes", "3"]
    argv += ["--val-size", "100", "--finetune-steps", "2", "--jobs", "2", "--out", str(tmp_path)]
    with ray_temp_dir("galen-bg-"):  # the searches are trials of a Tune experiment on a Ray of the benchmark's own
        assert bench_run.main(argv) == 0
    assert not ray.is_initialized()  # started and shut down by the benchmark
    trials = sorted(p.name for p in (tmp_path / "tune" / "searches").glob("trial_*"))  # Tune's trials, named by their cells
    assert len(trials) == 2 and "random--shared--seed0" in trials[0] and "uniform--shared--seed0" in trials[1]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["unfinished"] == []
    assert sorted(results["rows"]) == ["b30/random", "b30/uniform", "b50/random", "b50/uniform"]
    random50 = results["rows"]["b50/random"]["0"]
    assert random50["episodes"] == 3 and random50["status"] == "finished"
    assert random50["cpu"] == archive.cpu_name()  # recorded when the run was archived
    assert 0 < random50["remeasured"]["ratio"] < 1.5 and random50["remeasured"]["floor_ratio"] < random50["remeasured"]["ratio"]
    # the random run is shared: the same episodes scored against both budgets
    assert results["rows"]["b30/random"]["0"]["lowest_cost"] == random50["lowest_cost"]
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## Budget 50%" in text and "## Budget 30%" in text and "random search" in text
    assert (tmp_path / "plots" / "episodes_b50.png").stat().st_size > 10_000
    with gzip.open(tmp_path / "data" / "episodes.jsonl.gz", "rt") as handle:
        lines = [json.loads(line) for line in handle]
    # random and uniform are shared across budgets: 2 runs of 3 episodes
    assert len(lines) == 6 and {line["run"] for line in lines} == {"random/shared/seed0", "uniform/shared/seed0"}
    # a second invocation finds everything finished and recomputes nothing
    final = (tmp_path / "data" / "final.json").read_text()
    assert bench_run.main([*argv, "--only", "write"]) == 0
    assert (tmp_path / "data" / "final.json").read_text() == final
    # every finished run is archived under data/ (committed); a fresh checkout without runs/ restores them
    archives = sorted(p.name for p in (tmp_path / "data" / "archive").iterdir())
    assert archives == ["random--shared--seed0.json.gz", "uniform--shared--seed0.json.gz"]
    before = {p.name: p.read_bytes() for p in (tmp_path / "data" / "archive").iterdir()}
    shutil.rmtree(tmp_path / "runs")
    assert bench_run.main([*argv, "--only", "write"]) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["unfinished"] == [] and again["rows"] == results["rows"]  # same scores, nothing re-measured or re-tuned
    assert (tmp_path / "data" / "final.json").read_text() == final
    assert {p.name: p.read_bytes() for p in (tmp_path / "data" / "archive").iterdir()} == before  # archives are written once
    state = json.loads((tmp_path / "runs" / "random" / "shared" / "seed0" / "state.json").read_text())
    assert state["status"] == "finished" and state["restored_from"].endswith("random--shared--seed0.json.gz")
    # the machine is recorded per run and per peak measurement (a benchmark may be continued on another CPU)
    assert state["cpu"] == archive.cpu_name() == json.loads(final)["peak"]["cpu"] == again["rows"]["b30/random"]["0"]["cpu"]


def test_archive_restores_runs_and_the_base_model(tmp_path) -> None:
    from bench.galen import archive
    from bench.galen.plan import Run

    run = Run("tpe", 0.2, 1, (0.2,))
    assert archive.save_run(tmp_path, run) is None  # no run directory: nothing to archive
    run_dir = run.run_dir(tmp_path)
    run_dir.mkdir(parents=True)
    (run_dir / "episodes.jsonl").write_text(json.dumps({"episode": 0, "policy": {"layers": {"conv1": [0.5, 8]}}}) + "\n")
    (run_dir / "state.json").write_text(json.dumps({"status": "interrupted"}))
    assert archive.save_run(tmp_path, run) is None  # unfinished runs are not archived
    (run_dir / "state.json").write_text(json.dumps({"status": "finished", "iterations": 3}))
    path = archive.save_run(tmp_path, run)
    assert path.name == "tpe--b20--seed1.json.gz"
    assert not archive.restore_run(tmp_path, run)  # the run directory is there and finished
    shutil.rmtree(tmp_path / "runs")
    assert archive.restore_runs(tmp_path, [run, Run("tpe", 0.1, 1, (0.1,))]) == ["tpe/b20/seed1"]
    assert json.loads((run_dir / "episodes.jsonl").read_text())["policy"] == {"layers": {"conv1": [0.5, 8]}}
    assert json.loads((run_dir / "state.json").read_text())["iterations"] == 3
    path.rename(archive.archive_path(tmp_path, Run("tpe", 0.1, 1, (0.1,))))
    with pytest.raises(ValueError, match="holds run 'tpe/b20/seed1', not 'tpe/b10/seed1'"):
        archive.restore_run(tmp_path, Run("tpe", 0.1, 1, (0.1,)))

    store_dir = tmp_path / "store" / "resnet20--fashion-mnist--abc--seed0"
    store_dir.mkdir(parents=True)
    (store_dir / "model.pt").write_bytes(b"weights")
    assert archive.save_base(tmp_path, store_dir) == tmp_path / "data" / "base" / store_dir.name
    assert not archive.restore_base(tmp_path, store_dir)  # the store has it
    shutil.rmtree(tmp_path / "store")
    assert archive.restore_base(tmp_path, store_dir) and (store_dir / "model.pt").read_bytes() == b"weights"


def test_machines_counts_runs_not_rows() -> None:
    from bench.galen.write import _machines

    shared = {"cpu": "Xeon", "run": "random/shared/seed0"}  # scored under both budgets: one run
    rows = {"b50/random": {"0": shared}, "b20/random": {"0": shared}, "b20/tpe": {"2": {"cpu": "EPYC", "run": "tpe/b20/seed2"}}}
    (line,) = _machines({"rows": rows})
    assert "Xeon: 1 (random/shared/seed0)" in line and "EPYC: 1 (tpe/b20/seed2)" in line
    assert _machines({"rows": {"b50/random": {"0": shared}}}) == []  # one machine: nothing to say


def test_a_peak_measured_the_old_way_is_remeasured_and_floors_follow(tmp_path, monkeypatch) -> None:
    import argparse
    import functools

    from bench.galen import archive, peak
    from bench.galen import run as bench_run

    monkeypatch.setattr(peak, "matmul_peak", functools.partial(peak.matmul_peak, sizes=(64, 128), repeats=3, warmup=1))
    cpu = archive.cpu_name()
    old = {"n": 512, "fp32": {"macs_per_s": 1e9}, "int8": {"macs_per_s": 4e9}, "cpu": cpu}  # no "method": the old way
    other = {"method": peak.METHOD, "fp32": {"macs_per_s": 2e9}, "int8": {"macs_per_s": 8e9}, "cpu": "another CPU"}
    timed = {"latency_ms": 1.0, "reference_ms": 2.0, "macs_fp32": 1e6, "macs_int8": 4e6, "reference_macs": 3e6}
    (tmp_path / "data").mkdir()
    done = {"peak": other, f"peak/{cpu}": old, "p/here": {**timed, "cpu": cpu}, "p/there": {**timed, "cpu": "another CPU"}}
    (tmp_path / "data" / "final.json").write_text(json.dumps(done))
    final = bench_run.Finalizer(argparse.Namespace(out=tmp_path), {"path": "unused"})
    stored = json.loads((tmp_path / "data" / "final.json").read_text())
    assert stored[f"superseded/peak/{cpu}"] == old and stored["peak"] == other  # other CPUs untouched
    new = stored[f"peak/{cpu}"]
    assert new["method"] == peak.METHOD and new["sizes"] == [64, 128] and final.peak == new
    # floors are computed from the stored MACs with the peak of the CPU each policy was timed on, never stored
    here, there = final.remeasure("p/here", 0, {}), final.remeasure("p/there", 0, {})
    assert there["floor_ms"] == pytest.approx(1e3 * (1e6 / 2e9 + 4e6 / 8e9)) and there["reference_floor_ratio"] == pytest.approx(0.75)
    rate = new["fp32"]["macs_per_s"]
    assert here["reference_floor_ratio"] == pytest.approx(1e3 * 3e6 / rate / 2.0)
    assert "floor_ms" not in stored["p/here"]
    # measured the current way: a second start keeps it
    bench_run.Finalizer(argparse.Namespace(out=tmp_path), {"path": "unused"})
    assert json.loads((tmp_path / "data" / "final.json").read_text())[f"peak/{cpu}"] == new


def test_floor_check_says_where_the_floor_exceeds_the_measured_latency() -> None:
    from bench.galen.write import _floor_check

    def row(cpu: str, ratio: float) -> dict:
        return {"remeasured": {"cpu": cpu, "reference_floor_ratio": ratio}}

    below = {"rows": {"b20/tpe": {"0": row("A", 0.9), "1": row("A", 0.95)}}}
    expected = " Check (A: the uncompressed model's floor is 90.0-95.0% of its measured latency): below 100% everywhere, so the"
    assert _floor_check(below) == expected + " floors are lower bounds."
    mixed = {"rows": {"b20/tpe": {"0": row("A", 0.9), "1": row("B", 1.1)}}}
    assert "**above 100% on B**" in _floor_check(mixed) and "B: the uncompressed model's floor is 110.0-110.0%" in _floor_check(mixed)
    assert _floor_check({"rows": {"b20/tpe": {"0": {"remeasured": None}}}}) == ""
