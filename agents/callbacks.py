"""RLlib callbacks: every finished episode goes to the run's recorder and into RLlib's metrics.

The recorder (:mod:`agents.recorder`) writes ``episodes.jsonl``, the Pareto set and the best policy;
the metrics (``env_runners/galen_<name>``, smoothed over the last episodes) reach Tune's results,
ASHA and W&B.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.rllib.callbacks.callbacks import RLlibCallback

log = logging.getLogger(__name__)

METRICS = ("reward", "accuracy", "cost_ratio", "cost_over_target", "penalty", "latency_ratio", "latency_ms", "macs_ratio")


class EpisodeCallback(RLlibCallback):
    """Sends each finished episode's final ``info`` to the recorder actor named ``recorder_name``."""

    recorder_name: str | None = None
    source: str = "rl"

    @classmethod
    def bound(cls, recorder_name: str | None, source: str = "rl") -> type[EpisodeCallback]:
        """A subclass bound to one run's recorder (RLlib instantiates callbacks itself, without arguments)."""
        return type("BoundEpisodeCallback", (cls,), {"recorder_name": recorder_name, "source": source})

    def __init__(self) -> None:
        super().__init__()
        self._recorder: Any = None

    def _actor(self) -> Any:
        if self._recorder is None and self.recorder_name:
            import ray

            self._recorder = ray.get_actor(self.recorder_name, namespace="galen")
        return self._recorder

    def on_episode_end(self, *, episode: Any, metrics_logger: Any = None, **kwargs: Any) -> None:
        info = episode.get_infos(-1)
        if "reward" not in info:  # not a finished compression episode (cannot happen with our envs)
            return
        if metrics_logger is not None:
            for name in METRICS:
                value = info.get(name)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    metrics_logger.log_value(f"galen_{name}", float(value), window=10)
            metrics_logger.log_value("galen_within_budget", float(bool(info.get("within_budget"))), window=10)
        actor = self._actor()
        if actor is not None:
            import ray

            # Blocking on purpose: the episode is on disk before the runner samples the next one.
            ray.get(actor.record.remote(info, self.source))
