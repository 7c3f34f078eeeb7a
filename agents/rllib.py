"""RLlib (new API stack) configurations of SAC and PPO for Galen's episodes: short, with the reward at the end.

Choices, and why:

- One sample call collects one whole episode (``rollout_fragment_length`` = the env's units,
  ``complete_episodes``); SAC then makes ``updates_per_episode`` gradient updates. RLlib's SAC
  default (a fragment of 1 step, one update per env step) measured 10x slower here, mostly
  round trips to the env runner.
- SAC's first ``warmup_episodes`` are uniformly random actions (AMC/HAQ/Galen warm up DDPG the
  same way) and learning starts only after them. RLlib's SAC has no random warm-up; its initial
  policy is a squashed Gaussian whose samples pile up at the bounds, so :class:`WarmupSACModule`
  returns, during warm-up, a distribution that is a point at a uniformly drawn action.
- Exploration: a high initial entropy temperature (``initial_alpha``) with the automatic target
  entropy for SAC, an entropy bonus for PPO.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.algorithms.sac import SACConfig
from ray.rllib.algorithms.sac.torch.default_sac_torch_rl_module import DefaultSACTorchRLModule
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from agents.callbacks import EpisodeCallback
from agents.config import AgentConfig

WARMUP_KEY = "galen_warmup_steps"
SEED_KEY = "galen_seed"
# The squashed Gaussian clips log-std at -20 (RLlib's log_std_clip_param); exp(-20) is a point for any use.
POINT_LOG_STD = -20.0


class WarmupSACModule(DefaultSACTorchRLModule):
    """SAC's default module; on an env runner its first ``galen_warmup_steps`` exploration actions are uniform."""

    def setup(self) -> None:
        super().setup()
        self._warmup_left = int(self.model_config.get(WARMUP_KEY, 0))
        self._generator = torch.Generator().manual_seed(int(self.model_config.get(SEED_KEY, 0)))

    def _forward_exploration(self, batch: dict, **kwargs: Any) -> dict[str, Any]:
        out = self._forward_inference(batch)
        if self._warmup_left <= 0:
            return out
        logits = out[Columns.ACTION_DIST_INPUTS]  # (B, 2 * action_dim): mean, log_std before tanh
        batch_size, width = logits.shape
        self._warmup_left -= batch_size
        uniform = torch.rand((batch_size, width // 2), generator=self._generator) * 2 - 1  # the squashed action in (-1, 1)
        loc = torch.atanh(uniform.clamp(-0.999999, 0.999999))
        out[Columns.ACTION_DIST_INPUTS] = torch.cat([loc, torch.full_like(loc, POINT_LOG_STD)], dim=-1).to(logits.dtype)
        return out


def build_algo_config(
    agent: AgentConfig,
    env_class: type,
    env_config: dict[str, Any],
    units: int,
    seed: int,
    recorder: str | None = None,
) -> AlgorithmConfig:
    """The RLlib config of ``agent.algo`` for an env with ``units`` decisions per episode.

    ``recorder`` names the run's recorder actor (see :mod:`agents.recorder`) that every finished
    episode is sent to.
    """
    if agent.algo == "sac":
        config = _sac(agent, units, seed)
    elif agent.algo == "ppo":
        config = _ppo(agent, units)
    else:
        raise ValueError(f"agent config: field 'algo' is {agent.algo!r}; RLlib runs only: sac, ppo")
    config = (
        config.environment(env=env_class, env_config=env_config)
        .framework("torch")
        .env_runners(
            num_env_runners=agent.env_runners,
            num_envs_per_env_runner=1,
            num_cpus_per_env_runner=1,
            rollout_fragment_length=units,
            batch_mode="complete_episodes",
            sample_timeout_s=600.0,
        )
        .learners(num_learners=0)
        .debugging(seed=seed, log_level="ERROR")
        # An iteration is ``episodes_per_iteration`` whole episodes (SAC's default, 100 env steps, is not a unit of ours).
        .reporting(
            metrics_num_episodes_for_smoothing=10,
            min_sample_timesteps_per_iteration=agent.episodes_per_iteration * units,
            min_time_s_per_iteration=0,
        )
        # A broken env runner is restarted a few times, not forever (a bug must surface).
        .fault_tolerance(restart_failed_env_runners=True, max_num_env_runner_restarts=3)
        .callbacks(EpisodeCallback.bound(recorder, source=agent.algo))
    )
    return config


def _sac(agent: AgentConfig, units: int, seed: int) -> AlgorithmConfig:
    batch = agent.train_batch_size
    # RLlib's round-robin weights (dqn.calculate_rr_weights): updates per sample call =
    # training_intensity / (batch / (fragment x (env_runners + 1))); choose it to give updates_per_episode.
    native_ratio = batch / (units * (agent.env_runners + 1))
    warmup_steps = agent.warmup_episodes * units
    config = (
        SACConfig()
        .training(
            actor_lr=agent.lr,
            critic_lr=agent.critic_lr,
            alpha_lr=agent.alpha_lr,
            gamma=agent.gamma,
            tau=agent.tau,
            initial_alpha=agent.initial_alpha,
            target_entropy="auto",
            train_batch_size_per_learner=batch,
            training_intensity=agent.updates_per_episode * native_ratio,
            num_steps_sampled_before_learning_starts=max(warmup_steps, batch),
            replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": agent.buffer_size},
        )
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=WarmupSACModule,
                model_config={"fcnet_hiddens": list(agent.hidden), WARMUP_KEY: warmup_steps, SEED_KEY: seed},
            )
        )
    )
    return config


def _ppo(agent: AgentConfig, units: int) -> AlgorithmConfig:
    batch = agent.episodes_per_iteration * units
    return (
        PPOConfig()
        .training(
            lr=agent.lr,
            gamma=agent.gamma,
            lambda_=0.95,
            entropy_coeff=agent.entropy_coeff,
            train_batch_size_per_learner=batch,
            minibatch_size=min(batch, max(units, 32)),
            num_epochs=agent.ppo_epochs,
            vf_clip_param=100.0,
        )
        .rl_module(model_config={"fcnet_hiddens": list(agent.hidden), "vf_share_layers": False})
    )
