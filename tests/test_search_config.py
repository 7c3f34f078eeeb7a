"""Search configs and the episode log: exact messages for bad input, and the log's guarantees (no Ray, no model)."""

from __future__ import annotations

import json

import pytest
import yaml

from agents.config import AgentConfig, search_space_defaults
from agents.recorder import EpisodeLog, pareto_front, read_episodes
from envs.config import ConfigError
from experiments.config import SearchConfig, builtin_config
from experiments.rundir import RunDir, RunDirError


def test_demo_config_is_valid_and_matches_the_issue() -> None:
    config = SearchConfig.from_yaml(builtin_config("demo"))
    assert (config.env.model, config.env.dataset, config.env.kind, config.env.target) == ("resnet20", "fashion-mnist", "joint", "local-cpu")
    assert (config.agent.algo, config.env.objective, config.env.target_ratio) == ("sac", "latency", 0.6)
    assert config.env.train_base is True


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"agent": {"algo": "ddpg"}}, "search config: field 'agent.algo' is 'ddpg'; allowed: sac, ppo, uniform, random, tpe, nsga2, gp-bo"),
        (
            {"env": {"reward": "best"}},
            "search config: field 'env.reward' is 'best'; allowed: accuracy, galen, constrained-soft, constrained-hard, amc",
        ),
        ({"env": {"kind": "distill"}}, "search config: field 'env.kind' is 'distill'; allowed: prune, quantize, joint, two-stage"),
        ({"env": {"target_ratio": 1.5}}, r"search config: field 'env.target_ratio' is 1.5; allowed: a number in \(0, 1\]"),
        ({"workload": {"base_epochs": 0}}, "search config: field 'workload.base_epochs' is 0; allowed: an integer >= 1"),
        ({"episodes": 0}, "search config: field 'episodes' is 0; allowed: an integer >= 1"),
        ({"agent": {"gamma": 1.5}}, r"search config: field 'agent.gamma' is 1.5; allowed: a number in \[0, 1\] or null"),
        ({"agent": {"warmup_episodes": -1}}, "search config: field 'agent.warmup_episodes' is -1; allowed: an integer >= 0 or null"),
        ({"agent": {"noise_on_repeat": 2}}, r"search config: field 'agent.noise_on_repeat' is 2; allowed: a number in \[0, 0.5\]"),
        ({"agnet": {}}, "search config: unknown field 'agnet'; allowed fields: name, run_dir, episodes"),
        ({"env": {"model": "resnet20"}}, "search config: unknown field 'env.model'; allowed fields: env.kind, env.target"),
        ({"agent": {"learning_rate": 1}}, "search config: unknown field 'agent.learning_rate'; allowed fields: algo, lr"),
        ({"wandb": {"mode": "cloud"}}, "search config: field 'wandb.mode' is 'cloud'; allowed: online, offline, disabled"),
        ({"safety_net": "no"}, "search config: field 'safety_net' is 'no'; allowed: true or false"),
    ],
)
def test_bad_search_configs_name_the_field_and_the_allowed_values(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}"):
        SearchConfig.from_dict(data)


def test_yaml_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent: [unclosed\n")
    with pytest.raises(ValueError, match=f"search config: {bad} is not valid YAML"):
        SearchConfig.from_yaml(bad)
    with pytest.raises(FileNotFoundError, match="search config: no such file"):
        SearchConfig.from_yaml(tmp_path / "missing.yaml")


def test_overrides_and_round_trip(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nagent: {algo: ppo}\n")
    config = SearchConfig.from_yaml(path, {"agent.lr": 0.001, "env.target_ratio": 0.5})
    assert (config.agent.algo, config.agent.lr, config.env.target_ratio, config.run_dir) == ("ppo", 0.001, 0.5, "runs/x")
    assert SearchConfig.from_dict(config.to_dict()) == config


def test_sweep_space_comes_from_the_agent_config_fields() -> None:
    space = search_space_defaults("sac")
    assert space["lr"] == ("loguniform", 1e-4, 3e-3)
    assert "entropy_coeff" not in space and "entropy_coeff" in search_space_defaults("ppo")
    assert AgentConfig.from_dict({"hidden": [32, 32]}).hidden == (32, 32)


def test_every_search_method_is_one_registry_entry_that_loads() -> None:
    from agents.baselines import Searcher
    from agents.config import ALGOS, BASELINES, METHODS, RL_ALGOS

    assert ALGOS == tuple(METHODS) and set(RL_ALGOS) | set(BASELINES) == set(ALGOS) and not set(RL_ALGOS) & set(BASELINES)
    for name, method in METHODS.items():
        entry = method.load()
        assert callable(entry) and (issubclass(entry, Searcher) if not method.rl else entry.__name__ == f"{name}_config"), name
        assert set(method.tuned) <= set(search_space_defaults(name)) and AgentConfig(algo=name).is_rl == method.rl
    with pytest.raises(ConfigError, match="field 'algo'.*'dqn'.*allowed: sac, ppo, uniform, random, tpe, nsga2, gp-bo"):
        AgentConfig(algo="dqn")


def _info(accuracy: float, cost: float, target: float = 0.5) -> dict:
    return {
        "reward": accuracy - 5 * abs(cost / target - 1),
        "accuracy": accuracy,
        "cost_ratio": cost,
        "cost_over_target": cost / target,
        "within_budget": cost <= target,
        "policy": {"schema_version": 1, "keep": {}, "precision": {}},
    }


def test_episode_log_numbers_pareto_best_and_torn_lines(tmp_path) -> None:
    log = EpisodeLog(tmp_path)
    log.record(_info(0.9, 0.8), "sac")  # over budget
    log.record(_info(0.7, 0.4), "sac")  # within
    log.record(_info(0.8, 0.45), "sac")  # within, better
    log.record(_info(0.6, 0.6), "sac")  # dominated by #2
    assert [r["episode"] for r in read_episodes(tmp_path)] == [0, 1, 2, 3]
    best = json.loads((tmp_path / "best_policy.json").read_text())
    assert best["episode"] == 2
    front = json.loads((tmp_path / "pareto.json").read_text())
    assert [r["episode"] for r in front] == [1, 2, 0]
    assert pareto_front(read_episodes(tmp_path)) == front
    # A run killed in the middle of a write leaves a torn line: it is dropped and numbering goes on.
    with open(tmp_path / "episodes.jsonl", "a") as f:
        f.write('{"episode": 4, "sour')
    reopened = EpisodeLog(tmp_path)
    assert reopened.count() == 4
    assert reopened.record(_info(0.5, 0.3), "sac")["episode"] == 4
    assert [r["episode"] for r in read_episodes(tmp_path)] == [0, 1, 2, 3, 4]
    assert reopened.best["episode"] == 2


def test_run_dir_refuses_to_overwrite_and_to_resume_a_different_config(tmp_path) -> None:
    config = SearchConfig.from_dict({"run_dir": str(tmp_path / "run"), "episodes": 5})
    run = RunDir.open(config, resume=False)
    run.set_state(feasible_range=[0.4, 1.0])
    # stopped before its first episode: the same command (even with a changed config) starts it again, afresh
    again = RunDir.open(config.replace(**{"env.target_ratio": 0.5}), resume=False)
    assert again.state() == {} and yaml.safe_load((again.path / "config.yaml").read_text())["env"]["target_ratio"] == 0.5
    log = EpisodeLog(again.path)
    log.record(_info(0.5, 0.3), "sac")
    log.close()
    with pytest.raises(RunDirError, match="already holds a run .1 episodes.; pass --resume to continue it"):
        RunDir.open(config, resume=False)
    with pytest.raises(RunDirError, match="--resume: env.target_ratio is 0.25 but the run in .* used 0.5"):
        RunDir.open(config, resume=True)
    config = config.replace(**{"env.target_ratio": 0.5})
    RunDir.open(config.replace(episodes=9), resume=True)  # more episodes: allowed
    with pytest.raises(RunDirError, match="--resume: agent.lr is 0.001 but the run in .* used 0.0003"):
        RunDir.open(config.replace(**{"agent.lr": 0.001}), resume=True)


def test_a_run_started_before_a_field_existed_resumes_with_its_default(tmp_path) -> None:
    config = SearchConfig.from_dict({"run_dir": str(tmp_path / "run")})
    RunDir.open(config, resume=False)
    (tmp_path / "run" / "checkpoints" / "iter_000001").mkdir()  # a run with something to lose: checked on resume
    path = tmp_path / "run" / "config.yaml"
    old = yaml.safe_load(path.read_text())
    del old["env"]["threads"], old["workload"]["input_size"]  # written by a version without these fields
    path.write_text(yaml.safe_dump(old))
    RunDir.open(config, resume=True)  # their defaults: the same search
    path.write_text(yaml.safe_dump(old))
    RunDir.open(config.replace(**{"env.threads": 1}), resume=True)  # threads change the speed only
    path.write_text(yaml.safe_dump(old))
    with pytest.raises(RunDirError, match=r"--resume: workload.input_size is 28 but the run in .* used None"):
        RunDir.open(config.replace(**{"workload.input_size": 28, "workload.weights": "m.pt"}), resume=True)


def test_a_resumed_run_counts_the_time_of_every_process(tmp_path, monkeypatch) -> None:
    import experiments.rundir as rundir

    now = [1000.0]
    monkeypatch.setattr(rundir.time, "time", lambda: now[0])
    config = SearchConfig.from_dict({"run_dir": str(tmp_path / "run")})
    first = RunDir.open(config, resume=False)
    first.start_clock()
    now[0] += 30
    first.set_state(status="running")  # killed after this: 30 s on record
    assert first.state()["seconds"] == 30
    second = RunDir(tmp_path / "run")  # the resumed process
    now[0] += 600  # the time between the processes does not count
    second.start_clock()
    now[0] += 12
    second.set_state(status="finished")
    assert second.state()["seconds"] == 42
