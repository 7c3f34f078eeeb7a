"""A run directory: what a search writes, and how a stopped search finds its way back.

```
<run_dir>/
  config.yaml        the validated config (the snapshot a resume is checked against)
  state.json         status (running / interrupted / finished), iterations, timestamps
  episodes.jsonl     one line per finished episode, appended and fsync'd as it happens
  pareto.json        the Pareto set of (cost ratio, accuracy) episodes
  best_policy.json   the best episode within budget (its policy included)
  checkpoints/       iter_<n>/: RLlib's checkpoint + actor.onnx / actor.json; the last two kept
  summary.json       baseline vs best policy (accuracy on the test split, latency, size)
  report/            report.md and pareto.png (galen report)
```
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from agents.recorder import BEST, EPISODES, PARETO, read_episodes  # noqa: F401 (BEST, EPISODES, PARETO: re-exported)
from envs.jsonio import write_atomic
from experiments.config import SearchConfig

# The layout's file names: every module reads and writes a run directory through these (the recorder's own three
# come from agents.recorder, which writes them).
CONFIG = "config.yaml"
STATE = "state.json"
SUMMARY = "summary.json"
REPORT = "report"
KEEP_CHECKPOINTS = 2
# Fields a resume may change: the episode budget (to extend a run) and where W&B logs go.
RESUMABLE_CHANGES = ("episodes", "wandb", "checkpoint_every", "safety_net", "env.threads")  # env.threads: speed only


class RunDirError(ValueError):
    """The run directory cannot be used as asked (exists without --resume, or holds a different config)."""


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self.checkpoints = self.path / "checkpoints"

    # --- opening ------------------------------------------------------------------------------------
    @classmethod
    def open(cls, config: SearchConfig, resume: bool) -> RunDir:
        run = cls(config.run_dir)
        existing = run.path / CONFIG
        if existing.exists() and not read_episodes(run.path) and run.latest_checkpoint() is None:
            # a run that stopped before its first episode (a bad budget, a crash while preparing) holds nothing to lose:
            # the same command starts it again, with whatever config it now has
            (run.path / STATE).unlink(missing_ok=True)
            existing.unlink()
        if existing.exists():
            if not resume:
                episodes = len(read_episodes(run.path))
                raise RunDirError(
                    f"run directory {run.path} already holds a run ({episodes} episodes); "
                    "pass --resume to continue it, or set another run_dir"
                )
            run._check_same(config, yaml.safe_load(existing.read_text()))
        run.path.mkdir(parents=True, exist_ok=True)
        run.checkpoints.mkdir(exist_ok=True)
        write_atomic(existing, yaml.safe_dump(config.to_dict(), sort_keys=False))
        return run

    def _check_same(self, config: SearchConfig, old: dict[str, Any]) -> None:
        new = config.to_dict()
        defaults = SearchConfig().to_dict()  # a field added since the run started counts as its default there
        for section in ("workload", "env", "agent"):
            for key in sorted(set(new[section]) | set(old.get(section, {}))):
                if f"{section}.{key}" in RESUMABLE_CHANGES:
                    continue
                if new[section].get(key) != old.get(section, {}).get(key, defaults[section].get(key)):
                    raise RunDirError(
                        f"--resume: {section}.{key} is {new[section].get(key)!r} but the run in {self.path} used "
                        f"{old.get(section, {}).get(key)!r}; only {', '.join(RESUMABLE_CHANGES)} may change on resume"
                    )
        for key in ("seed", "name"):
            if new[key] != old.get(key):
                raise RunDirError(f"--resume: {key} is {new[key]!r} but the run in {self.path} used {old.get(key)!r}")

    # --- state ----------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        path = self.path / STATE
        return json.loads(path.read_text()) if path.exists() else {}

    def start_clock(self) -> None:
        """From now on every state update records ``seconds``: what earlier processes of this run spent (the state's
        ``seconds``) plus this process's time, so a resumed run reports its whole time, not its last part."""
        self._clock = (float(self.state().get("seconds") or 0.0), time.time())

    def set_state(self, **changes: Any) -> None:
        clock = getattr(self, "_clock", None)
        if clock is not None and "seconds" not in changes:
            changes["seconds"] = clock[0] + time.time() - clock[1]
        state = {**self.state(), **changes, "updated": time.time()}
        write_atomic(self.path / STATE, json.dumps(state, indent=1))

    def episodes(self) -> list[dict[str, Any]]:
        return read_episodes(self.path)

    # --- checkpoints ------------------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in self.checkpoints.glob("iter_*") if p.is_dir()) if self.checkpoints.exists() else []
        return done[-1] if done else None

    def new_checkpoint_dir(self, iteration: int) -> tuple[Path, Path]:
        """(temp dir to write into, final name): rename the first to the second once complete."""
        final = self.checkpoints / f"iter_{iteration:06d}"
        tmp = self.checkpoints / f".tmp-iter_{iteration:06d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        return tmp, final

    def commit_checkpoint(self, tmp: Path, final: Path) -> Path:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(p for p in self.checkpoints.glob("iter_*") if p.is_dir())[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.checkpoints.glob(".tmp-iter_*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        return final
