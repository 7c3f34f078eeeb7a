"""The env class runs on RLlib's remote env runners (new API stack), where a driver's gym.register is not visible."""

from __future__ import annotations

import os
import tempfile

import pytest

from envs import PruneEnv


@pytest.mark.own_process  # starts Ray: a fresh interpreter (tests/conftest.py)
def test_rllib_remote_env_runner_completes_episodes(trained_resnet20) -> None:
    ray = pytest.importorskip("ray")
    from ray.rllib.algorithms.ppo import PPOConfig

    tmp = tempfile.mkdtemp(prefix="galen-rllib-")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", _temp_dir=tmp, log_to_driver=False)
    try:
        env_config = {"checkpoint": str(trained_resnet20.path), "val_size": 200, "sensitivity_images": 64, "calibration_images": 64}
        units = len(PruneEnv(env_config).units)
        config = (
            PPOConfig()
            .environment(env=PruneEnv, env_config=env_config)
            .env_runners(num_env_runners=1, rollout_fragment_length=units, num_cpus_per_env_runner=1, sample_timeout_s=600.0)
            .training(train_batch_size_per_learner=units * 2, minibatch_size=units, num_epochs=1)
        )
        algo = config.build_algo()
        try:
            result = algo.train()
            runner = result["env_runners"]
            assert runner["num_episodes"] >= 1
            assert -10 < runner["episode_return_mean"] <= 1.0  # galen reward: accuracy minus the budget penalty
        finally:
            algo.stop()
    finally:
        ray.shutdown()
