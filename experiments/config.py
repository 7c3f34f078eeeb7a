"""The search config: one YAML file, validated with messages that name the field and the allowed values.

```yaml
name: demo                      # the run's name (W&B run name, report title)
run_dir: runs/demo              # where everything is written (relative paths: to the working directory)
episodes: 60                    # episodes in all (a resumed run continues up to this)
seed: 0
workload: {model: resnet20, dataset: fashion-mnist, checkpoint: null, base_epochs: 2, train_base: true}
# or your own trained model: workload: {model: mypkg.nets:build, dataset: /data/images, weights: model.pt}
# with its own inputs: input_size: 28, pad: 0, normalize: false (or mean: [..], std: [..], or transform: mypkg.prep:fn)
env: {kind: joint, target: local-cpu, objective: latency, target_ratio: 0.25, reward: galen}
agent: {algo: sac, warmup_episodes: 10}
wandb: {project: null}          # a project name turns W&B logging on (offline unless WANDB_API_KEY is set)
```

``workload`` and ``env`` are the fields of :class:`envs.config.EnvConfig` (split by what they
describe); ``agent`` those of :class:`agents.config.AgentConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from agents.config import AgentConfig
from envs.config import PREPROCESSING_FIELDS, ConfigError, EnvConfig

WHERE = "search config"
WORKLOAD_FIELDS = ("model", "dataset", "data_dir", "checkpoint", "weights", *PREPROCESSING_FIELDS, "base_epochs", "train_base")
ENV_FIELDS = tuple(f.name for f in dataclasses.fields(EnvConfig) if f.name not in (*WORKLOAD_FIELDS, "seed"))
WANDB_FIELDS = ("project", "entity", "mode", "group")
TOP_FIELDS = ("name", "run_dir", "episodes", "seed", "checkpoint_every", "safety_net", "workload", "env", "agent", "wandb")
WANDB_MODES = ("online", "offline", "disabled")


@dataclass(frozen=True)
class SearchConfig:
    """A validated search: what to compress, for which target and budget, with which agent, for how long."""

    name: str = "search"
    run_dir: str = "runs/search"
    episodes: int = 60
    seed: int = 0
    checkpoint_every: int = 1  # training iterations between agent checkpoints
    safety_net: bool = True  # with the wall on: the widest uniform policies within budget after the search
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    wandb: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        if not isinstance(data, dict):
            raise ConfigError(WHERE, "<top level>", type(data).__name__, "a mapping of the fields " + ", ".join(TOP_FIELDS))
        _check_keys(data, TOP_FIELDS, "")
        workload = _section(data, "workload", WORKLOAD_FIELDS)
        env = _section(data, "env", ENV_FIELDS)
        wandb = _section(data, "wandb", WANDB_FIELDS)
        seed = _integer(data, "seed", 0, 0)
        env_data = {**workload, **env, "seed": seed}
        try:
            env_config = EnvConfig.from_dict(env_data)
        except ConfigError as error:
            section = "workload." if error.field in WORKLOAD_FIELDS else "env."
            raise error.reworded(WHERE, section) from None
        except TypeError as error:  # a wrong type the dataclass could not even compare
            raise ConfigError(WHERE, "env", env_data, f"values of the right types ({error})") from None
        try:
            agent = AgentConfig.from_dict(data.get("agent"))
        except ConfigError as error:
            raise error.reworded(WHERE, "agent.") from None
        episodes = _integer(data, "episodes", 60, 1)
        every = _integer(data, "checkpoint_every", 1, 1)
        safety = data.get("safety_net", True)
        if not isinstance(safety, bool):
            raise ConfigError(WHERE, "safety_net", safety, "true or false")
        if wandb.get("mode") is not None and wandb["mode"] not in WANDB_MODES:
            raise ConfigError(WHERE, "wandb.mode", wandb["mode"], ", ".join(WANDB_MODES))
        for name in ("name", "run_dir"):
            if name in data and (not isinstance(data[name], str) or not data[name]):
                raise ConfigError(WHERE, name, data[name], "a non-empty string")
        name = data.get("name", "search")
        return cls(
            name=name,
            run_dir=data.get("run_dir", f"runs/{name}"),
            episodes=episodes,
            seed=seed,
            checkpoint_every=every,
            safety_net=safety,
            env=env_config,
            agent=agent,
            wandb=wandb,
        )

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> SearchConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"search config: no such file {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ValueError(f"search config: {path} is not valid YAML: {error}") from None
        return cls.from_dict(merge(data or {}, overrides or {}))

    def to_dict(self) -> dict[str, Any]:
        env = self.env.to_dict()
        return {
            "name": self.name,
            "run_dir": self.run_dir,
            "episodes": self.episodes,
            "seed": self.seed,
            "checkpoint_every": self.checkpoint_every,
            "safety_net": self.safety_net,
            "workload": {k: env[k] for k in WORKLOAD_FIELDS},
            "env": {k: env[k] for k in ENV_FIELDS},
            "agent": self.agent.to_dict(),
            "wandb": dict(self.wandb),
        }

    @property
    def safety(self) -> bool:
        """Whether the search ends with the safety net: asked for (``safety_net``) and the wall on (``env.budget_guard``)."""
        return self.safety_net and self.env.budget_guard

    def replace(self, **changes: Any) -> SearchConfig:
        return SearchConfig.from_dict(merge(self.to_dict(), changes))


def _integer(data: dict[str, Any], name: str, default: int, low: int) -> int:
    value = data.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(WHERE, name, value, f"an integer >= {low}")
    return value


def _check_keys(data: dict[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(WHERE, prefix + str(key), data[key], ", ".join(prefix + a for a in allowed), unknown=True)


def _section(data: dict[str, Any], name: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    section = data.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(WHERE, name, section, "a mapping of the fields " + ", ".join(allowed))
    _check_keys(section, allowed, name + ".")
    return dict(section)


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied; nested dicts merge, and dotted keys (``agent.lr``) address nested fields."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            out[head] = merge(out.get(head) or {}, {rest: value})
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def builtin_config(name: str) -> Path:
    """A config shipped with the package (``experiments/configs/<name>.yaml``)."""
    path = Path(str(resources.files("experiments") / "configs" / f"{name}.yaml"))
    if not path.is_file():
        raise FileNotFoundError(f"no built-in config {name!r} (experiments/configs/)")
    return path
