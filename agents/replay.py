"""SAC's replay buffer saved beside each agent checkpoint and put back on resume.

RLlib's new-API-stack checkpoint (2.60) holds the modules and optimisers but not the replay
buffer: a resumed SAC run learned from only the episodes played after the resume. Here every
episode in the buffer (observations, actions, rewards as they were trained on: broadcast rewards
and applied actions) is written to ``replay.npz`` as plain arrays, no pickle, and re-added to the
fresh buffer on restore.

``renormalise_rewards`` rewrites, after every training iteration, every buffered episode's broadcast reward as its
final reward standardised by the mean and spread of all the episodes in the buffer: the env runner's moving
baseline gives the same policy a different reward at different times (the first episodes of a run, with
no spread yet, get +-5), which the critic, trained on old episodes for the whole run, would learn as noise.

``replay_elites`` adds, after every training iteration, one more copy of each of the best episodes
the buffer holds (by the final, un-normalised reward), as NNCF's AutoQ keeps its best episodes in
replay: the critic sees the rare good episodes as often as the many poor ones around them.
"""

from __future__ import annotations

import warnings
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
    obs, actions, rewards, lengths, finals = [], [], [], [], []
    for episode in episodes:
        episode = episode.to_numpy() if not episode.is_numpy else episode
        n = len(episode)
        finals.append(final_reward(episode))
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
            finals=np.asarray(finals, np.float64),
        )
    return len(episodes)


def final_reward(episode: Any) -> float:
    """The env's final reward of a finished episode (before the broadcast normalisation; NaN if unknown)."""
    info = episode.get_infos(-1) if len(episode) else {}
    value = info.get("reward") if isinstance(info, dict) else None
    return float(value) if value is not None else float("nan")


def _episode(obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, final: float) -> Any:
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    n = len(actions)
    infos: list[dict[str, Any]] = [{} for _ in range(n)] + [{} if np.isnan(final) else {"reward": float(final)}]
    episode = SingleAgentEpisode(
        observations=list(obs),
        actions=list(actions),
        rewards=list(np.asarray(rewards, np.float32).tolist()),
        infos=infos,
        terminated=True,
        len_lookback_buffer=0,
    )
    return episode.to_numpy()


def replay_elites(algo: Any, k: int) -> int:
    """Add one copy of each of the ``k`` best distinct episodes in the replay buffer (by final reward); returns how many."""
    buffer = _buffer(algo)
    episodes = list(getattr(buffer, "episodes", []) or []) if buffer is not None else []
    best: dict[bytes, tuple[float, Any]] = {}
    for episode in episodes:
        episode = episode.to_numpy() if not episode.is_numpy else episode
        final = final_reward(episode)
        if np.isnan(final):
            continue
        key = _policy_key(episode)
        if key not in best or final > best[key][0]:
            best[key] = (final, episode)
    elites = sorted(best.values(), key=lambda item: -item[0])[:k]
    copies = []
    for final, episode in elites:
        n = len(episode)
        copies.append(
            _episode(
                np.asarray(episode.get_observations(slice(0, n + 1)), np.float32),
                np.asarray(episode.get_actions(slice(0, n)), np.float32),
                np.asarray(episode.get_rewards(slice(0, n)), np.float32),
                final,
            )
        )
    if copies:
        buffer.add(copies)
    return len(copies)


def _policy_key(episode: Any) -> bytes:
    """The episode's actions, rounded: equal for copies of one episode (elites) and replays of one policy."""
    return np.asarray(episode.get_actions(slice(0, len(episode))), np.float32).round(4).tobytes()


def renormalise_rewards(algo: Any, min_spread: float = 0.01, clip: float = 5.0) -> int:
    """Every buffered episode's step rewards become (final - mean) / spread over the buffer's distinct episodes.

    Episodes without a known final reward keep theirs. Returns the number of episodes rewritten.
    """
    buffer = _buffer(algo)
    scored = [(e, final_reward(e)) for e in (getattr(buffer, "episodes", []) or []) if len(e)] if buffer is not None else []
    scored = [(e, final) for e, final in scored if not np.isnan(final)]
    finals = np.asarray(list({_policy_key(e): final for e, final in scored}.values()), np.float64)
    if len(finals) < 2:
        return 0
    mean, spread = float(finals.mean()), max(float(finals.std()), min_spread)
    with warnings.catch_warnings():
        # RLlib checks each new reward of a finished episode against its scalar reward space with a numpy scalar, which
        # gymnasium's Box.contains reports as "Casting input x to numpy array" (a line in the user's log per iteration)
        warnings.filterwarnings("ignore", message=".*Casting input x to numpy array")
        for episode, final in scored:
            value = float(np.clip((final - mean) / spread, -clip, clip))
            episode.set_rewards(new_data=np.full(len(episode), value, np.float32), at_indices=slice(0, len(episode)))
    return len(scored)


def load_episodes(directory: str | Path) -> list[Any]:
    """The episodes stored in ``directory/replay.npz`` as finished ``SingleAgentEpisode`` objects."""
    path = Path(directory) / REPLAY_FILE
    if not path.is_file():
        return []
    with np.load(path, allow_pickle=False) as data:
        obs, actions, rewards, lengths = data["obs"], data["actions"], data["rewards"], data["lengths"]
        # the final rewards (files written before they were stored have none)
        finals = data["finals"] if "finals" in data.files else np.full(len(lengths), np.nan)
    episodes, o, a = [], 0, 0
    for i, n in enumerate(lengths.tolist()):
        episodes.append(_episode(obs[o : o + n + 1], actions[a : a + n], rewards[a : a + n], float(finals[i])))
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
