"""bench.search's per-run metrics (issue 24's methods table): the best so far after 10 and 30 episodes, the screening's tau."""

from __future__ import annotations

import pytest

from bench.search.run import aggregate, run_metrics


def _record(episode: int, accuracy: float, within: bool, predicted: float | None = None) -> dict:
    record = {
        "episode": episode,
        "source": "random",
        "accuracy": accuracy,
        "within_budget": within,
        "cost_over_target": 0.9 if within else 1.2,
        "latency_ratio": 0.4,
        "predicted_ratio": 0.4,
        "policy": {},
    }
    if predicted is not None:
        record["predicted_accuracy"] = predicted
    return record


def test_run_metrics_report_the_best_within_budget_after_10_and_30_episodes_and_the_screening_tau() -> None:
    # accuracy rises with the episode; every third episode is over budget (and the most accurate so far: must not count)
    records = [_record(i, 0.5 + 0.01 * i + (0.3 if i % 3 == 2 else 0.0), within=i % 3 != 2) for i in range(40)]
    for r in records[10:]:
        r["predicted_accuracy"] = r["accuracy"] - 0.05  # a screening that ranks perfectly
    records.append({**_record(40, 0.99, True), "source": "uniform"})  # another source's episode: not this method's
    metrics = run_metrics("random", records)
    assert metrics["best_at_10"] == 0.5 + 0.01 * 9  # episode 9 (within budget), not episode 8 (over budget, 0.88)
    assert metrics["best_at_30"] == 0.5 + 0.01 * 28  # episode 29 is over budget, 28 is the last within it before 30
    assert metrics["best"]["episode"] == 39
    assert metrics["screening"]["episodes"] == 30
    assert metrics["screening"]["kendall_tau"] == 1.0

    unscreened = run_metrics("random", [_record(i, 0.5, True) for i in range(5)])
    assert unscreened["screening"] is None
    assert unscreened["best_at_10"] == unscreened["best_at_30"] == 0.5  # fewer episodes than 10: the best of those played

    seeds = []
    for seed, m in enumerate((metrics, unscreened)):
        m = dict(m)
        m.pop("best")
        seeds.append({"seed": seed, "wall_seconds_per_episode": 10.0, **m})
    cell = {"seeds": seeds}
    aggregate(cell)
    assert cell["best_at_10"] == [metrics["best_at_10"], 0.5]
    assert cell["screening_kendall_tau"] == [1.0]  # the unscreened seed has none


def _archive_of(module, run: dict, cpu: str, records: list[dict] | None = None, **header) -> None:
    module.write_archive(run, {"run": run, "state": {}, "config": {}, "cpu": cpu, **header}, records or [])


def test_a_search_on_another_cpu_than_its_sets_archives_is_refused_unless_tagged(tmp_path, monkeypatch) -> None:
    from bench.search import run as module

    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr("hardware.protocol.cpu_model", lambda: "Intel(R) Xeon(R) Processor")
    args = module.parse_args(["--plan", "resnet56:0.33", "--methods", "sac,ppo", "--seeds", "1"])
    sac, ppo = module.plan(args)
    _archive_of(module, {**sac, "method": "tpe"}, "AMD EPYC")  # another method of the same set, searched on the EPYC
    with pytest.raises(module.MachineError, match=r"searched on AMD EPYC.*resnet56-b33-r16-sac-paced-s0.*--machine xeon"):
        module.check_machine([sac, ppo])
    # another budget's set, or every planned run archived already: nothing to refuse
    module.check_machine([{**sac, "budget": 0.4}])
    _archive_of(module, sac, "AMD EPYC")
    _archive_of(module, ppo, "AMD EPYC")
    module.check_machine([sac, ppo])

    tagged = module.plan(module.parse_args(["--plan", "resnet56:0.33", "--methods", "sac", "--seeds", "1", "--machine", "xeon"]))
    assert module.run_name(tagged[0]) == "resnet56-b33-r16-sac-paced-s0-mxeon"
    module.check_machine(tagged)  # a separate set: the EPYC's archives are not its
    _archive_of(module, {**tagged[0], "seed": 1}, "Intel(R) Xeon(R) Processor")
    module.check_machine(tagged)  # its own archives are from this CPU
    with pytest.raises(SystemExit):
        module.parse_args(["--machine", "Xeon 2"])


def test_a_refused_budget_is_archived_as_an_outcome_and_reported_with_its_floor(tmp_path, monkeypatch, capsys) -> None:
    import gzip
    import json
    import subprocess
    import sys

    from bench.search import run as module

    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "base_checkpoint", lambda model: "unused")
    monkeypatch.setattr(module, "POLL_S", 0.05)
    popen = subprocess.Popen  # the fakes' own processes (module.subprocess is this module: its Popen gets replaced)
    run = module.plan(module.parse_args(["--plan", "resnet56:0.33", "--methods", "sac", "--seeds", "1", "--machine", "xeon"]))[0]

    def refused(command, **kwargs):  # galen search's BudgetError: the range is saved in the run's state, exit 1
        run_dir = tmp_path / "runs" / module.run_name(run)
        run_dir.mkdir(parents=True)
        (run_dir / "state.json").write_text(json.dumps({"feasible_range": [0.336, 1.0], "feasible_extreme": "min keep, 8-bit"}))
        return popen([sys.executable, "-c", "raise SystemExit(1)"])

    monkeypatch.setattr(module.subprocess, "Popen", refused)
    module.search(run, episodes=80)
    header = json.loads(gzip.decompress(module.archive(run).read_bytes()).decode().splitlines()[0])
    assert header["refused"] == {"floor": 0.336, "extreme": "min keep, 8-bit"}
    assert "refused, the budget is below the floor (0.336)" in capsys.readouterr().out
    module.search(run, episodes=80)  # archived: not searched again (the fake would fail on the existing run dir)

    def crashed(command, **kwargs):  # any other failure is an error, not an outcome
        return popen([sys.executable, "-c", "raise SystemExit(1)"])

    other = {**run, "budget": 0.4}
    monkeypatch.setattr(module.subprocess, "Popen", crashed)
    with pytest.raises(subprocess.CalledProcessError):
        module.search(other, episodes=80)
    assert not module.archive(other).exists()

    monkeypatch.setattr(module, "REPO", tmp_path)  # write_readme writes REPO / bench / README.md
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "README.md").write_text("# bench\n")
    metrics = module.run_metrics("sac", [])
    metrics.pop("best")
    cell = {"seeds": [{"seed": 0, "wall_seconds_per_episode": None, "reach_episodes": None, "refused_floor": 0.336, **metrics}]}
    module.aggregate(cell)
    args = module.parse_args(["--results", "methods", "--machine", "xeon"])
    module.write_readme({"proxy_kendall_tau": {}, "resnet56": {"0.33": {"sac": cell}}}, [], args)
    text = (tmp_path / "bench" / "README.md").read_text()
    assert "<!-- methods-xeon:begin -->" in text and "the set searched on `--machine xeon`" in text
    assert "| resnet56 | 33% | sac | 1 | refused: floor 33.6% | - | - | - | - | - | - | - | - | ? |" in text


def test_a_namesake_cpu_is_told_apart_by_its_identity_and_stopped_by_its_floor(tmp_path, monkeypatch) -> None:
    """Two CPUs both named "AMD EPYC" (families 25 and 26): ResNet-56's floor 26.5% and 34.5%. An archive with the CPU's
    identity refuses the other at once; one with the name only lets the search start and stops it at its floor."""
    import json
    import platform
    import subprocess
    import sys
    import time

    from bench.search import run as module
    from hardware.protocol import cpu_identity, cpu_model

    here = cpu_identity()  # this machine's: its name, then on x86 its family, model and stepping
    assert here.startswith(cpu_model()) and (platform.machine() != "x86_64" or " (family " in here)
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "base_checkpoint", lambda model: "unused")
    monkeypatch.setattr(module, "POLL_S", 0.05)
    popen = subprocess.Popen  # the fakes' own processes (module.subprocess is this module: its Popen gets replaced)
    monkeypatch.setattr("hardware.protocol.cpu_model", lambda: "AMD EPYC")
    monkeypatch.setattr("hardware.protocol.cpu_identity", lambda: "AMD EPYC (family 26, model 2, stepping 1)")
    sac, tpe = module.plan(module.parse_args(["--plan", "resnet56:0.4", "--methods", "sac,tpe", "--seeds", "1"]))
    extreme = "min keep, 8-bit"
    old = {"feasible_range": [0.265, 1.0], "feasible_extreme": extreme}
    _archive_of(module, tpe, "AMD EPYC", state=old, cpu_id="AMD EPYC (family 25, model 17, stepping 1)")
    with pytest.raises(module.MachineError, match=r"searched on AMD EPYC \(family 25.*this machine is AMD EPYC \(family 26"):
        module.check_machine([sac])

    _archive_of(module, tpe, "AMD EPYC", state=old)  # recorded before the identity: the name only, which matches
    module.check_machine([sac])
    assert module.floor_mismatch(sac, 0.272, extreme) is None  # within the repeatability of one CPU's floor
    assert module.floor_mismatch(sac, 0.345, "every block dropped") is None  # another env's extreme: not comparable
    assert module.floor_mismatch({**sac, "round_to": 8}, 0.345, extreme) is None  # another set
    started = []

    def namesake(command, **kwargs):  # measures its floor, then would search for a minute
        run_dir = tmp_path / "runs" / module.run_name(sac)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "state.json").write_text(json.dumps({"feasible_range": [0.345, 1.0], "feasible_extreme": extreme}))
        started.append(popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        return started[-1]

    monkeypatch.setattr(module.subprocess, "Popen", namesake)
    begun = time.time()
    with pytest.raises(module.MachineError, match=r"floor \(min keep, 8-bit\) at 34.5%.*archives of its set at 26.5%-26.5%.*--machine TAG"):
        module.search(sac, episodes=80)
    assert time.time() - begun < 30 and started[0].poll() is not None  # stopped, not waited out
    assert not module.archive(sac).exists()  # nothing joined the set
    with pytest.raises(SystemExit, match="error: bench.search: resnet56-b40-r16-sac-paced-s0 measured its floor"):
        module.main(["--plan", "resnet56:0.4", "--methods", "sac", "--seeds", "1", "--only", "search"])
