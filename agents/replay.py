"""SAC's replay buffer saved beside each agent checkpoint and put back on resume.

RLlib's new-API-stack checkpoint (2.60) holds the modules and optimisers but not the replay
buffer: a resumed SAC run learned from only the episodes played after the resume. Here every
episode in the buffer (observations, actions, rewards as they were trained on: broadcast rewards
and applied actions) is written to ``replay.npz`` as plain arrays, no pickle, and re-added to the
fresh buffer on restore.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

REPLAY_FILE = "replay.npz"


def _buffer(algo: Any) -> Any:
    return getattr(algo, "local_replay_buffer", None)


def save_replay(algo: Any, directory: str | Path) -> int:
    """Write the replay buffer's episodes to ``directory/replay.npz``; returns how many (0 without a buffer)."""
    buffer = _buffer(algo)
    episodes = list(getattr(buffer, "episodes", []) or [])
    if not episodes:
        return 0
    obs, actions, rewards, lengths = [], [], [], []
    for episode in episodes:
        episode = episode.to_numpy() if not episode.is_numpy else episode
        n = len(episode)
        obs.append(np.asarray(episode.get_observations(slice(0, n + 1)), np.float32))  # (n + 1, obs_dim)
        actions.append(np.asarray(episode.get_actions(slice(0, n)), np.float32))  # (n, k)
        rewards.append(np.asarray(episode.get_rewards(slice(0, n)), np.float32))  # (n,)
        lengths.append(n)
    path = Path(directory) / REPLAY_FILE
    with open(path, "wb") as handle:
        np.savez_compressed(
            handle,
            obs=np.concatenate(obs),
            actions=np.concatenate(actions),
            rewards=np.concatenate(rewards),
            lengths=np.asarray(lengths, np.int64),
        )
    return len(episodes)


def load_episodes(directory: str | Path) -> list[Any]:
    """The episodes stored in ``directory/replay.npz`` as finished ``SingleAgentEpisode`` objects."""
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    path = Path(directory) / REPLAY_FILE
    if not path.is_file():
        return []
    with np.load(path, allow_pickle=False) as data:
        obs, actions, rewards, lengths = data["obs"], data["actions"], data["rewards"], data["lengths"]
    episodes, o, a = [], 0, 0
    for n in lengths.tolist():
        episode = SingleAgentEpisode(
            observations=list(obs[o : o + n + 1]),
            actions=list(actions[a : a + n]),
            rewards=list(rewards[a : a + n].tolist()),
            infos=[{} for _ in range(n + 1)],
            terminated=True,
            len_lookback_buffer=0,
        )
        episodes.append(episode.to_numpy())
        o, a = o + n + 1, a + n
    return episodes


def restore_replay(algo: Any, directory: str | Path) -> int:
    """Put the episodes saved in ``directory`` back into the algorithm's replay buffer; returns how many."""
    buffer = _buffer(algo)
    if buffer is None:
        return 0
    episodes = load_episodes(directory)
    if episodes:
        buffer.add(episodes)
    return len(episodes)
