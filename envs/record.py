"""The episode record: what a finished compression episode produced, one type for the whole data path.

The env's last step builds an :class:`EpisodeOutcome` (its ``to_dict()`` goes into the step's
``info``); the recorder (``agents.recorder``) adds the run's bookkeeping (:class:`EpisodeRecord`:
episode number, source, time) and writes it as one line of ``episodes.jsonl``; the RLlib callback
logs its metric fields (``METRIC_FIELDS``); reports, studies and benchmarks read the lines back
with :meth:`EpisodeRecord.from_dict` (older lines without a field read it as None). The field list
lives here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _field(doc: str, metric: bool = False) -> Any:
    return field(default=None, metadata={"doc": doc, "metric": metric})


@dataclass(frozen=True)
class EpisodeOutcome:
    """A finished episode as the env reports it (the reward and its parts, the policy, its costs and how it was measured)."""

    reward: float | None = _field("the env's reward (config reward: accuracy within budget, galen, amc, ...)", metric=True)
    accuracy: float | None = _field("validation accuracy of the compressed model (the per-episode proxy)", metric=True)
    reference_accuracy: float | None = _field("the uncompressed model's accuracy on the same images")
    cost_ratio: float | None = _field("cost / uncompressed cost in the objective's units (latency: the measured ratio)", metric=True)
    cost_over_target: float | None = _field("cost ratio / budget (<= 1: within budget)", metric=True)
    penalty: float | None = _field("what the reward took off the accuracy for the cost", metric=True)
    latency_ms: float | None = _field("median latency on the target (ms)", metric=True)
    latency_ratio: float | None = _field("latency / the uncompressed model's, measured interleaved", metric=True)
    latency_cached: bool | None = _field("whether the latency came from the cache")
    macs: int | None = _field("multiply-accumulates of the compressed model")
    bops: float | None = _field("bit operations (MACs x weight bits x activation bits)")
    weight_bytes: int | None = _field("weights' bytes at their precisions")
    artifact_bytes: int | None = _field("bytes of the deployable ONNX artifact")
    macs_ratio: float | None = _field("MACs / the uncompressed model's", metric=True)
    objective: str | None = _field("latency, macs, bops or bytes")
    target_ratio: float | None = _field("the budget (a ratio to the uncompressed model)")
    within_budget: bool | None = _field("cost_over_target <= 1")
    predicted_ratio: float | None = _field("the analytic (predictor) cost ratio of the policy")
    clamped_steps: int | None = _field("steps whose action the action wall changed")
    repaired: int | None = _field("decisions the repair pass lowered after the last step")
    filled: int | None = _field("decisions the fill pass raised to use the budget left")
    remeasured: int | None = _field("rounds of repair and re-measurement after a reading over budget")
    policy: dict[str, Any] | None = _field("the compression policy (keep ratios per group, precision per layer)")
    seconds: dict[str, float] | None = _field("wall seconds of the episode's parts (build, latency, ...)")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpisodeOutcome:
        """The outcome's fields of ``data`` (an env ``info`` or a record); other keys are ignored."""
        return cls(**{name: data.get(name) for name in cls.field_names()})

    def to_dict(self) -> dict[str, Any]:
        """Every field (None where the env did not compute it: a predicted latency has no ``latency_cached``)."""
        return {name: getattr(self, name) for name in self.field_names()}


METRIC_FIELDS = tuple(f.name for f in dataclasses.fields(EpisodeOutcome) if f.metadata["metric"])
BOOKKEEPING = ("episode", "source", "time")


@dataclass(frozen=True)
class EpisodeRecord:
    """One line of ``episodes.jsonl``: the run's numbering and the episode's source and time, its outcome, and what the
    writer added (``extra``: an RL read-out's iteration and checkpoint, ...)."""

    episode: int
    source: str
    time: float
    outcome: EpisodeOutcome
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpisodeRecord:
        known = set(BOOKKEEPING) | set(EpisodeOutcome.field_names())
        return cls(
            episode=int(data["episode"]),
            source=str(data["source"]),
            time=float(data["time"]),
            outcome=EpisodeOutcome.from_dict(data),
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        return {"episode": self.episode, "source": self.source, "time": self.time, **self.outcome.to_dict(), **self.extra}
