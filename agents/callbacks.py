"""RLlib callbacks: every finished episode goes to the run's recorder and into RLlib's metrics.

The recorder (:mod:`agents.recorder`) writes ``episodes.jsonl``, the Pareto set and the best policy;
the metrics (``env_runners/galen_<name>``, smoothed over the last episodes) reach Tune's results,
ASHA and W&B.

With ``broadcast`` (SAC) the episode is rewritten before it leaves the env runner: every step gets
the final reward less a moving baseline, divided by a moving spread (AMC/HAQ's broadcast reward
with a moving-average baseline), and every step's action becomes the one the env's action wall
applied (``info["applied_action"]``, mapped to RLlib's normalised [-1, 1]).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from ray.rllib.callbacks.callbacks import RLlibCallback

from envs.record import METRIC_FIELDS

log = logging.getLogger(__name__)

METRICS = METRIC_FIELDS  # the episode record's metric fields (envs.record)


class EpisodeCallback(RLlibCallback):
    """Sends each finished episode's final ``info`` to the recorder actor named ``recorder_name``."""

    recorder_name: str | None = None
    source: str = "rl"
    broadcast: bool = False

    @classmethod
    def bound(cls, recorder_name: str | None, source: str = "rl", broadcast: bool = False) -> type[EpisodeCallback]:
        """A subclass bound to one run's recorder (RLlib instantiates callbacks itself, without arguments)."""
        return type("BoundEpisodeCallback", (cls,), {"recorder_name": recorder_name, "source": source, "broadcast": broadcast})

    def __init__(self) -> None:
        super().__init__()
        self._recorder: Any = None
        self.baseline = RewardBaseline()

    def _actor(self) -> Any:
        if self._recorder is None and self.recorder_name:
            import ray

            self._recorder = ray.get_actor(self.recorder_name, namespace="galen")
        return self._recorder

    def on_episode_end(self, *, episode: Any, metrics_logger: Any = None, **kwargs: Any) -> None:
        info = episode.get_infos(-1)
        if "reward" not in info:  # not a finished compression episode (cannot happen with our envs)
            return
        if self.broadcast:
            rewrite_episode(episode, self.baseline.normalise(float(info["reward"])))
        info = {k: v for k, v in info.items() if k not in ("applied_action", "unit", "guarded")}
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


class RewardBaseline:
    """Exponential moving mean and spread of the final rewards (window about 1 / ``alpha`` episodes)."""

    def __init__(self, alpha: float = 0.1, min_spread: float = 0.01) -> None:
        self.alpha, self.min_spread = alpha, min_spread
        self.mean: float | None = None
        self.var = 0.0

    def normalise(self, reward: float) -> float:
        """(reward - mean) / spread with the statistics *before* this reward; then the statistics take it in."""
        if self.mean is None:
            self.mean, self.var = reward, 0.0
            return 0.0
        value = (reward - self.mean) / max(math.sqrt(self.var), self.min_spread)
        delta = reward - self.mean
        self.mean += self.alpha * delta
        self.var = (1 - self.alpha) * (self.var + self.alpha * delta * delta)
        return float(np.clip(value, -5.0, 5.0))


def rewrite_episode(episode: Any, reward: float) -> None:
    """Every step gets ``reward``; every action becomes the applied one (env [0, 1] -> RLlib's normalised [-1, 1])."""
    steps = len(episode)
    infos = episode.get_infos()  # steps + 1: the reset's info first
    applied = [info.get("applied_action") for info in infos[1:]]
    if all(a is not None for a in applied):
        episode.set_actions(new_data=[np.asarray(a, np.float32) * 2.0 - 1.0 for a in applied], at_indices=slice(0, steps))
    episode.set_rewards(new_data=[float(reward)] * steps, at_indices=slice(0, steps))
