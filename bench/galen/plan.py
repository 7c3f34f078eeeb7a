"""What the Galen benchmark runs: methods x latency budgets x seeds, each one ``galen search`` run.

Every run is an ordinary search run directory (``episodes.jsonl``, checkpoints, ``state.json``), so
a stopped benchmark resumes run by run (``galen search --resume``), and nothing already computed is
redone. The uniform grid and random search choose their actions without looking at the reward, so
their episodes do not depend on the budget: they run once (under the first budget) and are scored
against every budget afterwards (``shared`` below). The uniform grid is deterministic, so it runs
for one seed only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# method -> (env kind, agent algo, budget-independent actions, seeded)
METHODS: dict[str, tuple[str, str, bool, bool]] = {
    "sac-joint": ("joint", "sac", False, True),
    "sac-prune": ("prune", "sac", False, True),
    "sac-quant": ("quantize", "sac", False, True),
    "ppo-joint": ("joint", "ppo", False, True),
    "uniform": ("joint", "uniform", True, False),
    "random": ("joint", "random", True, True),
    "tpe": ("joint", "tpe", False, True),
}

AGENT_SETTINGS: dict[str, dict[str, Any]] = {
    # one process per run (no env runner processes): two runs share the two cores
    "sac": {"warmup_episodes": 20, "episodes_per_iteration": 4, "env_runners": 0},
    "ppo": {"episodes_per_iteration": 8, "env_runners": 0},
}


@dataclass(frozen=True)
class Run:
    method: str
    budget: float  # the budget the run's reward uses
    seed: int
    scored_budgets: tuple[float, ...]  # the budgets its episodes are scored against

    @property
    def kind(self) -> str:
        return METHODS[self.method][0]

    @property
    def algo(self) -> str:
        return METHODS[self.method][1]

    @property
    def label(self) -> str:
        return f"{self.method}/{budget_tag(self.budget) if len(self.scored_budgets) == 1 else 'shared'}/seed{self.seed}"

    def run_dir(self, root: Path) -> Path:
        return root / "runs" / self.label


def budget_tag(budget: float) -> str:
    return f"b{round(100 * budget):02d}"


def plan(methods: list[str], budgets: list[float], seeds: int) -> list[Run]:
    """The runs, seed-major (every method's seed 0 first), so a partial benchmark covers every method."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"--methods: unknown method {unknown[0]!r}; allowed: {', '.join(METHODS)}")
    runs = []
    for seed in range(seeds):
        for budget_index, budget in enumerate(budgets):
            for method in methods:
                _, _, shared, seeded = METHODS[method]
                if (not seeded and seed > 0) or (shared and budget_index > 0):
                    continue
                runs.append(Run(method, budget, seed, tuple(budgets) if shared else (budget,)))
    return runs


def search_config(run: Run, root: Path, *, model: str, checkpoint: str, episodes: int, val_size: int) -> dict[str, Any]:
    """The ``galen search`` config of one run."""
    return {
        "name": f"galen-bench-{run.label.replace('/', '-')}",
        "run_dir": str(run.run_dir(root)),
        "episodes": episodes,
        "seed": run.seed,
        "checkpoint_every": 5,
        "workload": {"model": model, "dataset": "fashion-mnist", "checkpoint": checkpoint},
        "env": {
            "kind": run.kind,
            "target": "local-cpu",
            "objective": "latency",
            "target_ratio": run.budget,
            "reward": "galen",
            "budget_guard": False,  # Galen's reproduction: budgets below the floor, the penalty reward, no wall
            "val_size": val_size,
            "threads": 1,  # --jobs runs searches side by side: one thread each
        },
        "agent": {"algo": run.algo, **AGENT_SETTINGS.get(run.algo, {})},
        "wandb": {"project": None},
    }
