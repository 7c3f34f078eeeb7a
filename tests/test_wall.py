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


def test_an_int8_step_stays_allowed_while_an_int8_rest_at_a_middle_width_can_still_meet_the_limit() -> None:
    units = ["a", "b", "c", "d"]
    int8_cost = {0.25: 0.5, 0.5: 0.2, 0.75: 0.35, 1.0: 0.4}  # int8 fastest at half width, slow when narrow

    def cost(policy: CompressionPolicy) -> float:
        precisions = [policy.precision_of(u) for u in units]
        keeps = [policy.keep_ratio(u) for u in units]
        layers = sum(int8_cost[k] if p == INT8 else k**2 for k, p in zip(keeps, precisions, strict=True))
        return layers + 0.5 * sum(p != q for p, q in zip(precisions, precisions[1:], strict=False))

    options = {u: [Option(k, p) for p in (INT8, FP32) for k in (0.25, 0.5, 0.75, 1.0)] for u in units}
    wall = Wall(units, options, {u: u for u in units}, {u: u for u in units}, cost)
    # the corners alone: int8 first, then the cheapest corner (narrow float) pays a switch: 0.2 + 3 x 0.0625 + 0.5 > 0.85
    assert cost(wall.rest_at_most(wall._with(CompressionPolicy(), "a", Option(0.5, INT8)), 1)) > 0.85
    allowed = wall.bounds(CompressionPolicy(), 0, 0.85)
    assert Option(0.5, INT8) in allowed  # int8 at half width everywhere costs 0.8
    decided = CompressionPolicy()
    for index, unit in enumerate(units):  # int8 at half width, step by step, is allowed to the end
        assert Option(0.5, INT8) in wall.bounds(decided, index, 0.85)
        decided = wall._with(decided, unit, Option(0.5, INT8))
    assert cost(decided) == pytest.approx(0.8)


def test_unify_precision_gives_a_float_island_the_precision_around_it_and_keeps_every_width() -> None:
    options = {u: [Option(k, p) for p in (INT8, FP32) for k in (0.5, 1.0)] for u in UNITS}
    wall = Wall(UNITS, options, {u: u for u in UNITS}, {u: u for u in UNITS}, _cost)
    island = CompressionPolicy({"a": 0.5, "b": 1.0, "c": 0.5}, {"a": INT8, "b": FP32, "c": INT8})
    unified, moves = wall.unify_precision(island)
    assert moves == 1 and [unified.precision_of(u) for u in UNITS] == [INT8] * 3 and unified.keep == island.keep
    assert _cost(unified) < _cost(island)  # two switches less
    assert wall.unify_precision(unified) == (unified, 0)
