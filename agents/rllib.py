"""RLlib (new API stack) configurations of SAC and PPO for Galen's episodes: short, with the reward at the end.

Choices, and why (AMC, HAQ and Galen train DDPG this way; RLlib 2.60 has no DDPG/TD3):

- One sample call collects one whole episode (``rollout_fragment_length`` = the env's units,
  ``complete_episodes``); SAC then makes ``updates_per_episode`` gradient updates. RLlib's SAC
  default (a fragment of 1 step, one update per env step) measured 10x slower here.
- The final reward is given to every step of the episode, less a moving baseline and divided by a
  moving spread (:mod:`agents.callbacks`), and SAC's discount is 0: each step's critic learns the
  episode's outcome given the state and the action (AMC's and HAQ's broadcast reward). The env's
  action wall may change an action; the applied action replaces the requested one in the episode
  before it reaches the replay buffer, so the agent learns from what was played.
- Exploration (:class:`GalenSACModule`): the first ``warmup_episodes`` play random actions (learning
  starts after them): one action per episode, drawn uniformly within ``warmup_spread`` of 0.5 (the
  paced wall's widest affordable uniform policy), played at every step with a small jitter
  (``warmup_jitter``), so that the warm-up covers the uniform policies (int8 everywhere at one keep
  ratio, say) and their neighbours, not only per-step noise in which int8 everywhere is a needle in a
  haystack (``warmup_jitter: null``: each step uniform on its own); then the actor's deterministic action plus truncated-normal noise
  whose scale decays geometrically from ``noise_initial`` to ``noise_final`` over the run's
  episodes, DDPG-style. SAC's entropy temperature is kept small and fixed (``alpha_lr`` 0), so its
  actor's mean converges on the critic's best action instead of staying random.
- The schedule follows the run's episode count, which the driver sets on the env runners before
  every iteration (:func:`set_progress`), and the noise generator is seeded from (seed, episode):
  a resumed run continues the schedule and never replays its warm-up.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.algorithms.sac import SACConfig
from ray.rllib.algorithms.sac.torch.default_sac_torch_rl_module import DefaultSACTorchRLModule
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from agents.callbacks import EpisodeCallback
from agents.config import METHODS, RL_ALGOS, AgentConfig

SCHEDULE_KEY = "galen_schedule"
# The squashed Gaussian clips log-std at -20 (RLlib's log_std_clip_param); exp(-20) is a point for any use.
POINT_LOG_STD = -20.0


def noise_scale(episode: int, schedule: dict[str, Any]) -> float | None:
    """Exploration noise (std, in env action units [0, 1]) of ``episode``; None during warm-up (uniform actions)."""
    warmup, total = schedule["warmup_episodes"], schedule["episodes"]
    if episode < warmup:
        return None
    progress = min(1.0, (episode - warmup) / max(1, total - warmup - 1))
    return schedule["noise_initial"] * (schedule["noise_final"] / schedule["noise_initial"]) ** progress


def truncated_normal(mean: torch.Tensor, std: float, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """Samples of N(mean, std) truncated to [low, high] (inverse CDF), elementwise."""
    normal = torch.distributions.Normal(0.0, 1.0)
    a = normal.cdf((low - mean) / std)
    b = normal.cdf((high - mean) / std)
    u = a + (b - a) * torch.rand(mean.shape, generator=generator)
    return (mean + std * normal.icdf(u.clamp(1e-6, 1 - 1e-6))).clamp(low, high)


class GalenSACModule(DefaultSACTorchRLModule):
    """SAC's default module with Galen's exploration on env runners: uniform warm-up, then decaying truncated noise."""

    def setup(self) -> None:
        super().setup()
        self.schedule = dict(self.model_config.get(SCHEDULE_KEY) or {"warmup_episodes": 0, "episodes": 1, "units": 1, "seed": 0})
        self.schedule.setdefault("noise_initial", 0.5)
        self.schedule.setdefault("noise_final", 0.02)
        self.schedule.setdefault("warmup_jitter", None)
        self.schedule.setdefault("warmup_spread", 0.5)
        self.set_progress(0)

    def set_progress(self, episodes_done: int, noise_floor: float = 0.0) -> None:
        """The run has ``episodes_done`` episodes: continue the schedule from there (a fresh generator per position).

        ``noise_floor``: the least noise std after the warm-up (:func:`repeat_noise`: more while the agent replays policies).
        """
        self._episode0 = int(episodes_done)
        self._noise_floor = float(noise_floor)
        self._steps = 0
        self._generator = torch.Generator().manual_seed(int(self.schedule["seed"]) * 1_000_003 + self._episode0)
        self._episode_base: tuple[int, torch.Tensor] | None = None

    def current_episode(self) -> int:
        return self._episode0 + self._steps // max(1, int(self.schedule["units"]))

    def _forward_exploration(self, batch: dict, **kwargs: Any) -> dict[str, Any]:
        out = self._forward_inference(batch)
        logits = out[Columns.ACTION_DIST_INPUTS]  # (B, 2 * action_dim): mean, log_std before tanh
        batch_size, width = logits.shape
        episode = self.current_episode()  # of this step (before counting it)
        std = noise_scale(episode, self.schedule)
        if std is not None:
            std = max(std, self._noise_floor)
        self._steps += batch_size
        jitter = self.schedule["warmup_jitter"]
        if std is None and jitter is None:  # warm-up: uniform in the squashed space (-1, 1), every step on its own
            squashed = torch.rand((batch_size, width // 2), generator=self._generator) * 2 - 1
        elif std is None:  # warm-up: one uniform action per episode, played at every step with a small jitter
            squashed = truncated_normal(self._base(episode, width // 2).expand(batch_size, -1), 2 * jitter, -1.0, 1.0, self._generator)
        else:  # env units [0, 1] are half the squashed units
            squashed = truncated_normal(torch.tanh(logits[:, : width // 2].detach()), 2 * std, -1.0, 1.0, self._generator)
        loc = torch.atanh(squashed.clamp(-0.999999, 0.999999))
        out[Columns.ACTION_DIST_INPUTS] = torch.cat([loc, torch.full_like(loc, POINT_LOG_STD)], dim=-1).to(logits.dtype)
        return out

    def _base(self, episode: int, dims: int) -> torch.Tensor:
        """``episode``'s warm-up action (squashed units), drawn at its first step."""
        if self._episode_base is None or self._episode_base[0] != episode:
            spread = 2.0 * float(self.schedule["warmup_spread"])  # action units [0, 1] are half the squashed units
            self._episode_base = (episode, (torch.rand((1, dims), generator=self._generator) * 2 - 1) * spread)
        return self._episode_base[1]


def repeat_noise(records: list[dict[str, Any]], source: str, noise: float, window: int = 8) -> float:
    """The noise floor for the next episodes: ``noise`` times the fraction of the agent's last ``window`` episodes that
    played a policy it had already played (0 while every episode is new).

    Channels kept in multiples of 16 and one precision per layer make the policies discrete: once the scheduled noise
    is small, the actor's action plus noise rounds to the same policy every episode, whose reward is already known, and
    the rest of the run is spent replaying it (measured, ResNet-20 at 40%, 80 episodes: 36, 34 and 43 of SAC's episodes
    repeated an earlier policy against TPE's 11, 5, 25). Replays raise the noise until the episodes are new again.
    """
    played = [r for r in records if r.get("source") == source and "policy" in r]
    if noise <= 0 or not played:
        return 0.0
    seen: set[str] = set()
    repeated: list[bool] = []
    for record in played:
        key = json.dumps(record["policy"], sort_keys=True)
        repeated.append(key in seen)
        seen.add(key)
    recent = repeated[-window:]
    return noise * sum(recent) / len(recent)


def set_progress(algo: Any, episodes_done: int, noise_floor: float = 0.0) -> None:
    """Tell every env runner's module how many episodes the run holds (the exploration schedule's position) and the
    least noise std to play with (:func:`repeat_noise`)."""

    def apply(runner: Any) -> None:
        module = getattr(runner, "module", None)
        if module is not None and hasattr(module, "set_progress"):
            module.set_progress(episodes_done, noise_floor)

    algo.env_runner_group.foreach_env_runner(apply)


def learn_burst(algo: Any, updates: int) -> int:
    """``updates`` SAC gradient updates on batches from the replay buffer, then the new weights to the env runners.

    Made once, when the warm-up ends (``agent.warmup_updates`` per warm-up episode): RLlib's own schedule
    gives a few updates per sampled episode, so without the burst the actor is still untrained for the
    first few dozen episodes after the warm-up and plays about 0.5 plus noise at every step (measured:
    a dip of the proxy accuracy for 25-30 episodes). Returns the number of updates made.
    """
    from ray.rllib.core import ALL_MODULES
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_AGENT_STEPS_SAMPLED_LIFETIME, NUM_ENV_STEPS_SAMPLED_LIFETIME

    buffer = getattr(algo, "local_replay_buffer", None)
    config = algo.config
    if buffer is None or updates <= 0 or buffer.get_num_timesteps() < config.total_train_batch_size:
        return 0
    timesteps = {
        NUM_ENV_STEPS_SAMPLED_LIFETIME: algo.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0),
        NUM_AGENT_STEPS_SAMPLED_LIFETIME: algo.metrics.peek((ENV_RUNNER_RESULTS, NUM_AGENT_STEPS_SAMPLED_LIFETIME), default={}),
    }
    results = None
    for _ in range(updates):
        episodes = buffer.sample(num_items=config.total_train_batch_size, n_step=config.n_step, gamma=config.gamma, sample_episodes=True)
        results = algo.learner_group.update(episodes=episodes, timesteps=timesteps)
    modules = set(results[0].keys()) - {ALL_MODULES} if results else None
    algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group, policies=modules, inference_only=True)
    return updates


def prime_calibration(algo: Any, records: list[dict[str, Any]]) -> int:
    """Give every env runner's environment the run's measured episodes (online calibration and wall margin after a resume).

    Returns how many episodes the env runners took in, summed over them.
    """

    def apply(runner: Any) -> int:
        env = getattr(runner, "env", None)
        if env is None:
            return 0
        envs = getattr(getattr(env, "unwrapped", env), "envs", None) or [env]
        primed = 0
        for one in envs:
            ctx = getattr(getattr(one, "unwrapped", one), "ctx", None)
            if ctx is not None:
                primed += ctx.replay_observations(records)
        return primed

    return sum(algo.env_runner_group.foreach_env_runner(apply) or [])


def build_algo_config(
    agent: AgentConfig,
    env_class: type,
    env_config: dict[str, Any],
    units: int,
    seed: int,
    recorder: str | None = None,
    episodes: int = 100,
) -> AlgorithmConfig:
    """The RLlib config of ``agent.algo`` for an env with ``units`` decisions per episode, for a run of ``episodes``.

    ``recorder`` names the run's recorder actor (see :mod:`agents.recorder`) that every finished
    episode is sent to.
    """
    if agent.algo not in RL_ALGOS:
        raise ValueError(f"agent config: field 'algo' is {agent.algo!r}; RLlib runs only: {', '.join(RL_ALGOS)}")
    config = METHODS[agent.algo].load()(agent, units, seed, episodes)
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
        .callbacks(EpisodeCallback.bound(recorder, source=agent.algo, broadcast=agent.algo == "sac"))
    )
    return config


def sac_config(agent: AgentConfig, units: int, seed: int, episodes: int) -> AlgorithmConfig:
    """SAC with Galen's broadcast reward, the warm-up burst and decaying truncated-normal exploration (GalenSACModule)."""
    batch = agent.train_batch_size
    # RLlib's round-robin weights (dqn.calculate_rr_weights): updates per sample call =
    # training_intensity / (batch / (fragment x (env_runners + 1))); choose it to give updates_per_episode.
    native_ratio = batch / (units * (agent.env_runners + 1))
    warmup = agent.warmup_for(episodes)
    warmup_steps = warmup * units
    schedule = {
        "warmup_episodes": warmup,
        "episodes": episodes,
        "units": units,
        "seed": seed,
        "noise_initial": agent.noise_initial,
        "noise_final": agent.noise_final,
        "warmup_jitter": agent.warmup_jitter,
        "warmup_spread": agent.warmup_spread,
    }
    config = (
        SACConfig()
        .training(
            actor_lr=agent.lr,
            critic_lr=agent.critic_lr,
            alpha_lr=agent.alpha_lr,
            gamma=agent.discount("sac"),
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
                module_class=GalenSACModule,
                model_config={"fcnet_hiddens": list(agent.hidden), SCHEDULE_KEY: schedule},
            )
        )
    )
    return config


def ppo_config(agent: AgentConfig, units: int, seed: int, episodes: int) -> AlgorithmConfig:
    """PPO with a batch of ``episodes_per_iteration`` whole episodes."""
    batch = agent.episodes_per_iteration * units
    return (
        PPOConfig()
        .training(
            lr=agent.lr,
            gamma=agent.discount("ppo"),
            lambda_=0.95,
            entropy_coeff=agent.entropy_coeff,
            train_batch_size_per_learner=batch,
            minibatch_size=min(batch, max(units, 32)),
            num_epochs=agent.ppo_epochs,
            vf_clip_param=100.0,
        )
        .rl_module(model_config={"fcnet_hiddens": list(agent.hidden), "vf_share_layers": False})
    )
