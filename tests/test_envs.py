"""The compression environments on a real trained ResNet-20, real ONNX Runtime latency and accuracy."""

from __future__ import annotations

import concurrent.futures
import os
import random
import statistics
import threading
import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs
from compression.policy import Precision
from envs import EnvConfig, EnvConfigError, JointEnv, PruneEnv, QuantizeEnv
from envs.rewards import reward_parts
from envs.wall import Option
from hardware.targets import TargetError
from workloads.checkpoints import CheckpointError


@pytest.fixture(scope="module")
def config(trained_resnet20) -> dict:
    # the trained_resnet20 fixture stores a 1-epoch ResNet-20 in the session's checkpoint store
    return {
        "model": "resnet20",
        "dataset": "fashion-mnist",
        "checkpoint": str(trained_resnet20.path),
        "val_size": 500,
        "sensitivity_images": 64,
        "calibration_images": 64,
        "bn_batches": 4,
    }


def _run(env: gym.Env, actions, seed: int = 0):
    obs, _ = env.reset(seed=seed)
    trajectory = [obs]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(np.asarray(action, np.float32))
        trajectory.append(obs)
        if terminated:
            return trajectory, reward, info
    raise AssertionError("episode did not end")


@pytest.mark.parametrize("env_id", list(envs.ENV_IDS))
def test_registered_envs_pass_the_gymnasium_checker(env_id: str, config: dict) -> None:
    env = gym.make(env_id, config=config).unwrapped
    check_env(env, skip_render_check=True)
    k = {"galen/Prune-v0": 1, "galen/Quantize-v0": 1, "galen/Joint-v0": 2}[env_id]
    assert env.action_space.shape == (k,)
    units = len(env.ctx.structure.groups) if env.kind == "prune" else len(env.ctx.structure.layers)
    assert len(env.units) == units


def test_no_compression_reproduces_the_base_model_and_aggressive_is_faster(config: dict) -> None:
    env = JointEnv({**config, "budget_guard": False, "reward": "galen"})
    _, reward, info = _run(env, [np.ones(2)] * len(env.units))
    assert info["accuracy"] == pytest.approx(env.ctx.reference_accuracy, abs=1e-9)
    assert info["policy"]["keep"] == {g.name: 1.0 for g in env.ctx.structure.groups}
    assert 0.85 < info["latency_ratio"] < 1.15 and info["macs_ratio"] == 1.0
    assert reward == pytest.approx(info["accuracy"] - 5 * abs(info["latency_ratio"] / 0.25 - 1))
    _, _, small = _run(env, [[0.3, 1.0]] * len(env.units))  # pruned, fp32 (narrow int8 layers are slow on some CPUs)
    assert small["latency_ratio"] < 0.6 * info["latency_ratio"]
    assert small["macs_ratio"] < 0.2
    for field in ("policy", "accuracy", "latency_ms", "latency_ratio", "macs", "bops", "weight_bytes", "reward", "penalty"):
        assert field in small


def test_same_seed_same_trajectory(config: dict) -> None:
    rng = np.random.default_rng(3)
    # MACs as the wall's cost: with latency the shared predictor re-fits after every measured episode (by design),
    # so a second episode in the same process sees other predicted costs in its observation.
    macs = {**config, "objective": "macs", "target_ratio": 0.5}
    first, second = PruneEnv(macs), PruneEnv(macs)
    actions = rng.uniform(0, 1, (len(first.units), 1))
    run1, reward1, info1 = _run(first, actions, seed=5)
    run2, reward2, info2 = _run(second, actions, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(run1, run2, strict=True))
    assert reward1 == reward2 and info1["policy"] == info2["policy"] and info1["accuracy"] == info2["accuracy"]
    assert info2["latency_cached"]  # the second env got the latency from the cache


def test_budget_guard_makes_every_random_episode_meet_the_target(config: dict) -> None:
    env = PruneEnv({**config, "objective": "macs", "target_ratio": 0.5, "budget_guard": True})
    rng = np.random.default_rng(0)
    for _ in range(3):
        _, _, info = _run(env, rng.uniform(0, 1, (len(env.units), 1)))
        assert info["within_budget"] and info["macs_ratio"] <= 0.5, info["macs_ratio"]
    unguarded = PruneEnv({**config, "objective": "macs", "target_ratio": 0.5, "budget_guard": False})
    _, _, info = _run(unguarded, np.ones((len(unguarded.units), 1)))
    assert not info["within_budget"]


def test_wall_clamps_every_step_from_both_sides_and_reports_the_applied_action(config: dict) -> None:
    env = JointEnv({**config, "objective": "macs", "target_ratio": 0.4, "wall_mode": "clamp"})
    assert env.ctx.wall_margin() == 0.0  # analytic costs are exact
    limit = env.limit()
    assert limit == pytest.approx(0.4 * env.ctx.reference_costs.macs)
    rng = np.random.default_rng(1)
    obs, _ = env.reset(seed=0)
    for t in range(len(env.units)):
        requested = rng.uniform(0, 1, 2).astype(np.float32)
        obs, _, terminated, _, info = env.step(requested)
        # the budget stays reachable after every step: the rest at its most compressed fits the limit
        assert env.ctx.analytic_cost(env.wall.rest_at_most(env.policy(), t + 1)) <= limit
        applied = info["applied_action"]
        assert np.array_equal(obs[-2:], applied)  # the observation shows the applied action
        assert info["guarded"] == (not np.array_equal(applied, requested))
        decoded = env._decode(env.units[t], applied)  # the applied action decodes to what the policy now holds
        assert decoded.precision == env.policy().precision[env.units[t]]
        if decoded.keep is not None:
            assert decoded.keep == env.policy().keep[env.units[t]]
    assert terminated and info["within_budget"] and info["macs_ratio"] <= 0.4 + 1e-9
    assert info["predicted_ratio"] == pytest.approx(info["macs_ratio"])
    # the other side: asking for everything compressed at a loose budget compresses only what the budget needs
    loose = JointEnv({**config, "objective": "macs", "target_ratio": 0.9, "wall_mode": "clamp"})
    _, _, info = _run(loose, [[0.0, 0.0]] * len(loose.units))
    assert 0.8 < info["macs_ratio"] <= 0.9 and info["clamped_steps"] > 0


def test_relative_wall_maps_every_action_into_the_allowed_options(config: dict) -> None:
    env = JointEnv({**config, "objective": "macs", "target_ratio": 0.4, "wall_mode": "relative"})
    rng = np.random.default_rng(4)
    env.reset(seed=0)
    for t in range(len(env.units)):
        allowed = env.wall.bounds(env.policy(), t, env.limit())
        requested = rng.uniform(0, 1, 2).astype(np.float32)
        _, _, terminated, _, info = env.step(requested)
        chosen = Option(env.policy().keep.get(env.units[t]), env.policy().precision[env.units[t]])
        assert chosen in allowed and np.array_equal(info["applied_action"], requested)  # nothing to clamp
        assert env.ctx.analytic_cost(env.wall.rest_at_most(env.policy(), t + 1)) <= env.limit()
    assert terminated and info["within_budget"] and info["repaired"] == 0
    # the ends of the action range are the ends of the allowed range
    env.reset(seed=0)
    allowed = env.wall.bounds(env.policy(), 0, env.limit())
    env.step(np.array([0.0, 0.0], np.float32))
    assert env.policy().keep[env.units[0]] == min(o.keep for o in allowed if o.precision == env.policy().precision[env.units[0]])
    env.reset(seed=0)
    env.step(np.array([1.0, 1.0], np.float32))
    assert env.policy().precision[env.units[0]] == max((o.precision for o in allowed), key=lambda p: p.weight_bits)


def test_paced_wall_plays_the_widest_affordable_uniform_level_at_one_half_and_moves_budget_between_layers(config: dict) -> None:
    env = PruneEnv({**config, "objective": "macs", "target_ratio": 0.5, "fill": False})  # the steps' choices, not the fill's
    assert env.config.wall_mode == "paced"
    env.reset(seed=0)
    level = env.wall.pace(env.policy(), 0, env.limit(), 0)
    ratios = sorted({o.keep for u in env.units for o in env.wall.options[u]})
    wider = ratios[ratios.index(level) + 1]
    uniform = env.wall._rest(env.policy(), 0, lambda u: env.wall._uniform(u, wider, 0))
    assert env.ctx.analytic_cost(uniform) > env.limit()  # the next wider uniform level does not fit
    _, _, half = _run(env, [[0.5]] * len(env.units))
    assert half["within_budget"] and half["repaired"] == 0
    keeps = half["policy"]["keep"]
    assert all(keeps[u] >= env.wall.keep_at(u, level) - 1e-9 for u in env.units)  # nothing below the uniform level
    # pruning the first layers harder than the pace leaves the rest wider; every step stays within what the wall allows
    env.reset(seed=0)
    for t, unit in enumerate(env.units):
        allowed = env.wall.bounds(env.policy(), t, env.limit())
        _, _, terminated, _, low = env.step(np.array([0.0 if t < 6 else 0.5], np.float32))
        assert Option(env.policy().keep[unit], None) in allowed
    assert terminated and low["within_budget"]
    later = env.units[6:]  # (the stem and stage 1 are at their smallest at the pace already)
    assert sum(low["policy"]["keep"][u] for u in later) > sum(keeps[u] for u in later)
    assert all(low["policy"]["keep"][u] <= keeps[u] for u in env.units[:6])


@pytest.mark.parametrize("guard", [True, False])
def test_stage_aligned_precision_gives_every_layer_of_a_stage_its_first_layers_precision(config: dict, guard: bool) -> None:
    env = JointEnv({**config, "objective": "macs", "target_ratio": 0.6, "precision_align": "stage", "budget_guard": guard})
    assert env.precision_leader["layers.1.2.conv2"] == env.precision_leader["layers.1.0.shortcut.0"] == "layers.1.0.conv1"
    assert env.precision_leader["conv1"] == "conv1" and env.precision_leader["fc"] == "fc"
    rng = np.random.default_rng(4)
    for _ in range(3):
        _, _, info = _run(env, rng.uniform(0, 1, (len(env.units), 2)))
        policy = info["policy"]["precision"]
        for stage in ("layers.0.", "layers.1.", "layers.2."):
            bits = {p["weight_bits"] for name, p in policy.items() if name.startswith(stage)}
            # one precision per stage (the repair pass may still lower single layers when the budget needs it)
            assert len(bits) == 1 or (guard and info["repaired"] > 0), (stage, bits)


def test_repair_pass_lowers_the_cheapest_to_lose_decisions_until_the_budget_holds(config: dict) -> None:
    from compression.policy import CompressionPolicy

    env = PruneEnv({**config, "objective": "macs", "target_ratio": 0.5})
    limit = env.limit()
    repaired, moves = env.wall.repair(CompressionPolicy(), limit, env.sensitivity_loss)
    assert env.ctx.analytic_cost(repaired) <= limit < env.ctx.analytic_cost(CompressionPolicy())
    assert moves == sum(len(env._keep_ratios(g)) - env._keep_ratios(g).index(repaired.keep_ratio(g)) - 1 for g in env.units)
    # the first move is the one with the most MACs per unit of sensitivity lost
    first, _ = env.wall.repair(CompressionPolicy(), env.ctx.analytic_cost(CompressionPolicy()) - 1, env.sensitivity_loss)
    (group,) = [g for g in env.units if first.keep_ratio(g) < 1.0]
    assert group == max(
        env.units,
        key=lambda g: (
            (env.ctx.analytic_cost(CompressionPolicy()) - env.ctx.analytic_cost(CompressionPolicy({g: env._keep_ratios(g)[-2]})))
            / (env.sensitivity_loss(g, env.wall.options[g][-2]) + 1e-6)
        ),
    )


def test_fill_pass_widens_groups_until_the_budget_is_used(config: dict) -> None:
    from compression.policy import CompressionPolicy

    env = PruneEnv({**config, "objective": "macs", "target_ratio": 0.5})
    limit, cost = env.limit(), env.ctx.analytic_cost
    narrow = CompressionPolicy({g: env._keep_ratios(g)[0] for g in env.units})
    filled, moves = env.wall.fill(narrow, limit, env.sensitivity_loss)
    assert moves > 0 and cost(narrow) < cost(filled) <= limit
    for g in env.units:  # no group's next wider keep fits any more
        keeps = env._keep_ratios(g)
        k = filled.keep_ratio(g)
        assert k >= keeps[0]
        if k < keeps[-1]:
            assert cost(CompressionPolicy({**filled.keep, g: keeps[keeps.index(k) + 1]})) > limit
    # an episode of the narrowest actions the wall allows: with the fill it uses the budget, without it leaves some
    actions = np.zeros((len(env.units), 1))
    _, _, on = _run(env, actions)
    _, _, off = _run(PruneEnv({**config, "objective": "macs", "target_ratio": 0.5, "fill": False}), actions)
    assert off["filled"] == 0 and on["filled"] > 0
    assert off["macs_ratio"] < on["macs_ratio"] <= 0.5 and on["within_budget"]
    assert on["accuracy"] >= off["accuracy"] - 0.02, (on["accuracy"], off["accuracy"])


def test_latency_wall_uses_the_calibrated_predictor_and_measured_episodes_refit_it(config: dict) -> None:
    env = JointEnv({**config, "target_ratio": 0.9})
    floor, ceiling, which = env.feasible_range()
    assert 0.2 < floor < 0.9 and ceiling == 1.0 and which in env.corner_policies()
    assert set(env.corner_policies()) == {"min keep, 8-bit", "min keep, float", "full width, 8-bit"}
    rng = np.random.default_rng(2)
    before = len(env.ctx.prediction_errors())
    infos = []
    for _ in range(3):
        _, _, info = _run(env, rng.uniform(0, 1, (len(env.units), 2)))
        assert info["predicted_ratio"] <= 0.9  # by construction, on the predictor
        assert info["latency_ratio"] > 0  # measured (how often within budget is the benchmark's aim, not a test's)
        infos.append(info)
    errors = len(env.ctx.prediction_errors())
    assert errors >= before + 3  # every measurement is a calibration sample (a re-measured repair adds one)
    assert env.ctx.predictor.calibration.samples == 14 + errors
    # a run's recorded episodes prime a fresh process's calibration and margin (the read-out, a resume), once each
    assert env.ctx.replay_observations(infos) == 0  # this process measured them itself
    slow = [{**infos[k % 3], "latency_ratio": infos[k % 3]["predicted_ratio"] * (1.25 + k / 1000)} for k in range(45)]
    observed = list(env.ctx._observed)
    from compression.plan import layer_specs
    from compression.policy import CompressionPolicy, Precision

    int8 = CompressionPolicy(precision={name: Precision(8, 8) for name in env.ctx.structure.layer_names})
    cost_before = env.ctx.analytic_cost(int8)  # the wall's cost model keeps this policy's table features from here on
    try:
        assert env.ctx.replay_observations(slow + slow[:5]) == 45  # a record counts once
        assert env.ctx.replay_observations(slow) == 0
        assert env.ctx.predictor.calibration.samples == min(14 + errors + 45, 14 + env.ctx.ONLINE_SAMPLES)
        # and applies the present calibration: 25% under-estimates raise what it predicts
        specs = layer_specs(env.ctx.structure, int8, env.ctx.config.round_to)
        assert env.ctx.analytic_cost(int8) == pytest.approx(env.ctx.predictor.predict(specs)) and env.ctx.analytic_cost(int8) > cost_before
        assert env.ctx.wall_margin() > 0.1  # 25% under-estimates in the window raise the margin
        # past ANCHOR_RELEASE episodes only the reference stays an anchor, so the episodes move the fit where the extremes'
        # anchors were wrong: the three replayed policies, measured 25% above the prediction, are predicted closer
        reference = layer_specs(env.ctx.structure, CompressionPolicy(), env.ctx.config.round_to)
        round_to = env.ctx.config.round_to
        replayed = [(layer_specs(env.ctx.structure, CompressionPolicy.from_dict(r["policy"]), round_to), r) for r in slow[:3]]

        def misses() -> float:
            return statistics.mean(abs(r["latency_ratio"] / env.ctx.predictor.predict_ratio(sp, reference) - 1) for sp, r in replayed)

        # the window holds only the 45 replayed episodes (earlier tests' episodes on this shared context would dilute them)
        env.ctx._observed[:] = env.ctx._observed[-45:]
        env.ctx._recalibrate()
        released = misses()
        env.ctx.ANCHOR_RELEASE = 10**9  # the extremes anchored for good: the fit cannot follow the episodes as far
        env.ctx._recalibrate()
        pinned = misses()
        del env.ctx.ANCHOR_RELEASE
        env.ctx._recalibrate()
        # the replayed episodes were measured 25% above their prediction: released, the fit follows them at least half way and
        # closer than pinned. How far the pinned fit misses depends on the 14 timed calibration models (this CPU's noise):
        # 0.06-0.18 over four runs (AMD EPYC Zen 5), released 0.008-0.078; a ratio bound (0.6) failed once in CI at 0.63.
        assert released < 0.125 and released < pinned - 0.01, (released, pinned)
        # consistent over-estimates lower it below zero (the wall aims above the nominal budget), at most to the floor
        env.ctx._observed[:] = [(None, 0.10, 0.09)] * 50
        assert env.ctx.wall_margin() == pytest.approx(-0.1)
        assert env.limit() == pytest.approx(env.config.target_ratio * env.ctx.analytic_reference_cost() / 0.9)
        env.ctx._observed[:] = [(None, 0.10, 0.05)] * 40 + [(None, 0.10, 0.12)] * 10  # 4 in 5 measured 50% faster
        assert env.ctx.wall_margin() == pytest.approx(env.ctx.MARGIN_FLOOR)
    finally:  # the context is shared with the module's other tests
        env.ctx._observed[:] = observed
        env.ctx._recalibrate()


def test_a_fresh_process_calibrates_the_predictor_from_the_cache_without_building_a_model(config: dict, monkeypatch) -> None:
    import envs.context
    from envs.context import EnvContext

    original = JointEnv({**config, "target_ratio": 0.9}).ctx
    original.predictor  # noqa: B018 -- calibrated: its timings are stored in the latency cache
    fresh = EnvContext.build(EnvConfig.from_dict({**config, "kind": "joint", "target_ratio": 0.9}))  # as a new process would
    built = []
    real = envs.context.compress
    monkeypatch.setattr(envs.context, "compress", lambda *a, **k: built.append(1) or real(*a, **k))
    assert fresh.predictor.calibration.samples == 14 and built == []
    # the same ratios (the reference's own time may have been timed afresh since: the samples are ratio x its time)
    ratios = [ms / fresh._calibration[0][1] for _, ms in fresh._calibration]
    assert ratios == pytest.approx([ms / original._calibration[0][1] for _, ms in original._calibration])
    assert [specs for specs, _ in fresh._calibration] == [specs for specs, _ in original._calibration]


def test_a_policy_measured_over_budget_is_repaired_further_and_measured_again(config: dict) -> None:
    class Optimistic(JointEnv):  # aims 40% over the budget, as a predictor that badly under-estimates would
        def limit(self) -> float:
            return super().limit() * 1.4

    # 0.7: room above the floor on either CPU of this project (int8 gains less on the AMD EPYC); four rounds: the
    # CI's run ended at 0.64 for 0.6 after two (each round closes the gap only as far as the predictor's slope allows)
    env = Optimistic({**config, "target_ratio": 0.7, "repair_rounds": 4})
    widest = np.ones((len(env.units), 2))  # ask for everything uncompressed: the wall gives what its (wrong) limit allows
    _, _, info = _run(env, widest)
    assert info["remeasured"] >= 1 and info["repaired"] > 0
    assert info["latency_ratio"] <= 0.7 * 1.05  # measured (5%: this machine's repeatability)
    _, _, unrepaired = _run(Optimistic({**config, "target_ratio": 0.7, "repair_rounds": 0}), widest)
    assert unrepaired["remeasured"] == 0 and unrepaired["latency_ratio"] > 0.7  # what the first repair alone leaves


def test_quantize_env_runs_int8_and_bytes_objective_offers_low_bits(config: dict) -> None:
    env = QuantizeEnv({**config, "budget_guard": False})  # action 0 means int8 as such (no wall)
    assert env.ctx.weight_options == (8, 32)
    _, _, info = _run(env, [[0.0]] * len(env.units))
    assert all(p == {"weight_bits": 8, "activation_bits": 8} for p in info["policy"]["precision"].values())
    assert info["latency_ratio"] < 0.8 and info["accuracy"] > info["reference_accuracy"] - 0.02
    # its own sensitivity analysis (seven precisions per layer), on 8 images: enough for this check, 14 s on one thread
    small = QuantizeEnv({**config, "objective": "bytes", "target_ratio": 0.2, "budget_guard": False, "sensitivity_images": 8})
    assert small.ctx.weight_options == (2, 3, 4, 5, 6, 7, 8, 32)
    _, _, low = _run(small, [[0.0]] * len(small.units))  # 2 bits everywhere: the CPU artifact runs it as int8
    assert {p["weight_bits"] for p in low["policy"]["precision"].values()} == {2}
    assert low["accuracy"] < info["accuracy"] - 0.2, (low["accuracy"], info["accuracy"])  # scored at its bits, simulated


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"checkpoint": None, "model": "resnet1000"}, ValueError, r"^unknown model 'resnet1000'; registered models: resnet20, "),
        ({"model": "resnet56"}, EnvConfigError, r"^env config: checkpoint .* holds model 'resnet20' but field 'model' is 'resnet56'$"),
        ({"target": "tpu"}, TargetError, r"^unknown hardware target 'tpu'; known targets: arm-board, local-cpu, local-cpu-2t, openvino"),
        ({"target_ratio": 0.0}, EnvConfigError, r"^env config: field 'target_ratio' is 0.0; allowed: a number in \(0, 1\]$"),
        ({"target_ratio": 1.5}, EnvConfigError, r"^env config: field 'target_ratio' is 1.5; allowed: a number in \(0, 1\]$"),
        (
            {"reward": "best"},
            EnvConfigError,
            r"^env config: field 'reward' is 'best'; allowed: accuracy, galen, constrained-soft, constrained-hard, amc$",
        ),
        (
            {"budget": 3},
            EnvConfigError,
            r"^env config: unknown field 'budget'; allowed fields: base_epochs, base_policy, block_drop, bn_batches, ",
        ),
        ({"checkpoint": "/nonexistent/ckpt"}, CheckpointError, r"field 'checkpoint' is '/nonexistent/ckpt', which has no meta.json"),
        (
            {"checkpoint": None, "base_epochs": 77},
            CheckpointError,
            r"^no checkpoint for resnet20--fashion-mnist--.*; train it with: "
            r"galen train --model resnet20 --dataset fashion-mnist --epochs 77 --seed 0$",
        ),
    ],
)
def test_bad_configuration_is_a_clear_error(config: dict, overrides: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        JointEnv({**config, **overrides})


def test_rewards() -> None:
    assert reward_parts("galen", 0.9, 0.25, 250.0, 0.25)["reward"] == pytest.approx(0.9)
    assert reward_parts("galen", 0.9, 0.5, 500.0, 0.25)["reward"] == pytest.approx(0.9 - 5)
    assert reward_parts("constrained-soft", 0.9, 0.5, 500.0, 0.25)["reward"] == pytest.approx(0.9 * 2**-0.05)
    assert reward_parts("constrained-hard", 0.9, 0.2, 200.0, 0.25)["reward"] == pytest.approx(0.9)
    assert reward_parts("constrained-hard", 0.9, 0.5, 500.0, 0.25)["reward"] == pytest.approx(0.9 - 5)
    assert reward_parts("amc", 0.9, 0.5, 500.0, 0.25)["reward"] == pytest.approx(-0.1 * np.log(500.0))
    assert EnvConfig() == EnvConfig.from_dict(EnvConfig().to_dict())


def test_a_budget_below_the_feasible_range_is_refused_before_any_episode(config: dict) -> None:
    from experiments.config import SearchConfig
    from experiments.search import BudgetError, check_budget

    search = SearchConfig.from_dict(
        {
            "workload": {"model": "resnet20", "checkpoint": config["checkpoint"]},
            "env": {"objective": "macs", "target_ratio": 0.001, **{k: config[k] for k in ("val_size", "sensitivity_images")}},
        }
    )
    env = JointEnv(search.env)
    floor, _, which = env.feasible_range()
    reference = env.ctx.reference_costs.macs
    assert which == "min keep, 2-bit" and floor == pytest.approx(env.ctx.analytic_cost(env.most_compressed()) / reference)
    message = (
        rf"^env.target_ratio is 0.001, below the feasible range of resnet20 on local-cpu: the cheapest uniform extreme of the "
        rf"joint env \(min keep, 2-bit\) costs {100 * floor:.1f}% of the uncompressed model's macs; "
        rf"allowed: {floor:.3f} <= env.target_ratio <= 1$"
    )
    with pytest.raises(BudgetError, match=message):
        check_budget(search, env)
    assert env.episodes == 0


def test_sensitivity_is_computed_once_and_then_read_from_its_cache(config: dict, tmp_path, monkeypatch) -> None:
    from envs import sensitivity

    ctx = JointEnv(config).ctx
    args = ({"model": "resnet20", "checkpoint": "x"}, ctx.model, ctx.structure, ctx.calibration[:8], [sensitivity.Precision(8, 8)])
    first = sensitivity.cached_sensitivity(tmp_path, *args)
    assert set(first) == {"prune", "quantize"} and len(list(tmp_path.glob("*.json"))) == 1

    def recompute(*_args, **_kwargs):
        raise AssertionError("the cached sensitivity was computed again")

    monkeypatch.setattr(sensitivity, "compute_sensitivity", recompute)
    assert sensitivity.cached_sensitivity(tmp_path, *args) == first  # a new process (env runner, resumed run) reads it back

    # callers that need a key at the same time (a study's cells starting together) compute it once, the others wait
    calls = []

    def slow(*a, **k):
        calls.append(threading.get_ident())
        time.sleep(0.5)
        return first

    monkeypatch.setattr(sensitivity, "compute_sensitivity", slow)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:  # each call opens the lock file itself, as processes do
        results = list(pool.map(lambda _: sensitivity.cached_sensitivity(tmp_path / "together", *args), range(3)))
    assert len(calls) == 1 and results == [first] * 3


def test_a_base_model_trains_on_every_core_and_the_search_keeps_its_one_thread() -> None:
    from envs.context import every_core

    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # as the search sets it
    try:
        with every_core():
            assert torch.get_num_threads() == (os.cpu_count() or 1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(saved)


def test_block_drop_removes_residual_blocks_under_the_wall_and_lowers_the_floor(config: dict) -> None:
    from compression.policy import CompressionPolicy

    base = {**config, "objective": "macs", "target_ratio": 0.2}
    env = JointEnv({**base, "block_drop": True})
    blocks = {b.group: b for b in env.ctx.structure.blocks}
    assert env.droppable == set(blocks) and len(blocks) == 7  # ResNet-20: the blocks with an identity shortcut
    assert all(env._keep_ratios(g)[0] == 0.0 for g in blocks)  # the drop option, before the narrowest keep
    # the floor: every block dropped as well as every other group at its narrowest
    floor, _, _ = env.feasible_range()
    assert floor < JointEnv(base).feasible_range()[0]
    actions = np.zeros((len(env.units), 2), np.float32)  # the most compressed request everywhere
    _, _, info = _run(env, actions)
    dropped = [g for g, k in info["policy"]["keep"].items() if k == 0.0]
    assert dropped and set(dropped) <= set(blocks) and info["within_budget"]
    compressed = env.build_compressed(CompressionPolicy.from_dict(info["policy"]))
    gone = {layer for g in dropped for layer in blocks[g].layers}
    assert gone and not gone & set(compressed.structure.layer_names)  # the dropped blocks' layers are not in the model
    assert env.ctx.drop_sensitivity[dropped[0]] > 0
    # the predictor's calibration sees models without blocks (the floor with every block dropped is an anchor); the
    # context without block removal calibrates as before (14 models, 4 anchors)
    narrow = dict.fromkeys(env.ctx.structure.group_names, env.ctx.config.min_keep)
    int8 = {n: Precision(8, 8) for n in env.ctx.structure.layer_names}
    floor_policy, *drawn = env.ctx._drop_policies(random.Random(0), narrow, int8)
    assert all(floor_policy.keep[g] == 0.0 for g in blocks) and floor_policy.precision == int8
    assert len(drawn) == env.ctx.DROP_CALIBRATION and any(0.0 in p.keep.values() for p in drawn)
    assert env.ctx.calibration_anchors == (0, 1, 2, 3, 14)
    plain = JointEnv(base).ctx
    assert plain is not env.ctx and plain.calibration_anchors == (0, 1, 2, 3)
    assert plain._drop_policies(random.Random(0), narrow, int8) == []
    with pytest.raises(EnvConfigError, match="field 'block_drop' is 'yes'; allowed: true, false or 'needed'"):
        EnvConfig(block_drop="yes")


def test_block_drop_needed_drops_blocks_only_where_channel_pruning_cannot_meet_the_budget(config: dict) -> None:
    base = {**config, "objective": "macs"}
    plain_floor = JointEnv({**base, "target_ratio": 0.5}).feasible_range()[0]
    narrowest = np.zeros((len(JointEnv({**base, "target_ratio": 0.5}).units), 2), np.float32)  # the most compressed request

    def dropped(env: JointEnv) -> tuple[list[str], bool]:
        _, _, info = _run(env, narrowest)
        return [g for g, k in info["policy"]["keep"].items() if k == 0.0], info["within_budget"]

    loose = 1.2 * plain_floor  # channel pruning alone reaches it
    assert dropped(JointEnv({**base, "target_ratio": loose, "block_drop": True}))[0]  # offered anyway: the request drops
    assert dropped(JointEnv({**base, "target_ratio": loose, "block_drop": "needed"})) == ([], True)
    tight = JointEnv({**base, "target_ratio": 0.8 * plain_floor, "block_drop": "needed"})  # below channel pruning's floor
    blocks, within = dropped(tight)
    assert blocks and within and set(blocks) <= tight.droppable
    assert tight.ctx is JointEnv({**base, "target_ratio": loose, "block_drop": True}).ctx  # one calibration for both
