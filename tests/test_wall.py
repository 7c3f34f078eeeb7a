"""The action wall's repair pass on a cost model shaped like an int8-capable CPU (no model, no measurement)."""

from __future__ import annotations

import pytest

from compression.policy import CompressionPolicy, Precision
from envs.wall import Option, Wall

INT8, FP32 = Precision(8, 8), Precision(32, 32)
UNITS = ["a", "b", "c"]


def _cost(policy: CompressionPolicy) -> float:
    """int8 layers cost 0.6 at any width (narrow int8 is no faster), float ones keep^2, each int8/float switch 0.5."""
    precisions = [policy.precision_of(u) for u in UNITS]
    layers = sum(0.6 if p == INT8 else policy.keep_ratio(u) ** 2 for u, p in zip(UNITS, precisions, strict=True))
    return layers + 0.5 * sum(p != q for p, q in zip(precisions, precisions[1:], strict=False))


def test_repair_leaves_a_local_minimum_of_single_moves_by_moving_a_run_of_units_to_the_cheapest_corner() -> None:
    options = {u: [Option(k, p) for p in (INT8, FP32) for k in (0.5, 1.0)] for u in UNITS}
    wall = Wall(UNITS, options, {u: u for u in UNITS}, {u: u for u in UNITS}, _cost)
    int8 = CompressionPolicy({}, {u: INT8 for u in UNITS})
    assert _cost(int8) == pytest.approx(1.8)
    # no single unit's option is cheaper: narrowing int8 saves nothing, one float layer adds two switches
    assert all(_cost(wall._with(int8, u, o)) >= 1.8 - 1e-9 for u in UNITS for o in options[u])
    repaired, moves = wall.repair(int8, 1.0, lambda unit, option: 0.0)
    assert _cost(repaired) <= 1.0 and moves >= 1
    assert [repaired.precision_of(u) for u in UNITS] == [FP32] * 3
    # a limit below the cost model's floor (all narrow float: 0.75) ends at the floor instead of looping
    floor, _ = wall.repair(int8, 0.1, lambda unit, option: 0.0)
    assert _cost(floor) == pytest.approx(0.75)
