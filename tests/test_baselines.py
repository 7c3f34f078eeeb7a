"""Baselines on the real env: uniform grids, seeded random search, TPE through Ray Tune's Optuna searcher, NSGA-II and GP-BO."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agents.baselines import GPBOSearch, NSGA2Search, TPESearch, play, play_safety_net, run_baseline, safety_net, stage_groups, uniform_grid
from agents.recorder import EpisodeLog, read_episodes
from envs import JointEnv, PruneEnv


@pytest.fixture(scope="module")
def env_config(trained_resnet20) -> dict:
    return {"checkpoint": str(trained_resnet20.path), "val_size": 200, "sensitivity_images": 64, "calibration_images": 64, "bn_batches": 4}


def test_uniform_grid_sweeps_one_ratio_and_precision_everywhere(env_config) -> None:
    env = JointEnv(env_config)
    grid = uniform_grid(env, episodes=6)
    assert len(grid) == 6  # 3 keep ratios x (int8, fp32)
    for actions in grid:
        assert actions.shape == (len(env.units), 2)
        assert np.all(actions == actions[0])  # the same decision at every layer
    assert len({env.decode_policy(a).to_json() for a in grid}) == 6  # distinct policies only
    assert sorted({float(a[0, 0]) for a in grid}) == [0.0, 0.5, 1.0]
    assert sorted({float(a[0, 1]) for a in grid}) == [0.25, 0.75]  # the middle of the int8 and fp32 bins
    assert len(uniform_grid(PruneEnv(env_config), episodes=4)) == 4
    assert len(uniform_grid(env, episodes=80)) < 80  # neighbouring keep ratios that round to the same channels count once


def test_safety_net_plays_the_widest_uniform_policy_per_precision_within_the_limit(env_config, tmp_path) -> None:
    env = JointEnv({**env_config, "objective": "macs", "target_ratio": 0.5})
    nets = safety_net(env)
    assert len(nets) == len(env.ctx.weight_options) == 8  # one per precision option (2..8 bits and float for MACs)
    limit = 0.5 / 1.03
    for actions in nets:
        policy = env.decode_policy(actions)
        assert env.cost_ratio(policy) <= limit
        wider = actions.copy()
        wider[:, 0] += 1 / 20  # the next keep step of the grid: over the limit
        assert env.cost_ratio(env.decode_policy(np.clip(wider, 0, 1))) > limit or wider[0, 0] > 1
    log = EpisodeLog(tmp_path / "safety")
    assert play_safety_net(env, log.record) == 8
    records = read_episodes(tmp_path / "safety")
    assert [r["source"] for r in records] == ["uniform-safety"] * 8
    assert all(r["within_budget"] and r["clamped_steps"] == 0 for r in records)  # played as set, without the wall


def test_uniform_and_random_baselines_record_episodes_and_resume(env_config, tmp_path) -> None:
    env = JointEnv({**env_config, "objective": "macs", "target_ratio": 0.5})  # MACs: the baselines' mechanics, no timings
    log = EpisodeLog(tmp_path / "uniform")
    # keep ratios {0, 1} x each precision; stop after the first two (the lowest precision at keep 0, then keep 1)
    assert run_baseline("uniform", env, log, episodes=2, seed=0, uniform_steps=2) == 2
    records = read_episodes(tmp_path / "uniform")
    assert [r["source"] for r in records] == ["uniform", "uniform"]
    # keep 0 (min_keep everywhere): far fewer MACs than keep 1
    assert records[0]["macs_ratio"] < 0.2 < records[1]["macs_ratio"]

    first = EpisodeLog(tmp_path / "random")
    run_baseline("random", env, first, episodes=2, seed=3)
    resumed = EpisodeLog(tmp_path / "random")
    assert run_baseline("random", env, resumed, episodes=3, seed=3) == 1  # only the missing episode
    fresh = EpisodeLog(tmp_path / "random-fresh")
    run_baseline("random", env, fresh, episodes=3, seed=3)
    # the resumed run played exactly the actions an uninterrupted run plays
    assert [r["actions"] for r in read_episodes(tmp_path / "random")] == [r["actions"] for r in read_episodes(tmp_path / "random-fresh")]


def test_random_search_screened_by_the_accuracy_predictor_plays_the_candidate_it_ranks_first(env_config, tmp_path, monkeypatch) -> None:
    from agents.accuracy import AccuracyPredictor, rank_agreement
    from agents.baselines import RandomSearch

    monkeypatch.setattr(AccuracyPredictor, "MIN_EPISODES", 2)  # a 5-episode test: screening from the third episode
    env = JointEnv({**env_config, "objective": "macs", "target_ratio": 0.6})
    log = EpisodeLog(tmp_path / "screened")
    assert run_baseline("random", env, log, episodes=5, seed=1, screen=4) == 5
    records = read_episodes(tmp_path / "screened")
    assert [r.get("predicted_accuracy") is None for r in records] == [True, True, False, False, False]
    # the fourth episode: of its 4 candidates, the one the predictor refitted on the first three ranks first
    token, played = RandomSearch(env, seed=1, history=records[:3], screen=4).ask()
    assert np.allclose(played, records[3]["actions"]) and token[1] == pytest.approx(records[3]["predicted_accuracy"])
    candidates = _candidates(env, seed=1, episode=3, screen=4)
    predicted = AccuracyPredictor.for_env(env).fit(records[:3]).predict([env.planned_policy(a) for a in candidates])
    assert token[1] == pytest.approx(float(predicted.max())) and np.allclose(played, candidates[int(predicted.argmax())])
    # planning is what the episode plays: the wall's steps, the repair and the fill, without building anything
    assert env.planned_policy(played).to_dict() == records[3]["policy"]
    assert rank_agreement(records)["episodes"] == 3
    assert RandomSearch(env, seed=1, history=records, screen=4).predictor.samples == 5  # a resumed run refits on every episode


def _candidates(env, seed: int, episode: int, screen: int) -> list:
    from agents.baselines import _random_actions

    return [_random_actions(env, seed, episode, j) for j in range(screen)]


def test_tpe_searches_only_the_used_action_dimensions_and_resumes_from_history(env_config, tmp_path) -> None:
    env = JointEnv({**env_config, "objective": "macs", "target_ratio": 0.5})  # the method's mechanics: no timings
    mask = env.action_mask()
    assert mask[:, 1:].all()  # precision is decided at every layer
    assert mask[:, 0].sum() == len(env.ctx.structure.groups)  # a keep ratio only at each group's first layer
    search = TPESearch(env, seed=0, history=[])
    assert len(search.names) == int(mask.sum())
    log = EpisodeLog(tmp_path / "tpe")
    assert run_baseline("tpe", env, log, episodes=2, seed=0) == 2
    records = read_episodes(tmp_path / "tpe")
    assert all(r["source"] == "tpe" and len(r["actions"]) == len(env.units) for r in records)
    resumed = TPESearch(env, seed=0, history=records)
    assert len(resumed.searcher._ot_study.trials) == 2  # the recorded episodes are the searcher's history


def test_gp_bo_searches_one_keep_and_one_precision_per_stage(env_config, tmp_path) -> None:
    env = JointEnv({**env_config, "objective": "macs", "target_ratio": 0.5})  # the method's mechanics: no timings
    groups = stage_groups(env)
    # ResNet-20: the stem, three stages of layers.<stage>.*, the classifier
    assert [env.units[g[0]] for g in groups][:2] == ["conv1", "layers.0.0.conv1"] and len(groups) == 5
    search = GPBOSearch(env, seed=0, episodes=3, history=[])
    assert len(search.params) <= 2 * len(groups) < int(env.action_mask().sum())
    _, actions = search.ask()
    stage = groups[2]
    assert len({float(actions[i, 1]) for i in stage}) == 1  # one precision action for the whole stage
    log = EpisodeLog(tmp_path / "gp")
    assert run_baseline("gp-bo", env, log, episodes=3, seed=0) == 3
    records = read_episodes(tmp_path / "gp")
    assert [r["source"] for r in records] == ["gp-bo"] * 3
    assert run_baseline("gp-bo", env, EpisodeLog(tmp_path / "gp"), episodes=4, seed=0) == 1  # resumed: only the missing one
    assert len(GPBOSearch(env, seed=0, episodes=4, history=read_episodes(tmp_path / "gp")).study.trials) == 4


def test_nsga2_optimises_accuracy_and_cost_under_the_budget_constraint(env_config, tmp_path) -> None:
    env = JointEnv({**env_config, "objective": "macs", "target_ratio": 0.5})  # the method's mechanics: no timings
    log = EpisodeLog(tmp_path / "nsga2")
    assert run_baseline("nsga2", env, log, episodes=3, seed=0) == 3
    records = read_episodes(tmp_path / "nsga2")
    assert [r["source"] for r in records] == ["nsga2"] * 3
    study = NSGA2Search(env, seed=0, episodes=3, history=records).study
    assert [len(t.values) for t in study.trials] == [2, 2, 2]  # accuracy and the cost ratio
    assert all(t.values == [r["reward"], r["cost_ratio"]] for t, r in zip(study.trials, records, strict=True))
    assert all(
        t.user_attrs["over_budget"] == t.constraints["over_budget"] == r["cost_ratio"] / env.config.target_ratio - 1
        for t, r in zip(study.trials, records, strict=True)
    )  # the budget is the trials' constraint, which NSGA-II ranks by


def test_the_safety_net_times_afresh_a_cached_reading_over_budget_before_it_decides(env_config, monkeypatch) -> None:
    import dataclasses

    env = JointEnv({**env_config, "target_ratio": 0.95})
    nets = safety_net(env)  # chosen on real timings
    # the predictor calibrated on real timings too, before the disturbance: a calibration under it remembered 0.99 for
    # all 13 of its models in the session's cache, and test_envs' predictor, built from them, failed its wall tests
    env.ctx.predictor  # noqa: B018
    client, confirmed = env.ctx.client, []
    real_measure, real_confirm = client.measure, client.confirm

    def disturbed(candidate: bytes, reference: bytes | None = None):  # the cache holds a timing taken under load
        return dataclasses.replace(real_measure(candidate, reference), ratio=0.99, cached=True)

    def confirm(candidate: bytes, reference: bytes | None = None, **kwargs):
        confirmed.append(candidate)
        return real_confirm(candidate, reference, **kwargs)

    monkeypatch.setattr(client, "measure", disturbed)
    monkeypatch.setattr(client, "confirm", confirm)
    with env.unguarded():  # as play_safety_net plays it: no wall, no repair
        info = play(env, nets[0])
    assert len(confirmed) == 1 and info["latency_ratio"] < 0.99 and not info["latency_cached"]
    assert info["within_budget"]


@pytest.mark.own_process  # starts Ray: a fresh interpreter (tests/conftest.py)
def test_a_two_stage_search_prunes_at_8_bits_then_chooses_precisions_of_the_best_pruned_model(trained_resnet20, tmp_path) -> None:
    """With SAC, an RL agent per stage (a baseline plays a stage through the same ``run_method`` as a joint search; this
    test ran with random search until 2026-12-03, and with SAC after it failed on a dead latency actor of the first
    search in the process, see ``LatencyClient.current``)."""
    from experiments.config import SearchConfig
    from experiments.search import main

    agent = {"algo": "sac", "warmup_episodes": 1, "env_runners": 0, "episodes_per_iteration": 1}

    config = SearchConfig.from_dict(
        {
            "name": "two",
            "run_dir": str(tmp_path / "two"),
            "episodes": 4,
            "safety_net": False,  # the uniform grid after each stage: not what this test checks (about 20 s a stage)
            "workload": {"model": "resnet20", "checkpoint": str(trained_resnet20.path)},
            "env": {"kind": "two-stage", "objective": "macs", "target_ratio": 0.5, "val_size": 200, "bn_batches": 4}
            | {"sensitivity_images": 64, "calibration_images": 64},
            "agent": agent,
        }
    )
    main(config, summary=False)
    stage1, stage2 = read_episodes(tmp_path / "two" / "stage-1-prune"), read_episodes(tmp_path / "two" / "stage-2-quantize")
    searched = [[r for r in records if r["source"] == agent["algo"]] for records in (stage1, stage2)]
    assert [len(s) for s in searched] == [2, 2]  # the joint search's episode count, split in two
    for r in stage1:  # stage 1 prunes the network every layer of which runs at 8 bits
        assert {p["weight_bits"] for p in r["policy"]["precision"].values()} == {8} and r["within_budget"]
    assert any(k < 1.0 for r in searched[0] for k in r["policy"]["keep"].values())
    best1 = json.loads((tmp_path / "two" / "stage-1-prune" / "best_policy.json").read_text())
    for r in stage2:  # stage 2 keeps stage 1's best pruning and chooses each layer's precision, within the budget
        assert r["policy"]["keep"] == best1["policy"]["keep"] and r["within_budget"]
    combined = read_episodes(tmp_path / "two")
    assert [r["episode"] for r in combined] == list(range(len(stage1) + len(stage2)))
    assert [r["stage"] for r in combined] == [1] * len(stage1) + [2] * len(stage2)
    best = json.loads((tmp_path / "two" / "best_policy.json").read_text())
    assert best["accuracy"] == max(r["accuracy"] for r in combined if r["within_budget"])
    main(config, resume=True, summary=False)  # both stages finished: nothing is played again
    assert len(read_episodes(tmp_path / "two")) == len(combined)
