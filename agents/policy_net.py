"""The trained actor as a small ONNX file, and the final policy read out of it without Ray.

RLlib's own checkpoints are pickles, which we never load from a file we did not just write. Next
to every checkpoint the search writes ``actor.onnx`` (observation -> deterministic action in
[-1, 1]: tanh of the mean for SAC's squashed Gaussian, the clipped mean for PPO's Gaussian) and
``actor.json``. :class:`ActorNet` runs it with ONNX Runtime; :func:`rollout` drives an env with it
and returns the final policy. RLlib maps a normalised action a to the Box [0, 1] as (a + 1) / 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

ACTOR_ONNX = "actor.onnx"
ACTOR_META = "actor.json"


def export_actor(module: Any, algo: str, directory: str | Path, obs_dim: int, action_dim: int) -> Path:
    """Write the RLModule's deterministic actor to ``directory/actor.onnx`` (+ ``actor.json``)."""
    import io
    import warnings

    import onnx
    import torch

    class Actor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def forward(self, obs: torch.Tensor) -> torch.Tensor:  # (B, obs_dim) -> (B, action_dim)
            inputs = self.module.forward_inference({"obs": obs})["action_dist_inputs"]
            mean = inputs[..., :action_dim]
            return torch.tanh(mean) if algo == "sac" else torch.clamp(mean, -1.0, 1.0)

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    actor = Actor().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            actor,
            (torch.zeros(1, obs_dim),),
            buffer,
            dynamo=False,
            input_names=["obs"],
            output_names=["action"],
            dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}},
        )
    onnx.checker.check_model(onnx.load_from_string(buffer.getvalue()))
    (directory / ACTOR_ONNX).write_bytes(buffer.getvalue())
    meta = {"algo": algo, "obs_dim": obs_dim, "action_dim": action_dim, "action_map": "(a + 1) / 2 onto Box(0, 1)"}
    (directory / ACTOR_META).write_text(json.dumps(meta, indent=1))
    return directory / ACTOR_ONNX


class ActorNet:
    """A trained actor loaded from ``actor.onnx`` (no Ray, no pickle): observation -> action in [0, 1]."""

    def __init__(self, directory: str | Path) -> None:
        import onnxruntime as ort

        directory = Path(directory)
        if not (directory / ACTOR_ONNX).is_file():
            raise FileNotFoundError(f"{directory} has no {ACTOR_ONNX} (not a galen agent checkpoint)")
        self.meta = json.loads((directory / ACTOR_META).read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(directory / ACTOR_ONNX), options, providers=["CPUExecutionProvider"])

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, np.float32).reshape(1, -1)
        if obs.shape[1] != self.meta["obs_dim"]:
            raise ValueError(f"actor expects observations of size {self.meta['obs_dim']}, got {obs.shape[1]} (a different env?)")
        (action,) = self.session.run(None, {"obs": obs})
        return np.clip((action[0] + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)


def rollout(env: Any, actor: ActorNet, seed: int = 0) -> dict[str, Any]:
    """One deterministic episode of ``actor`` in ``env``; returns the final ``info`` (policy, accuracy, latency, ...)."""
    obs, _ = env.reset(seed=seed)
    while True:
        obs, _, terminated, truncated, info = env.step(actor.act(obs))
        if terminated or truncated:
            return info
