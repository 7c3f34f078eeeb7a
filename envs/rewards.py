"""Rewards of a finished episode. C is the objective's cost, T = target_ratio x C(uncompressed), acc in [0, 1].

- ``accuracy`` (default): R = acc if C <= T, else acc - 5 |C/T - 1| (the action wall keeps episodes within
  budget; the penalty only steers away from the edge where the measurement lands over it)
- ``galen`` (Galen's default): R = acc - 5 |C/T - 1|
- ``constrained-soft``: R = acc if C <= T, else acc (C/T)^(-0.05)
- ``constrained-hard``: R = acc if C <= T, else acc - 5 |C/T - 1|
- ``amc`` (AMC): R = -(1 - acc) log(C), with C in natural units: microseconds for latency, counts for
  MACs and BOPs, bytes for size (all >= 1 for any real model, so log(C) > 0)
"""

from __future__ import annotations

import math
from collections.abc import Callable


def _galen(accuracy: float, over: float, cost: float) -> tuple[float, float]:
    penalty = 5 * abs(over - 1)
    return accuracy - penalty, penalty


def _constrained_soft(accuracy: float, over: float, cost: float) -> tuple[float, float]:
    factor = 1.0 if over <= 1 else over**-0.05
    return accuracy * factor, accuracy * (1 - factor)


def _constrained_hard(accuracy: float, over: float, cost: float) -> tuple[float, float]:
    penalty = 0.0 if over <= 1 else 5 * abs(over - 1)
    return accuracy - penalty, penalty


def _amc(accuracy: float, over: float, cost: float) -> tuple[float, float]:
    return -(1 - accuracy) * math.log(max(cost, 1.0)), 0.0


# name -> (accuracy, C/T, C in natural units) -> (reward, penalty). Adding a reward is one entry here (the config's
# allowed values and the env read this registry).
REWARDS: dict[str, Callable[[float, float, float], tuple[float, float]]] = {
    "accuracy": _constrained_hard,
    "galen": _galen,
    "constrained-soft": _constrained_soft,
    "constrained-hard": _constrained_hard,
    "amc": _amc,
}


def reward_parts(kind: str, accuracy: float, cost_ratio: float, cost: float, target_ratio: float) -> dict[str, float]:
    """The reward and its parts: accuracy, C/C(uncompressed), C/T, and the penalty (what the cost took off the accuracy).

    ``cost_ratio`` is C / C(uncompressed) (for latency: the interleaved measurement's ratio), ``cost`` C in
    natural units (used by ``amc`` only).
    """
    if kind not in REWARDS:
        raise ValueError(f"unknown reward {kind!r}; allowed: {', '.join(REWARDS)}")
    over = cost_ratio / target_ratio  # C / T
    reward, penalty = REWARDS[kind](accuracy, over, cost)
    return {"reward": reward, "accuracy": accuracy, "cost_ratio": cost_ratio, "cost_over_target": over, "penalty": penalty}
