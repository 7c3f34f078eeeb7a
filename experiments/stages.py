"""The two-stage search (``env.kind: two-stage``): a pruning search, then a quantization search of the pruned model.

The DRL two-stage method (prune first, then choose the bit widths of what is left) on the platform's envs, under the
same total budget and the same total episode count as a joint search: stage 1 plays ``episodes // 2`` episodes of the
prune env with every layer at 8 bits (the precision CPUs run fast, so the pruning is searched for the network that will
be quantized) and the search's budget; stage 2 plays the rest in the quantize env, starting from stage 1's best policy
within budget (``env.base_policy``): it chooses per layer int8 or float (or lower bits for the size objectives) for the
pruned network. Each stage is an ordinary run directory inside the search's (``stage-1-prune``, ``stage-2-quantize``),
resumable on its own; the search's own ``episodes.jsonl`` holds both stages' episodes in order (field ``stage``), and
its best policy is the best of either stage (stage 2 starts from stage 1's best, so it is stage 2's unless nothing
there beat it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from compression.policy import CompressionPolicy, Precision
from envs.jsonio import dumps, read_json, write_atomic, write_json
from experiments import rundir
from experiments.config import SearchConfig, merge
from experiments.rundir import RunDir

log = logging.getLogger("galen.search")
KIND = "two-stage"
STAGES = (("stage-1-prune", "prune"), ("stage-2-quantize", "quantize"))
STAGE_BITS = 8  # stage 1 prunes the network as it will run: every layer at 8 bits


def stage_config(config: SearchConfig, stage: int, base_policy: str | None = None) -> SearchConfig:
    """The search config of stage 1 or 2 of a two-stage ``config``."""
    from envs.context import EnvContext

    folder, kind = STAGES[stage - 1]
    first = config.episodes // 2
    if stage == 1:
        layers = EnvContext.get(dataclasses.replace(config.env, kind="prune")).structure.layer_names
        base_policy = CompressionPolicy(precision={name: Precision(STAGE_BITS, STAGE_BITS) for name in layers}).to_json()
    changes = {
        "name": f"{config.name}-{folder}",
        "run_dir": str(RunDir(config.run_dir).path / folder),
        "episodes": first if stage == 1 else config.episodes - first,
        "env": {"kind": kind, "base_policy": base_policy},
    }
    return SearchConfig.from_dict(merge(config.to_dict(), changes))


def stage_one_env(config: SearchConfig) -> Any:
    """The env a two-stage search prepares and checks its budget with: stage 1's (prune, every layer at 8 bits)."""
    from experiments.results import make_env

    return make_env(stage_config(config, 1))


def run_two_stage(config: SearchConfig, run: RunDir, progress: bool, play: Any) -> None:
    """Play both stages (each resumed where it stopped; a finished stage is skipped), then write the search's combined
    episodes, Pareto set and best policy. ``play(stage_config, stage_run, env)`` runs one stage's method."""
    from experiments.results import make_env

    stage_runs = []
    base = None
    for stage in (1, 2):
        sub = stage_config(config, stage, base)
        sub_run = RunDir.open(sub, resume=True)
        stage_runs.append(sub_run)
        if sub_run.state().get("status") != "finished":
            log.info("two-stage search, stage %d (%s env, %d episodes): %s", stage, sub.env.kind, sub.episodes, sub_run.path)
            env = make_env(sub)
            env.reset(seed=sub.seed)
            sub_run.start_clock()
            sub_run.set_state(status="running", algo=sub.agent.algo)
            play(sub, sub_run, env)
            sub_run.set_state(status="finished")
        combine(run, stage_runs)
        if stage == 1:
            best = read_json(sub_run.path / rundir.BEST)
            if not best or not best.get("within_budget"):
                raise ValueError(
                    f"two-stage search: stage 1 (pruning at {STAGE_BITS} bits) found no policy within env.target_ratio "
                    f"{config.env.target_ratio:g} in {sub.episodes} episodes ({sub_run.path}); stage 2 needs one to start from"
                )
            base = json.dumps(best["policy"], sort_keys=True)


def combine(run: RunDir, stage_runs: list[RunDir]) -> list[dict[str, Any]]:
    """The search's ``episodes.jsonl`` (every stage's episodes, numbered on, with their ``stage``), ``pareto.json`` and
    ``best_policy.json`` from its stages' run directories; written atomically."""
    from agents.recorder import better, pareto_front

    records, best = [], None
    for stage, sub_run in enumerate(stage_runs, start=1):
        for record in sub_run.episodes():
            record = {**record, "episode": len(records), "stage": stage, "stage_episode": record["episode"]}
            records.append(record)
            if better(record, best):  # as the recorder keeps it: the safety net's uniform policies count too
                best = record
    write_atomic(run.path / rundir.EPISODES, "".join(dumps(r) + "\n" for r in records))
    write_json(run.path / rundir.PARETO, pareto_front(records))
    if best is not None:
        write_json(run.path / rundir.BEST, best)
    return records
