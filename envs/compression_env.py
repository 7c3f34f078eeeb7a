"""Pruning, quantization and joint compression as Gymnasium environments (after Galen's three agents)."""

from __future__ import annotations

import math
import time
from typing import Any

import gymnasium as gym
import numpy as np

from compression.finetune import finetune, recalibrate_batch_norm
from compression.pipeline import Compressed, build, compress
from compression.plan import layer_specs, planned_structure
from compression.policy import CompressionPolicy, Precision
from compression.pruning import kept_channels
from envs.config import EnvConfig
from envs.context import EnvContext
from envs.rewards import reward_parts
from envs.sensitivity import KEEP_RATIOS

ACTION_DIMS = {"prune": 1, "quantize": 2, "joint": 3}
STATIC_FEATURES = 8
OBS_LIMIT = 10.0


class CompressionEnv(gym.Env):
    """Choose a per-layer compression policy one decision unit at a time; scored when the last decision is made.

    ## Description

    A trained model (from the checkpoint store or a checkpoint directory) is compressed for a
    hardware target. Each step decides one unit: a pruning group (``galen/Prune-v0``), a quantizable
    layer (``galen/Quantize-v0``) or a layer with both (``galen/Joint-v0``; the keep ratio of a group
    is decided at its first layer and is ignored at the group's other layers and at output layers).
    After the last decision the policy is applied for real: physical pruning, batch-norm
    recalibration, an optional short fine-tune with simulated quantization, the deployable ONNX
    artifact (int8 kernels where asked), its accuracy on the validation subset (ONNX Runtime), and
    its latency on the target from the hardware layer (cache first).

    ## Action Space

    ``Box(0, 1, (k,))``: k = 1 (keep ratio), 2 (weight and activation precision) or 3 (keep, weight,
    activation). Keep ratio ``min_keep + a (1 - min_keep)``, rounded to whole multiples of
    ``round_to`` channels. Precision: ``a`` indexes the options sorted from most compressed to float
    (for latency on a CPU target: 8 or 32 bits; for MACs, BOPs or bytes: 2..8 or 32). Action 1
    everywhere is no compression.

    ## Observation Space

    ``Box(-10, 10, (d,))``, per step: step index / units; the layer's MACs share (its BOPs share at
    fp32), log in/out channels, kernel, stride, log parameters, MACs before and after it as
    fractions of the total (standardised over the layers with statistics fixed when the env is
    built); its group's pruning sensitivity at keep 1.0..0.1 and its quantization sensitivity per
    precision option (log(1 + 100 KL)); whether its keep ratio is decided here; the MACs of the
    decided part so far as a fraction of the total; the previous action.

    ## Reward

    0 until the last step, then the configured reward (``envs.rewards``): ``galen`` acc - 5|C/T - 1|,
    ``constrained-soft``, ``constrained-hard`` or ``amc``, where C is latency, MACs, BOPs or bytes and
    T = target_ratio x C(uncompressed).

    ## Episode End

    ``terminated=True`` after the last unit (no truncation). The final ``info`` holds the policy
    (JSON), accuracy and the uncompressed model's accuracy, latency in ms and as a ratio, MACs,
    BOPs, weight and artifact bytes, the reward's parts, and timings.

    ## Arguments

    One ``EnvConfig`` (or a dict of its fields, as RLlib passes ``env_config``): model, dataset,
    checkpoint, target, objective, target_ratio, reward, budget_guard, latency_source, val_size,
    finetune_steps, seed, and the rest documented in ``envs.config``.
    """

    metadata = {"render_modes": []}
    kind = "joint"

    def __init__(self, config: EnvConfig | dict[str, Any] | None = None, **overrides: Any) -> None:
        if isinstance(config, EnvConfig):
            data = config.to_dict()
        else:
            data = dict(config or {})
        data.update(overrides)
        data["kind"] = self.kind
        self.config = EnvConfig.from_dict(data)
        self.ctx = EnvContext.get(self.config)
        s = self.ctx.structure
        if self.kind == "prune":
            self.units = [g.name for g in s.groups]  # a group is named after its first layer
        else:
            self.units = list(s.layer_names)
        self.layer_index = {name: i for i, name in enumerate(s.layer_names)}
        self.group_heads = {g.name: g for g in s.groups}
        k = ACTION_DIMS[self.kind]
        self.action_space = gym.spaces.Box(0.0, 1.0, (k,), np.float32)
        obs_dim = 1 + STATIC_FEATURES + len(KEEP_RATIOS) + (len(self.ctx.weight_options) - 1) + 1 + 1 + k
        self.observation_space = gym.spaces.Box(-OBS_LIMIT, OBS_LIMIT, (obs_dim,), np.float32)
        self._t = 0
        self._keep: dict[str, float] = {}
        self._precision: dict[str, Precision] = {}
        self._previous = np.ones(k, np.float32)
        self.episodes = 0

    # --- decoding --------------------------------------------------------------------------------
    def _keeps_here(self, unit: str) -> bool:
        return self.kind != "quantize" and unit in self.group_heads

    def _quantizes_here(self) -> bool:
        return self.kind != "prune"

    def _keep_ratio(self, action: float) -> float:
        return self.config.min_keep + float(action) * (1.0 - self.config.min_keep)

    @staticmethod
    def _option(options: tuple[int, ...], action: float) -> int:
        return options[min(int(float(action) * len(options)), len(options) - 1)]

    def _decode(self, unit: str, action: np.ndarray) -> tuple[float | None, Precision | None]:
        keep = precision = None
        if self._keeps_here(unit):
            keep = self._keep_ratio(action[0])
        if self._quantizes_here():
            w, a = action[-2], action[-1]
            precision = Precision(self._option(self.ctx.weight_options, w), self._option(self.ctx.activation_options, a))
        return keep, precision

    def action_mask(self) -> np.ndarray:
        """(units, k) booleans: which action dimensions a step actually uses (keep only at a group's first layer)."""
        k = self.action_space.shape[0]
        mask = np.zeros((len(self.units), k), dtype=bool)
        for i, unit in enumerate(self.units):
            if self._keeps_here(unit):
                mask[i, 0] = True
            if self._quantizes_here():
                mask[i, k - 2 :] = True
        return mask

    # --- budget guard ----------------------------------------------------------------------------
    def _most_compressed_rest(self) -> CompressionPolicy:
        keep, precision = dict(self._keep), dict(self._precision)
        lowest = Precision(self.ctx.weight_options[0], self.ctx.activation_options[0])
        for unit in self.units[self._t + 1 :]:
            if self._keeps_here(unit):
                keep[unit] = self.config.min_keep
            if self._quantizes_here():
                precision[unit] = lowest
        return CompressionPolicy(keep, precision)

    def _guard(self, unit: str, keep: float | None, precision: Precision | None) -> tuple[float | None, Precision | None]:
        """The least compressed choice at or below the requested one that still lets the target be met."""
        rest = self._most_compressed_rest()
        limit = self.config.target_ratio * self.ctx.analytic_reference_cost
        keeps: list[float | None] = [keep]
        if keep is not None:
            channels = self.group_heads[unit].channels
            wanted = kept_channels(channels, keep, self.config.round_to)
            ratios = {kept_channels(channels, r, self.config.round_to): r for r in np.linspace(self.config.min_keep, keep, 12)}
            keeps = [ratios[c] for c in sorted(ratios, reverse=True) if c <= wanted] or [keep]
        precisions: list[Precision | None] = [precision]
        if precision is not None:
            precisions = [
                Precision(w, a)
                for w in self.ctx.weight_options
                for a in self.ctx.activation_options
                if w <= precision.weight_bits and a <= precision.activation_bits
            ]
        best, best_cost, cheapest, cheapest_cost = None, -math.inf, None, math.inf
        for k in keeps:
            for p in precisions:
                policy = CompressionPolicy(
                    {**rest.keep, **({unit: k} if k is not None else {})}, {**rest.precision, **({unit: p} if p is not None else {})}
                )
                cost = self.ctx.analytic_cost(policy)
                if cost <= limit and cost > best_cost:
                    best, best_cost = (k, p), cost
                if cost < cheapest_cost:
                    cheapest, cheapest_cost = (k, p), cost
        return best if best is not None else cheapest

    # --- observation ---------------------------------------------------------------------------------
    def _observation(self) -> np.ndarray:
        t = min(self._t, len(self.units) - 1)
        unit = self.units[t]
        layer = self.layer_index[unit]
        decided = CompressionPolicy(dict(self._keep), dict(self._precision))
        planned = planned_structure(self.ctx.structure, decided, self.config.round_to)
        done_layers = (
            set(self.units[: self._t]) if self.kind != "prune" else {m for u in self.units[: self._t] for m in self.group_heads[u].members}
        )
        macs_so_far = sum(lay.macs for lay in planned.layers if lay.name in done_layers) / self.ctx.structure.total_macs
        sens = self.ctx.sensitivity_vectors(unit)
        obs = np.concatenate(
            [
                [t / len(self.units)],
                self.ctx.layer_features[layer],
                sens,
                [1.0 if self._keeps_here(unit) else 0.0, macs_so_far],
                self._previous,
            ]
        ).astype(np.float32)
        return np.clip(obs, -OBS_LIMIT, OBS_LIMIT)

    # --- gymnasium API -------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        self._keep, self._precision = {}, {}
        self._previous = np.ones(self.action_space.shape, np.float32)
        return self._observation(), {"unit": self.units[0], "units": len(self.units)}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.clip(np.asarray(action, np.float32).reshape(self.action_space.shape), 0.0, 1.0)
        unit = self.units[self._t]
        keep, precision = self._decode(unit, action)
        requested = (keep, precision)
        if self.config.budget_guard:
            keep, precision = self._guard(unit, keep, precision)
        if keep is not None:
            self._keep[unit] = keep
        if precision is not None:
            self._precision[unit] = precision
        self._previous = action
        self._t += 1
        info: dict[str, Any] = {"unit": unit, "guarded": (keep, precision) != requested}
        if self._t < len(self.units):
            return self._observation(), 0.0, False, False, info
        info.update(self._finish())
        self.episodes += 1
        return self._observation(), float(info["reward"]), True, False, info

    # --- the end of an episode -----------------------------------------------------------------------
    def policy(self) -> CompressionPolicy:
        return CompressionPolicy(dict(self._keep), dict(self._precision))

    def build_compressed(self, policy: CompressionPolicy, finetune_steps: int | None = None) -> Compressed:
        """``policy`` applied the way an episode applies it: prune, recalibrate BN, (fine-tune), the deployable artifact."""
        ctx, config = self.ctx, self.config
        steps = config.finetune_steps if finetune_steps is None else finetune_steps
        compressed = compress(
            ctx.model, policy, ctx.example, ctx.calibration, build=False, structure=ctx.structure, round_to=config.round_to
        )
        pruned = any(r < 1.0 for r in policy.keep.values())
        if pruned and config.bn_batches:
            batches = ctx.data.loader("train", 64, shuffle=True, seed=config.seed)
            recalibrate_batch_norm(compressed.model, batches, max_batches=config.bn_batches)
        if steps:
            simulation = compressed.simulate(ctx.calibration)
            finetune(compressed.model, ctx.data, steps=steps, lr=0.01, batch_size=64, seed=config.seed, progress=False)
            simulation.remove()
        return build(compressed, ctx.example, ctx.calibration)

    def _finish(self) -> dict[str, Any]:
        start = time.perf_counter()
        ctx, config = self.ctx, self.config
        policy = self.policy()
        compressed = self.build_compressed(policy)
        artifact = compressed.artifact
        seconds_build = time.perf_counter() - start
        accuracy = ctx.accuracy(artifact.data)
        start_latency = time.perf_counter()
        if config.latency_source == "measure":
            m = ctx.client.measure(artifact.data, ctx.reference)
            latency_ms, latency_ratio, cached = m.candidate.median_ms, m.ratio, m.cached
        else:
            specs = layer_specs(ctx.structure, policy, config.round_to)
            latency_ms = ctx.predictor.predict(specs)
            latency_ratio = latency_ms / ctx.predictor.predict(layer_specs(ctx.structure, CompressionPolicy(), config.round_to))
            cached = None
        c, ref = compressed.costs, ctx.reference_costs
        natural = {
            "latency": (latency_ratio, latency_ms * 1e3),
            "macs": (c.macs / ref.macs, c.macs),
            "bops": (c.bops / ref.bops, c.bops),
            "bytes": (c.weight_bytes / ref.weight_bytes, c.weight_bytes),
        }[config.objective]
        parts = reward_parts(config.reward, accuracy, natural[0], natural[1], config.target_ratio)
        return {
            **parts,
            "policy": policy.to_dict(),
            "reference_accuracy": ctx.reference_accuracy,
            "latency_ms": latency_ms,
            "latency_ratio": latency_ratio,
            "latency_cached": cached,
            "macs": c.macs,
            "bops": c.bops,
            "weight_bytes": c.weight_bytes,
            "artifact_bytes": c.artifact_bytes,
            "macs_ratio": c.macs / ref.macs,
            "objective": config.objective,
            "target_ratio": config.target_ratio,
            "within_budget": bool(parts["cost_over_target"] <= 1.0),
            "seconds": {"build": seconds_build, "latency": time.perf_counter() - start_latency},
        }


class PruneEnv(CompressionEnv):
    __doc__ = CompressionEnv.__doc__
    kind = "prune"


class QuantizeEnv(CompressionEnv):
    __doc__ = CompressionEnv.__doc__
    kind = "quantize"


class JointEnv(CompressionEnv):
    __doc__ = CompressionEnv.__doc__
    kind = "joint"


ENV_IDS = {"galen/Prune-v0": PruneEnv, "galen/Quantize-v0": QuantizeEnv, "galen/Joint-v0": JointEnv}


def register() -> None:
    """Register the three envs with Gymnasium (idempotent). RLlib: pass the class itself as ``env``."""
    for env_id, cls in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=f"{cls.__module__}:{cls.__name__}")
