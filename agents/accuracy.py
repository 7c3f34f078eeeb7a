"""An accuracy predictor (APQ-style): from a policy to the accuracy its episode will score, learned as the search goes.

APQ trains a predictor of a compressed network's accuracy from its architecture and precision encoding, so that an
evolutionary search scores candidates without evaluating each. Here: ridge regression on the policy's encoding (per
pruning group its keep ratio and log keep ratio, per layer the log2 of its weight and activation bits), refitted on
every episode the run has recorded (and, optionally, episodes of earlier runs of the same model: the transfer APQ makes
from its float predictor). Replayed over this project's archived searches (``python -m bench.search.predictor``) it
ranks each run's next episodes with a median Kendall tau of 0.70 (ResNet-20) and 0.48 (ResNet-56) from the run's own
episodes, 0.78 and 0.71 with the other runs of the same model: enough to skip candidates it is sure are bad, so a
method *screens* ``agent.screen`` candidates per episode and plays only the one predicted best.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from compression.policy import CompressionPolicy


class AccuracyPredictor:
    """Ridge regression from :meth:`encode` to accuracy; refit with :meth:`fit`, queried with :meth:`predict`."""

    MIN_EPISODES = 10  # fewer than this: no prediction (a method plays its candidates unscreened)

    def __init__(self, groups: Iterable[str], layers: Iterable[str], ridge: float = 1.0) -> None:
        self.groups, self.layers, self.ridge = list(groups), list(layers), ridge
        self._model: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None = None
        self.samples = 0

    def encode(self, policy: CompressionPolicy | dict[str, Any]) -> np.ndarray:
        if isinstance(policy, dict):
            policy = CompressionPolicy.from_dict(policy)
        keep = [policy.keep_ratio(g) for g in self.groups]
        bits = [(policy.precision_of(n).weight_bits, policy.precision_of(n).activation_bits) for n in self.layers]
        return np.array(
            keep + [math.log(k) for k in keep] + [math.log2(b) / 5 for pair in bits for b in pair],
            np.float64,
        )

    def fit(self, records: Iterable[dict[str, Any]]) -> AccuracyPredictor:
        """Refit on every record with a policy and an accuracy (a run's episodes, earlier runs' too)."""
        rows = [(self.encode(r["policy"]), float(r["accuracy"])) for r in records if r.get("policy") and r.get("accuracy") is not None]
        if not rows:
            return self.fit_arrays(np.zeros((0, 0)), np.zeros(0))
        return self.fit_arrays(np.stack([f for f, _ in rows]), np.array([a for _, a in rows]))

    def fit_arrays(self, x: np.ndarray, y: np.ndarray) -> AccuracyPredictor:
        """Refit on encoded policies ``x`` (rows of :meth:`encode`) and their accuracies ``y``."""
        self.samples = len(y)
        if self.samples < self.MIN_EPISODES:
            self._model = None
            return self
        mean, scale = x.mean(0), x.std(0) + 1e-6
        z = (x - mean) / scale
        weights = np.linalg.solve(z.T @ z + self.ridge * np.eye(z.shape[1]), z.T @ (y - y.mean()))
        self._model = (mean, scale, weights, float(y.mean()))
        return self

    @property
    def ready(self) -> bool:
        return self._model is not None

    def predict(self, policies: Iterable[CompressionPolicy | dict[str, Any]]) -> np.ndarray:
        if self._model is None:
            raise RuntimeError(f"the accuracy predictor has {self.samples} episodes, fewer than {self.MIN_EPISODES}: no prediction yet")
        mean, scale, weights, bias = self._model
        x = np.stack([self.encode(p) for p in policies])
        return ((x - mean) / scale) @ weights + bias

    @classmethod
    def for_env(cls, env: Any, ridge: float = 1.0) -> AccuracyPredictor:
        structure = env.ctx.structure
        return cls([g.name for g in structure.groups], structure.layer_names, ridge)


def rank_agreement(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Kendall tau between the accuracy predicted before each screened episode was played and the accuracy it scored."""
    pairs = [(r["predicted_accuracy"], r["accuracy"]) for r in records if r.get("predicted_accuracy") is not None]
    if len(pairs) < 3:
        return None
    from scipy.stats import kendalltau

    tau = kendalltau([p for p, _ in pairs], [a for _, a in pairs])[0]
    return {"kendall_tau": None if math.isnan(tau) else float(tau), "episodes": len(pairs)}
