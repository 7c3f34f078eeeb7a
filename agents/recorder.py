"""The run's episode log: ``episodes.jsonl`` appended and flushed per episode, the Pareto set and the best policy.

One owner numbers and writes the episodes: :class:`EpisodeLog` in-process (baselines), or the same
class inside :class:`RecorderActor`, a named actor on the driver's node that every RLlib env runner
sends its finished episodes to. Each line is written with one ``write`` + ``fsync`` before the
episode counts, so a killed run loses at most the episode being evaluated; a line cut short by
SIGKILL is dropped when the log is opened again. Numbers continue from the last line on resume.

The Pareto set keeps the (cost ratio, accuracy) non-dominated episodes (lower cost, higher
accuracy); the best policy is the most accurate episode within budget (or, while none is, the
one with the highest reward). Both are rewritten atomically (temp file + rename) on every change.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from envs.jsonio import dumps, read_jsonl, write_atomic
from envs.record import EpisodeOutcome, EpisodeRecord

log = logging.getLogger(__name__)

EPISODES = "episodes.jsonl"
PARETO = "pareto.json"
BEST = "best_policy.json"
RECORD_FIELDS = EpisodeOutcome.field_names()  # what a record keeps of the env's info (envs.record)


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """a is at least as good in both (lower cost ratio, higher accuracy) and better in one."""
    return (
        a["cost_ratio"] <= b["cost_ratio"]
        and a["accuracy"] >= b["accuracy"]
        and (a["cost_ratio"], a["accuracy"])
        != (
            b["cost_ratio"],
            b["accuracy"],
        )
    )


def pareto_front(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The non-dominated records, sorted by cost ratio."""
    front = [r for r in records if not any(dominates(o, r) for o in records)]
    seen, unique = set(), []
    for r in sorted(front, key=lambda r: (r["cost_ratio"], -r["accuracy"], r["episode"])):
        key = (r["cost_ratio"], r["accuracy"])
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return unique


def better(a: dict[str, Any], b: dict[str, Any] | None) -> bool:
    """Is ``a`` a better final policy than ``b``: within budget beats over; then accuracy (within) or reward (over)."""
    if b is None:
        return True
    if a["within_budget"] != b["within_budget"]:
        return bool(a["within_budget"])
    if a["within_budget"]:
        return (a["accuracy"], -a["cost_ratio"]) > (b["accuracy"], -b["cost_ratio"])
    return a["reward"] > b["reward"]  # nothing meets the budget (yet): the best trade-off by the run's own reward


def read_episodes(run_dir: str | Path) -> list[dict[str, Any]]:
    """The complete lines of a run's ``episodes.jsonl`` (a torn last line is skipped)."""
    return read_jsonl(Path(run_dir) / EPISODES)


class EpisodeLog:
    """Numbers, writes and summarises a run's episodes. Optionally logs each one to W&B."""

    def __init__(self, run_dir: str | Path, wandb: dict[str, Any] | None = None) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / EPISODES
        self.records = read_episodes(self.dir)
        self._repair()
        self.front = pareto_front(self.records)
        self.best: dict[str, Any] | None = None
        for r in self.records:
            if better(r, self.best):
                self.best = r
        self._wandb = _start_wandb(self.dir, wandb) if wandb else None

    def _repair(self) -> None:
        """Drop a torn last line (the run was killed mid-write) so appends start on a line of their own."""
        if not self.path.exists():
            return
        text = self.path.read_text()
        good = "".join(dumps(r) + "\n" for r in self.records)
        if text != good:
            log.warning("episodes.jsonl: dropped a torn last line (%d bytes) left by a killed run", len(text) - len(good))
            write_atomic(self.path, good)

    def count(self) -> int:
        return len(self.records)

    def record(self, info: dict[str, Any], source: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Append one finished episode (its env ``info``); returns the record with its episode number."""
        record = EpisodeRecord(len(self.records), source, time.time(), EpisodeOutcome.from_dict(info), dict(extra or {})).to_dict()
        line = dumps(record) + "\n"
        record = json.loads(line)  # plain types from here on
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records.append(record)
        self._update_summaries(record)
        if self._wandb is not None:
            self._wandb.log(
                {k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}, step=record["episode"]
            )
        return record

    def _update_summaries(self, record: dict[str, Any]) -> None:
        if not any(dominates(o, record) for o in self.front):
            self.front = pareto_front([*self.front, record])
            write_atomic(self.dir / PARETO, dumps(self.front, indent=1))
        if better(record, self.best):
            self.best = record
            write_atomic(self.dir / BEST, dumps(record, indent=1))

    def summary(self) -> dict[str, Any]:
        """Counts and the best record so far (what a progress bar or a Tune report shows)."""
        rewards = [r["reward"] for r in self.records[-10:]]
        best = self.best or {}
        return {
            "episodes": len(self.records),
            "reward_mean_10": sum(rewards) / len(rewards) if rewards else float("nan"),
            "best_reward": max((r["reward"] for r in self.records), default=float("nan")),
            "best_accuracy": best.get("accuracy", float("nan")),
            "best_cost_ratio": best.get("cost_ratio", float("nan")),
            "best_within_budget": bool(best.get("within_budget", False)),
            "pareto_size": len(self.front),
        }

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _start_wandb(run_dir: Path, options: dict[str, Any]) -> Any:
    """A W&B run for the episodes (offline unless an API key is configured; ``wandb sync`` uploads it later)."""
    import wandb  # heavy; only when asked for

    mode = options.get("mode") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return wandb.init(
        project=options["project"],
        name=options.get("name"),
        id=options.get("id"),
        resume="allow",
        dir=str(run_dir),
        mode=mode,
        config=options.get("config"),
        reinit="finish_previous",
    )


def recorder_actor_class() -> Any:
    """:class:`EpisodeLog` as a Ray actor (defined lazily so that this module imports without Ray)."""
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class RecorderActor(EpisodeLog):
        pass

    return RecorderActor


def start_recorder(name: str, run_dir: str | Path, wandb: dict[str, Any] | None = None) -> Any:
    """The run's recorder actor, named ``name`` (namespace ``galen``), on the driver's node (where the run dir is)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    actor = (
        recorder_actor_class()
        .options(name=name, namespace="galen", scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
        .remote(str(run_dir), wandb)
    )
    ray.get(actor.count.remote())  # fail here, not at the first episode, if the run dir is unusable
    return actor
