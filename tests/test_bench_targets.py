"""The cross-target benchmark's plan and verdicts (bench.targets); its searches and timings are the benchmark's own."""

from __future__ import annotations

import pytest

from bench import targets as bench_targets
from bench.search import run as search_bench

TARGETS = ["local-cpu", "openvino-cpu", "local-cpu-2t"]


def _row(accuracy: float, **ratios: float) -> dict:
    return {
        "accuracy": accuracy,
        "accuracy_after_finetune": accuracy,
        "on": {t.replace("_", "-"): {"latency_ratio": r} for t, r in ratios.items()},
    }


def test_each_target_searches_its_own_run_and_local_cpu_reuses_the_search_benchmarks_runs() -> None:
    args = bench_targets.parse_args(["--plan", "resnet56:0.4", "--targets", ",".join(TARGETS)])
    names = [search_bench.run_name(r) for r in bench_targets.runs(args)]
    # local-cpu is the search benchmark's own run name (its archive is reused), the others carry their target
    assert names == [
        "resnet56-b40-r16-sac-paced-s0",
        "resnet56-b40-r16-topenvino-cpu-sac-paced-s0",
        "resnet56-b40-r16-tlocal-cpu-2t-sac-paced-s0",
    ]
    assert [r["target"] for r in bench_targets.runs(args)] == TARGETS


def test_the_claim_holds_only_where_the_own_policy_is_not_beaten_on_its_target() -> None:
    rows = {
        # each policy fits its own target's budget (0.40) and not the others'
        "local-cpu": _row(0.92, local_cpu=0.39, openvino_cpu=0.47, local_cpu_2t=0.45),
        "openvino-cpu": _row(0.92, local_cpu=0.44, openvino_cpu=0.39, local_cpu_2t=0.43),
        # the two-thread target's own policy is less accurate than local-cpu's, which also fits its budget there
        "local-cpu-2t": _row(0.90, local_cpu=0.41, openvino_cpu=0.50, local_cpu_2t=0.38),
    }
    rows["local-cpu"]["on"]["local-cpu-2t"]["latency_ratio"] = 0.40
    out = bench_targets.verdicts({"rows": rows}, TARGETS, 0.40, 0.003)
    assert out["local-cpu"]["holds"] is True
    assert out["local-cpu"]["against"]["openvino-cpu"].startswith("over budget on local-cpu (0.440 > 0.40)")
    # 0.41 counts as within the budget (the 3% repeatability), but it is less accurate
    assert out["local-cpu"]["against"]["local-cpu-2t"] == "less accurate (90.00% vs 92.00%)"
    assert out["openvino-cpu"]["holds"] is True
    assert out["local-cpu-2t"]["holds"] is False
    assert "beats the own policy" in out["local-cpu-2t"]["against"]["local-cpu"]
    # a target whose own policy misses its budget there: no claim either
    rows["openvino-cpu"]["on"]["openvino-cpu"]["latency_ratio"] = 0.45
    assert bench_targets.verdicts({"rows": rows}, TARGETS, 0.40, 0.003)["openvino-cpu"]["holds"] is False
    # a target whose timings repeat only within 20%: a policy 10% faster there is a tie, not a win, and 0.45 fits a 0.40 budget
    for row, readings in zip(rows.values(), ([0.38, 0.46], [0.39, 0.47], [0.35, 0.42]), strict=True):
        row["on"]["openvino-cpu"]["readings"] = readings
    rows["openvino-cpu"]["on"]["openvino-cpu"]["latency_ratio"] = 0.45
    rows["local-cpu"]["on"]["openvino-cpu"]["latency_ratio"] = 0.41
    noisy = bench_targets.verdicts({"rows": rows}, TARGETS, 0.40, 0.003)["openvino-cpu"]
    assert noisy["repeatability"] == pytest.approx(0.47 / 0.39 - 1)
    assert noisy["own_within_budget"] is True and noisy["against"]["local-cpu"].startswith("a tie")
    # a target without a searched policy is said so
    del rows["openvino-cpu"]
    assert bench_targets.verdicts({"rows": rows}, TARGETS, 0.40, 0.003)["openvino-cpu"] == {
        "holds": None,
        "why": "no policy searched for this target",
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--targets", "local-cpu,tpu"], "--targets: unknown hardware target 'tpu'; known targets: arm-board, local-cpu"),
        (["--only", "predictor"], "--only predictor: give --predictor-policies N (N >= 1)"),
        (["--plan", "resnet56:40"], "--plan: 'resnet56:40' is not model:budget with a budget in (0, 1), e.g. resnet56:0.4"),
    ],
)
def test_bad_arguments_name_the_flag(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_targets.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_predictor_errors_are_kept_per_model_and_shown_next_to_the_timings_own() -> None:
    first = {"local-cpu": {"evaluated": 50, "mape_ratio": 13.9}, "local-cpu-2t": {"error": "RuntimeError: x"}}
    # the first run's layout (target -> result, on ResNet-20) is read as ResNet-20's
    assert bench_targets._predictor_by_model(first) == {"resnet20": first}
    by_model = {"resnet20": first, "resnet56": {"local-cpu-2t": {"evaluated": 50, "mape_ratio": 21.0, "mape_repeat": 18.5, "round_to": 16}}}
    assert bench_targets._predictor_by_model(by_model) == by_model
    args = bench_targets.parse_args(["--plan", "resnet56:0.5"])
    feasible = {
        "resnet56": {
            "local-cpu": {"floor": 0.268, "extreme": "min keep, 8-bit"},
            "local-cpu-2t": {"floor": 0.48, "extreme": "min keep, 8-bit"},
        }
    }
    out = {"environment": {"cpu": "cpu", "date": "d"}, "targets": TARGETS, "cells": {}, "predictor": by_model, "feasible": feasible}
    lines = bench_targets.readme_lines(out, [], args)
    assert "- resnet56: local-cpu 26.8% (min keep, 8-bit); local-cpu-2t 48.0% (min keep, 8-bit)" in lines
    assert "- resnet20 on local-cpu: 13.9% on 50 random policies (channels in multiples of 8)" in lines
    assert "- resnet20 on local-cpu-2t: failed (RuntimeError: x)" in lines
    assert "- resnet56 on local-cpu-2t: 21.0% on 50 random policies (channels in multiples of 16), the timing's own 18.5%" in lines


def test_writes_hours_apart_are_pooled_and_their_spread_counts_when_larger_than_one_writes() -> None:
    first = {"latency_ratio": 0.090, "readings": [0.090, 0.092, 0.093]}
    second = {"latency_ratio": 0.100, "readings": [0.100, 0.101, 0.103]}
    one = bench_targets.pooled(first, None, "09:00", "?")
    assert one["latency_ratio"] == 0.090 and len(one["writes"]) == 1
    two = bench_targets.pooled(second, first, "11:00", "08:00")  # an earlier write of the old layout (no "writes")
    assert [w["at"] for w in two["writes"]] == ["08:00", "11:00"]
    assert two["latency_ratio"] == pytest.approx(0.095) and len(two["readings"]) == 6
    three = bench_targets.pooled({"latency_ratio": 0.094, "readings": [0.094, 0.095]}, two, "14:00", "?")
    assert [w["lowest"] for w in three["writes"]] == [0.090, 0.100, 0.094] and three["latency_ratio"] == 0.094
    failed = bench_targets.pooled({"latency_ratio": float("nan"), "error": "x"}, two, "14:00", "?")
    assert "writes" not in failed and failed["error"] == "x"  # a failed measurement is not pooled
    # within one write the readings repeat within 3%; between writes within 11%: the verdicts use 11%
    cell = {"rows": {"a": {"on": {"local-cpu": two}}, "b": {"on": {"local-cpu": bench_targets.pooled(second, first, "11:00", "08:00")}}}}
    spread = bench_targets.repeatability(cell, "local-cpu")
    assert spread["within_write"] == pytest.approx((0.093 / 0.090 + 0.103 / 0.100) / 2 - 1)
    assert spread["run_to_run"] == pytest.approx(0.100 / 0.090 - 1)
    assert bench_targets.spread(cell, "local-cpu") == pytest.approx(0.100 / 0.090 - 1)
    # one write only: the within-write spread (at least 3%)
    assert bench_targets.spread({"rows": {"a": {"on": {"local-cpu": one}}}}, "local-cpu") == pytest.approx(0.0333, abs=1e-3)
