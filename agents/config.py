"""The registry of search methods (:data:`METHODS`: RL algorithms and baselines) and the one typed configuration of a search agent.

Every field documents itself and, where a sweep may tune it, carries its Tune search-space entry
(``metadata["space"]``), so ``galen sweep`` builds its default space from this class, not beside it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from envs.config import ConfigError


@dataclass(frozen=True)
class Method:
    """One search method of ``agent.algo``: adding a method is one entry in :data:`METHODS` plus its implementation.

    ``entry`` (``module:attribute``, imported when the method runs) is, for an RL algorithm, a function
    ``(agent, units, seed, episodes) -> AlgorithmConfig`` (RLlib's algorithm config before the env and the runners are
    set); for a baseline, a class ``(env, seed, episodes, history, agent)`` with ``ask() -> (token, actions) | None``
    and ``tell(token, info)`` (:mod:`agents.baselines`).
    """

    name: str
    rl: bool
    entry: str
    summary: str
    tuned: tuple[str, ...] = ()  # the fields a sweep tunes by default (their spaces are the fields' metadata)

    def load(self) -> Any:
        import importlib

        module, attribute = self.entry.split(":")
        return getattr(importlib.import_module(module), attribute)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "sac",
            True,
            "agents.rllib:sac_config",
            "SAC (RLlib, new API stack) with Galen's broadcast reward and decaying exploration",
            ("lr", "critic_lr", "tau", "initial_alpha", "train_batch_size", "updates_per_episode"),
        ),
        Method(
            "ppo",
            True,
            "agents.rllib:ppo_config",
            "PPO (RLlib, new API stack)",
            ("lr", "entropy_coeff", "episodes_per_iteration", "ppo_epochs"),
        ),
        Method("uniform", False, "agents.baselines:UniformGrid", "one keep ratio and one precision everywhere, swept over a grid"),
        Method("random", False, "agents.baselines:RandomSearch", "every action uniformly random"),
        Method("tpe", False, "agents.baselines:TPESearch", "Optuna's TPE through Ray Tune's searcher"),
        Method("nsga2", False, "agents.baselines:NSGA2Search", "Optuna's NSGA-II: accuracy up, cost down, the budget a constraint"),
        Method("gp-bo", False, "agents.baselines:GPBOSearch", "Optuna's Gaussian-process BO over one keep and one precision per stage"),
    )
}
RL_ALGOS = tuple(name for name, m in METHODS.items() if m.rl)
BASELINES = tuple(name for name, m in METHODS.items() if not m.rl)
ALGOS = tuple(METHODS)
SCREENED = ("random",)  # the methods agent.screen applies to


def _f(default: Any, doc: str, space: tuple | None = None) -> Any:
    return field(default=default, metadata={"help": doc, **({"space": space} if space else {})})


@dataclass(frozen=True)
class AgentConfig:
    """How the policy is searched. SAC is the maintained continuous-action successor of Galen's DDPG."""

    algo: str = _f("sac", "sac | ppo (RLlib, new API stack) or a baseline: " + " | ".join(BASELINES))
    lr: float = _f(3e-4, "actor learning rate (PPO: the learning rate)", ("loguniform", 1e-4, 3e-3))
    critic_lr: float = _f(3e-4, "SAC critic learning rate", ("loguniform", 1e-4, 3e-3))
    alpha_lr: float = _f(0.0, "SAC entropy-temperature learning rate (0: the temperature stays at initial_alpha)")
    gamma: float | None = _f(
        None,
        "discount (None: 0 for SAC, whose every step gets the episode's reward; 0.99 for PPO, rewarded at the end)",
        ("uniform", 0.9, 1.0),
    )
    tau: float = _f(0.01, "SAC target-network update rate", ("loguniform", 1e-3, 5e-2))
    initial_alpha: float = _f(0.01, "SAC entropy temperature (small: the actor's mean follows the critic)", ("loguniform", 1e-3, 0.1))
    noise_initial: float = _f(0.3, "SAC exploration: std of the truncated-normal action noise after warm-up (action units)")
    noise_final: float = _f(0.02, "SAC exploration: std at the run's last episode (decays geometrically)")
    noise_on_repeat: float = _f(
        0.15,
        "SAC exploration: while the agent replays policies it already played, its noise std is at least this times the"
        " fraction of its last 8 episodes that were replays (0: off; the schedule alone)",
    )
    train_batch_size: int = _f(64, "SAC transitions per update", ("choice", 32, 64, 128))
    buffer_size: int = _f(20000, "SAC replay buffer capacity in transitions")
    warmup_episodes: int | None = _f(None, "SAC: episodes of random actions before the first update (None: 15% of the run)")
    warmup_jitter: float | None = _f(
        0.1,
        "SAC warm-up: each episode plays one uniformly drawn action at every step plus truncated-normal noise of this std"
        " (None: every step uniform on its own)",
    )
    warmup_spread: float = _f(
        0.25,
        "SAC warm-up: the per-episode action is drawn uniformly within this distance of 0.5 (action units; 0.5: all of"
        " [0, 1]); with the paced wall 0.5 is the widest uniform policy within budget",
    )
    warmup_updates: int = _f(
        40,
        "SAC: gradient updates per warm-up episode made in one burst when the warm-up ends, before the agent plays"
        " (0: off; without it the untrained actor plays the first post-warm-up episodes)",
    )
    reward_baseline: str = _f(
        "buffer",
        "SAC: buffer (after every iteration each buffered episode's reward is its final reward standardised over the"
        " whole buffer) | moving (AMC's moving mean and spread at the time the episode was played)",
    )
    elite_episodes: int = _f(
        3, "SAC: after every iteration, one more copy of each of the best k episodes goes into the replay buffer (0: off)"
    )
    updates_per_episode: int = _f(8, "SAC gradient updates per sampled episode", ("choice", 4, 8, 16))
    hidden: tuple[int, ...] = _f((256, 256), "hidden layer sizes of the actor and critic MLPs")
    episodes_per_iteration: int = _f(
        4, "episodes per training iteration (PPO: its batch; checkpoints are per iteration)", ("choice", 2, 4, 8)
    )
    ppo_epochs: int = _f(8, "PPO: passes over each batch", ("choice", 4, 8, 16))
    entropy_coeff: float = _f(0.01, "PPO: entropy bonus (keeps exploration from collapsing early)", ("loguniform", 1e-3, 5e-2))
    env_runners: int = _f(1, "RLlib env runners (each holds one env: the model and its data)")
    uniform_steps: int = _f(0, "uniform: keep ratios swept per precision (0: fit the episode budget)")
    screen: int = _f(
        0,
        "random: candidates per episode screened by the online accuracy predictor (agents.accuracy, APQ-style); only the one"
        " predicted most accurate is played (0 or 1: off)",
    )

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ConfigError("agent config", "algo", self.algo, ", ".join(ALGOS))
        positive = ("lr", "critic_lr", "tau", "initial_alpha", "noise_initial", "noise_final")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError("agent config", name, getattr(self, name), "a number > 0")
        if not (isinstance(self.noise_on_repeat, (int, float)) and 0 <= self.noise_on_repeat <= 0.5):
            raise ConfigError("agent config", "noise_on_repeat", self.noise_on_repeat, "a number in [0, 0.5]")
        if not self.alpha_lr >= 0:
            raise ConfigError("agent config", "alpha_lr", self.alpha_lr, "a number >= 0")
        if self.gamma is not None and not 0 <= self.gamma <= 1:
            raise ConfigError("agent config", "gamma", self.gamma, "a number in [0, 1] or null")
        at_least = {
            "train_batch_size": 1,
            "buffer_size": 100,
            "updates_per_episode": 1,
            "episodes_per_iteration": 1,
            "ppo_epochs": 1,
            "env_runners": 0,
            "uniform_steps": 0,
            "screen": 0,
            "warmup_updates": 0,
        }
        for name, low in at_least.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError("agent config", name, value, f"an integer >= {low}")
        if self.warmup_episodes is not None and (not isinstance(self.warmup_episodes, int) or self.warmup_episodes < 0):
            raise ConfigError("agent config", "warmup_episodes", self.warmup_episodes, "an integer >= 0 or null")
        if self.screen > 1 and self.algo not in SCREENED:
            raise ConfigError(
                "agent config", "screen", self.screen, f"0 or 1 (off) with algo {self.algo}; screening works with: {', '.join(SCREENED)}"
            )
        if self.reward_baseline not in ("buffer", "moving"):
            raise ConfigError("agent config", "reward_baseline", self.reward_baseline, "buffer, moving")
        if not isinstance(self.elite_episodes, int) or self.elite_episodes < 0:
            raise ConfigError("agent config", "elite_episodes", self.elite_episodes, "an integer >= 0")
        if not (isinstance(self.warmup_spread, (int, float)) and 0 < self.warmup_spread <= 0.5):
            raise ConfigError("agent config", "warmup_spread", self.warmup_spread, "a number in (0, 0.5]")
        if self.warmup_jitter is not None and not (isinstance(self.warmup_jitter, (int, float)) and self.warmup_jitter > 0):
            raise ConfigError("agent config", "warmup_jitter", self.warmup_jitter, "a number > 0 or null")
        if self.entropy_coeff < 0:
            raise ConfigError("agent config", "entropy_coeff", self.entropy_coeff, "a number >= 0")
        if not self.hidden or any(not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ConfigError("agent config", "hidden", self.hidden, "a non-empty list of positive integers")

    def discount(self, algo: str) -> float:
        return self.gamma if self.gamma is not None else (0.0 if algo == "sac" else 0.99)

    def warmup_for(self, episodes: int) -> int:
        """Warm-up episodes of a run of ``episodes``: the field, or 15% of the run (AMC/HAQ/Galen: 10-20%), at least 4."""
        if self.warmup_episodes is not None:
            return self.warmup_episodes
        return max(4, round(0.15 * episodes))

    @property
    def is_rl(self) -> bool:
        return self.algo in RL_ALGOS

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "agent config") -> AgentConfig:
        data = dict(data or {})
        known = [f.name for f in dataclasses.fields(cls)]
        for name in data:
            if name not in known:
                raise ConfigError(where, name, data[name], ", ".join(known), unknown=True)
        if "hidden" in data and isinstance(data["hidden"], list):
            data["hidden"] = tuple(data["hidden"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["hidden"] = list(self.hidden)
        return data


def search_space_defaults(algo: str) -> dict[str, tuple]:
    """The fields a sweep tunes for ``algo`` by default, with their space (from the field metadata)."""
    relevant = METHODS[algo].tuned if algo in METHODS else ()
    spaces = tunable_spaces()
    return {name: spaces[name] for name in relevant}


def tunable_spaces() -> dict[str, tuple]:
    """Every agent field a sweep may tune, with its space ``(kind, *args)`` from the field metadata."""
    return {f.name: f.metadata["space"] for f in dataclasses.fields(AgentConfig) if "space" in f.metadata}
