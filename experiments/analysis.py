"""Scoring one search run's episodes against its budget (pure functions on ``episodes.jsonl`` records): used by
``galen study report`` and the Galen benchmark.

- Only the searched episodes count (an RL run's closing ``<algo>-deterministic`` read-out is left
  out, so every method is scored on the same episode budget).
- Within budget: the measured cost ratio (latency / uncompressed latency, from the search) is at
  most the budget. The best policy within budget is the most accurate one (validation accuracy,
  as the search saw it); ties go to the cheaper one.
- Reaching 95%: the first episode at which the best accuracy within budget so far is at least 95%
  of the run's final best; its wall time counts from the first episode and leaves out pauses of
  more than ``PAUSE_S`` (a stopped and resumed run).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from agents.recorder import pareto_front as pareto  # noqa: F401  (the front the search records, reused for plots)

PAUSE_S = 300.0


def searched(records: list[dict[str, Any]], episodes: int | None = None) -> list[dict[str, Any]]:
    """The searched episodes (no deterministic read-out), the first ``episodes`` of them."""
    rows = [r for r in records if not r["source"].endswith("-deterministic")]
    return rows[:episodes] if episodes is not None else rows


def within(record: dict[str, Any], budget: float) -> bool:
    return record["cost_ratio"] <= budget


def best_within(records: list[dict[str, Any]], budget: float) -> dict[str, Any] | None:
    ok = [r for r in records if within(r, budget)]
    return max(ok, key=lambda r: (r["accuracy"], -r["cost_ratio"])) if ok else None


def lowest_cost(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    return min(records, key=lambda r: (r["cost_ratio"], -r["accuracy"])) if records else None


def best_so_far(records: list[dict[str, Any]], budget: float) -> list[float]:
    """Per episode: the best accuracy within budget so far (NaN before the first such episode)."""
    best, out = -math.inf, []
    for r in records:
        if within(r, budget):
            best = max(best, r["accuracy"])
        out.append(best if best > -math.inf else math.nan)
    return out


def active_seconds(records: list[dict[str, Any]]) -> list[float]:
    """Wall seconds from the start of the first episode to the end of each, pauses over PAUSE_S left out."""
    times = [r["time"] for r in records]
    if not times:
        return []
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    typical = statistics.median([s for s in steps if s <= PAUSE_S] or [0.0])
    out, total = [], typical  # the first episode's own duration: a typical one
    for i in range(len(times)):
        if i:
            step = steps[i - 1]
            total += step if step <= PAUSE_S else typical
        out.append(total)
    return out


def reach(records: list[dict[str, Any]], budget: float, fraction: float = 0.95) -> tuple[int, float] | None:
    """(episodes, wall seconds) until the best within budget first reached ``fraction`` of its final value."""
    curve = best_so_far(records, budget)
    final = max((v for v in curve if not math.isnan(v)), default=None)
    if final is None:
        return None
    seconds = active_seconds(records)
    for i, v in enumerate(curve):
        if not math.isnan(v) and v >= fraction * final:
            return i + 1, seconds[i]
    return None


def cache_hit_rate(records: list[dict[str, Any]]) -> float | None:
    return sum(bool(r.get("latency_cached")) for r in records) / len(records) if records else None


def score(records: list[dict[str, Any]], budget: float, episodes: int | None = None) -> dict[str, Any]:
    """Everything the benchmark reports about one run under one budget (before re-measuring)."""
    rows = searched(records, episodes)
    best = best_within(rows, budget)
    low = lowest_cost(rows)
    reached = reach(rows, budget)
    return {
        "episodes": len(rows),
        "within": sum(within(r, budget) for r in rows),
        "best": _brief(best),
        "lowest_cost": _brief(low),
        "reach_episodes": reached[0] if reached else None,
        "reach_seconds": reached[1] if reached else None,
        "wall_seconds": active_seconds(rows)[-1] if rows else None,
        "cache_hit_rate": cache_hit_rate(rows),
        "best_so_far": best_so_far(rows, budget),
    }


def _brief(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    keys = ("episode", "source", "accuracy", "cost_ratio", "latency_ms", "macs", "macs_ratio", "bops", "artifact_bytes", "reward")
    return {k: record.get(k) for k in keys}
