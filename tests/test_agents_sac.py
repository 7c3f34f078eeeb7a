"""Galen's SAC pieces on real RLlib objects: the broadcast reward, the applied actions, the exploration schedule."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.algorithms.sac import SACConfig
from ray.rllib.algorithms.sac.sac_catalog import SACCatalog
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from agents.callbacks import RewardBaseline, rewrite_episode
from agents.config import AgentConfig
from agents.rllib import SCHEDULE_KEY, GalenSACModule, noise_scale, repeat_noise


def _episode(applied: list[list[float]], final: float) -> SingleAgentEpisode:
    episode = SingleAgentEpisode(observations=[np.zeros(3, np.float32)], infos=[{}], len_lookback_buffer=0)
    for i, a in enumerate(applied):
        last = i == len(applied) - 1
        episode.add_env_step(
            observation=np.full(3, i + 1, np.float32),
            action=np.array([0.9, -0.9], np.float32),  # what the module asked for
            reward=final if last else 0.0,
            infos={"applied_action": np.array(a, np.float32)},
            terminated=last,
        )
    return episode


def test_the_final_reward_goes_to_every_step_and_the_applied_actions_replace_the_requested() -> None:
    episode = _episode([[0.25, 0.75], [1.0, 0.0], [0.5, 0.5]], final=0.8)
    rewrite_episode(episode, 1.5)
    episode = episode.to_numpy()
    assert episode.get_rewards().tolist() == [1.5, 1.5, 1.5]
    assert episode.get_actions().tolist() == [[-0.5, 0.5], [1.0, -1.0], [0.0, 0.0]]  # [0, 1] -> [-1, 1]


def test_reward_baseline_subtracts_a_moving_mean_and_divides_by_a_moving_spread() -> None:
    baseline = RewardBaseline(alpha=0.5, min_spread=0.01)
    assert baseline.normalise(0.5) == 0.0  # the first reward sets the baseline
    assert baseline.normalise(0.52) == pytest.approx(0.02 / 0.01)  # no spread yet: the minimum
    assert baseline.mean == pytest.approx(0.51) and baseline.var == pytest.approx(0.5 * 0.5 * 0.02**2)
    assert baseline.normalise(0.51) == pytest.approx(0.0)
    assert baseline.normalise(10.0) == 5.0  # clipped


def test_exploration_schedule_uniform_warmup_then_geometric_decay() -> None:
    schedule = {"warmup_episodes": 10, "episodes": 111, "noise_initial": 0.5, "noise_final": 0.02}
    assert noise_scale(0, schedule) is None and noise_scale(9, schedule) is None
    assert noise_scale(10, schedule) == pytest.approx(0.5)
    assert noise_scale(60, schedule) == pytest.approx(0.5 * (0.02 / 0.5) ** 0.5)
    assert noise_scale(110, schedule) == pytest.approx(0.02)
    assert AgentConfig().warmup_for(200) == 30 and AgentConfig().warmup_for(10) == 4 and AgentConfig(warmup_episodes=7).warmup_for(200) == 7
    assert AgentConfig().discount("sac") == 0.0 and AgentConfig().discount("ppo") == 0.99


def _module(warmup: int, jitter: float | None = None, units: int = 2, spread: float = 0.5) -> GalenSACModule:
    schedule = {"warmup_episodes": warmup, "episodes": 20, "units": units, "seed": 3, "noise_initial": 0.5, "noise_final": 0.02}
    schedule["warmup_jitter"], schedule["warmup_spread"] = jitter, spread
    spec = RLModuleSpec(
        module_class=GalenSACModule,
        observation_space=gym.spaces.Box(-1, 1, (4,), np.float32),
        action_space=gym.spaces.Box(0, 1, (2,), np.float32),
        model_config={**SACConfig().model_config, "fcnet_hiddens": [8], SCHEDULE_KEY: schedule},
        catalog_class=SACCatalog,
    )
    torch.manual_seed(0)
    return spec.build()


def _actions(module: GalenSACModule, steps: int) -> np.ndarray:
    obs = torch.zeros(1, 4)
    out = [module.forward_exploration({"obs": obs})["action_dist_inputs"][0, :2] for _ in range(steps)]
    return torch.tanh(torch.stack(out)).detach().numpy()


def test_a_resumed_module_continues_the_schedule_instead_of_replaying_the_warmup() -> None:
    fresh, resumed = _module(warmup=4), _module(warmup=4)
    fresh.set_progress(0)
    first = _actions(fresh, 4)  # episodes 0-1: warm-up
    resumed.set_progress(3)  # a run resumed with 3 episodes recorded
    assert resumed.current_episode() == 3
    again = _actions(resumed, 4)
    assert not np.allclose(first, again)
    fresh.set_progress(3)
    assert np.allclose(_actions(fresh, 4), again)  # the position, not the process, decides the actions
    late = _module(warmup=0)
    late.set_progress(19)  # last episode: noise 0.02 around the actor's deterministic action
    mean = torch.tanh(late.forward_inference({"obs": torch.zeros(1, 4)})["action_dist_inputs"][0, :2]).detach().numpy()
    assert np.all(np.abs(_actions(late, 2) - mean) < 2 * 0.02 * 5)


def test_replayed_policies_raise_the_noise_until_the_episodes_are_new_again() -> None:
    def record(keep: float, source: str = "sac") -> dict:
        return {"source": source, "policy": {"keep": {"a": keep}, "precision": {"a": "int8"}}}

    new = [record(k / 10) for k in range(10)]
    assert repeat_noise(new, "sac", 0.15) == 0.0  # every episode new: the schedule alone
    replays = new + [record(0.5)] * 4  # the last 4 of 8 replay episode 5's policy
    assert repeat_noise(replays, "sac", 0.15) == pytest.approx(0.15 * 4 / 8)
    assert repeat_noise(new + [record(0.5)] * 8, "sac", 0.15) == pytest.approx(0.15)
    assert repeat_noise(replays, "sac", 0.0) == 0.0 and repeat_noise(replays, "random", 0.15) == 0.0  # off; another source
    assert repeat_noise(new + [record(0.5, "uniform-safety")] * 8, "sac", 0.15) == 0.0  # only the agent's own episodes
    # the floor reaches the module: at the last episode (scheduled noise 0.02) the actions spread by the floor's std
    module = _module(warmup=0)
    module.set_progress(19, noise_floor=0.3)
    mean = torch.tanh(module.forward_inference({"obs": torch.zeros(1, 4)})["action_dist_inputs"][0, :2]).detach().numpy()
    spread = np.abs(_actions(module, 200) - mean)
    assert spread.mean() > 0.2  # squashed units: 2 x 0.3 std, truncated to [-1, 1]; 0.02 alone gives about 0.03
    module.set_progress(19)
    assert np.abs(_actions(module, 200) - mean).mean() < 0.1


def test_warmup_plays_one_random_action_per_episode_with_a_small_jitter() -> None:
    module = _module(warmup=8, jitter=0.05, units=10)
    episodes = [(_actions(module, 10) + 1) / 2 for _ in range(8)]  # env units [0, 1]
    for steps in episodes:  # every step of an episode near that episode's action
        assert np.all(np.abs(steps - np.median(steps, axis=0)) < 0.05 * 5)
    centres = np.array([np.median(steps, axis=0) for steps in episodes])
    assert centres.std(axis=0).min() > 0.1  # the episodes' actions spread over the space
    # the uniform policies are in the warm-up: int8 everywhere is an episode with every precision action below 0.5
    assert any(np.all(steps[:, 1] < 0.5) for steps in episodes) and any(np.all(steps[:, 1] > 0.5) for steps in episodes)
    # warmup_spread: the episodes' actions drawn within that distance of 0.5 (the paced wall's widest uniform policy)
    near = _module(warmup=8, jitter=0.05, units=10, spread=0.2)
    centres = np.array([np.median((_actions(near, 10) + 1) / 2, axis=0) for _ in range(8)])
    assert np.all(np.abs(centres - 0.5) <= 0.2 + 2 * 0.05) and centres.std(axis=0).min() > 0.05  # 0.05: the jitter
    uniform = _module(warmup=8, jitter=None, units=10)
    steps = (_actions(uniform, 10) + 1) / 2
    assert steps.std(axis=0).min() > 0.1  # warmup_jitter null: every step on its own


def test_elite_replay_adds_a_copy_of_each_of_the_best_distinct_episodes_and_the_saved_buffer_keeps_their_rewards(tmp_path) -> None:
    from types import SimpleNamespace

    from ray.rllib.utils.replay_buffers.episode_replay_buffer import EpisodeReplayBuffer

    from agents.replay import _episode, final_reward, load_episodes, replay_elites, save_replay

    rng = np.random.default_rng(0)
    buffer = EpisodeReplayBuffer(capacity=1000)
    finals = (0.3, 0.9, 0.5, 0.8, 0.1)
    buffer.add([_episode(rng.normal(size=(4, 3)), rng.uniform(-1, 1, (3, 2)), np.full(3, r - 0.5), r) for r in finals])
    algo = SimpleNamespace(local_replay_buffer=buffer)
    assert replay_elites(algo, 2) == 2
    assert sorted(final_reward(e) for e in buffer.episodes) == [0.1, 0.3, 0.5, 0.8, 0.8, 0.9, 0.9]
    assert replay_elites(algo, 2) == 2  # a copy is the same episode, not a new elite: still the 0.9 and the 0.8
    assert sorted(final_reward(e) for e in buffer.episodes) == [0.1, 0.3, 0.5, 0.8, 0.8, 0.8, 0.9, 0.9, 0.9]
    assert save_replay(algo, tmp_path) == 9
    assert sorted(final_reward(e) for e in load_episodes(tmp_path)) == [0.1, 0.3, 0.5, 0.8, 0.8, 0.8, 0.9, 0.9, 0.9]


class _Target(gym.Env):
    """One step: the reward is high when the action is near 0.3 (the untrained actor plays about 0.5)."""

    def __init__(self, config: dict | None = None) -> None:
        self.observation_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        return np.ones(2, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = float(np.clip(action[0], 0.0, 1.0))
        reward = 1.0 - abs(a - 0.3)
        return np.ones(2, np.float32), reward, True, False, {"applied_action": np.array([a], np.float32), "reward": reward}


@pytest.mark.own_process  # starts Ray: a fresh interpreter (tests/conftest.py)
def test_the_warmup_burst_trains_the_actor_before_it_plays_and_the_buffer_shares_one_reward_baseline() -> None:
    import tempfile
    import warnings

    import ray

    from agents.replay import final_reward, renormalise_rewards
    from agents.rllib import build_algo_config, learn_burst

    tmp = tempfile.mkdtemp(prefix="galen-burst-")  # short: Ray's socket paths have a length limit
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", _temp_dir=tmp, log_to_driver=False)
    try:
        agent = AgentConfig(
            warmup_episodes=40, warmup_jitter=None, env_runners=0, episodes_per_iteration=40, elite_episodes=0, train_batch_size=32
        )
        algo = build_algo_config(agent, _Target, {}, units=1, seed=0, episodes=400).build_algo()
        try:
            algo.train()  # the 40 warm-up episodes (random actions); RLlib's own schedule has made no update yet
            buffer = algo.local_replay_buffer
            assert len(buffer.episodes) >= 40
            finals = np.array([final_reward(e) for e in buffer.episodes])
            # the env runner's moving baseline gave the early episodes saturated rewards; one baseline for all
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                assert renormalise_rewards(algo) == len(buffer.episodes)
            assert not [str(w.message) for w in caught], "renormalising rewards printed warnings in the user's log"
            rewards = np.array([e.get_rewards()[0] for e in buffer.episodes])
            assert np.allclose(rewards, np.clip((finals - finals.mean()) / finals.std(), -5, 5), atol=1e-4)
            obs = np.ones((1, 2), np.float32)

            def act() -> np.ndarray:  # the actor's deterministic action per step, env units [0, 1]
                module = algo.env_runner.module
                out = module.forward_inference({"obs": torch.from_numpy(obs)})
                return (torch.tanh(out["action_dist_inputs"][:, :1]).detach().numpy().ravel() + 1) / 2

            before = np.abs(act() - 0.3).mean()
            assert learn_burst(algo, 100) == 100
            after = np.abs(act() - 0.3).mean()  # the env runner's module got the learner's weights
            assert after < 0.1 < before, (before, after)
        finally:
            algo.stop()
    finally:
        ray.shutdown()
