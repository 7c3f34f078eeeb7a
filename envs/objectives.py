"""The registry of search objectives (``env.objective``): what a policy's cost is and how it is obtained.

``latency`` is measured on the target (the cache first; the per-layer predictor drives the wall); the others are
computed from the compressed model (:class:`compression.costs.CompressionCosts`, field ``cost_field``), so they need
no device. Adding an objective is one entry here (plus its cost field, when it is a new one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Objective:
    name: str
    measured: bool  # timed on the target; else computed from the compressed model's costs
    cost_field: str | None  # the CompressionCosts field of an analytic objective
    real_kernels_only: bool  # precision options: only what the target runs with real kernels (CPUs: 8 and 32 bits)
    summary: str

    def cost(self, costs: Any) -> float:
        """The analytic objective's value of a model's costs (a ``CompressionCosts``)."""
        if self.cost_field is None:
            raise ValueError(f"objective {self.name!r} is measured on the target, not computed from the model's costs")
        return float(getattr(costs, self.cost_field))


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("latency", True, None, True, "latency measured on the target (batch 1), a ratio to the uncompressed model's"),
        Objective("macs", False, "macs", False, "multiply-accumulates of one inference"),
        Objective("bops", False, "bops", False, "bit operations: MACs weighted by weight bits x activation bits"),
        Objective("bytes", False, "weight_bytes", False, "bytes of the weights at their precisions"),
    )
}
