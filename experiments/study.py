"""Studies: many searches as one Ray Tune experiment: ``galen study --config study.yaml``.

A study is a grid over fields of a search config; every combination (a *cell*) is one search (an RL
agent or a baseline) run as one Tune trial. Tune schedules the trials on the cluster's CPUs (several at
once where they fit), ``--resume`` restores a stopped study (``Tuner.restore``: finished trials stay
finished, the others continue their searches from their run directories, no episode lost or
replayed), and every cell's run directory lives in the study's storage: ``<storage>/<name>/runs/<cell>``.
``galen study report`` (also run at the end) scores every cell and compares the methods.

```yaml
name: methods                  # the study's folder in storage, and its W&B group
storage: runs/studies          # Tune's storage path (on a multi-node cluster: a path every node shares)
search: demo                   # the search config every cell starts from: a built-in config name or a YAML path
set: {episodes: 30}            # fields changed in every cell (dotted keys, as galen search --set)
grid:                          # every combination is one cell
  agent.algo: [sac, random, tpe]
  seed: [0, 1]
max_concurrent: 0              # trials at once (0: as many as the cluster's CPUs fit)
finetune_steps: 200            # the report's fixed fine-tune of each cell's best policy (0: none)
wandb: {project: null}         # a project: one W&B run per trial (job type: the method), grouped by the study
```

The report (``<storage>/<name>/study.json`` and ``report/study.md`` with its plots): per cell the
best within-budget validation accuracy of the agent's own episodes (the uniform safety net a search
ends with is reported apart), its test accuracy after the fixed fine-tune and its latency re-measured
on the target, the episodes and wall time until the best reached 95% of its final value, and the
latency cache's hit rate; per setting (the grid's fields but the method's and the seed) the methods
side by side with their spread over seeds, every episode with each method's Pareto front, and the
best-so-far curves.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from envs.config import ConfigError
from experiments.config import SearchConfig, builtin_config, merge

log = logging.getLogger("galen.study")
WHERE = "study config"
FIELDS = ("name", "storage", "search", "set", "grid", "max_concurrent", "finetune_steps", "wandb")
RESULTS = "study.json"
REPORT_DIR = "report"


@dataclass(frozen=True)
class Cell:
    """One search of the study: its name (also its run directory's) and its whole search config."""

    name: str
    overrides: dict[str, Any]
    config: dict[str, Any]

    @property
    def search(self) -> SearchConfig:
        return SearchConfig.from_dict(self.config)


@dataclass(frozen=True)
class StudyConfig:
    name: str
    grid: dict[str, list[Any]]
    storage: str = "runs/studies"
    search: str = "demo"
    set: dict[str, Any] = field(default_factory=dict)
    max_concurrent: int = 0
    finetune_steps: int = 200
    wandb: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str | Path) -> StudyConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{WHERE}: no such file {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ValueError(f"{WHERE}: {path} is not valid YAML: {error}") from None
        return cls.from_dict(data or {}, base_dir=path.parent)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: Path | None = None) -> StudyConfig:
        if not isinstance(data, dict):
            raise ConfigError(WHERE, "<top level>", type(data).__name__, "a mapping of the fields " + ", ".join(FIELDS))
        for key in data:
            if key not in FIELDS:
                raise ConfigError(WHERE, str(key), data[key], ", ".join(FIELDS), unknown=True)
        name = data.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ConfigError(WHERE, "name", name, "a folder name: letters, digits, '_', '.', '-'")
        grid = data.get("grid")
        if not isinstance(grid, dict) or not grid:
            raise ConfigError(WHERE, "grid", grid, "a mapping of search config fields (dotted, e.g. agent.algo) to lists of values")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(WHERE, f"grid.{key}", values, "a non-empty list of values")
            if key in ("name", "run_dir"):
                raise ConfigError(WHERE, f"grid.{key}", values, "a search field other than name and run_dir (the study sets them)")
        for key in ("set", "wandb"):
            if not isinstance(data.get(key) or {}, dict):
                raise ConfigError(WHERE, key, data[key], "a mapping")
        for key, low in (("max_concurrent", 0), ("finetune_steps", 0)):
            value = data.get(key, 0 if key == "max_concurrent" else 200)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(WHERE, key, value, f"an integer >= {low}")
        search = data.get("search", "demo")
        if not isinstance(search, str) or not search:
            raise ConfigError(WHERE, "search", search, "a built-in config name (e.g. demo) or a search config YAML path")
        if search.endswith((".yaml", ".yml")) and base_dir is not None and not Path(search).is_absolute():
            search = str((base_dir / search).resolve()) if (base_dir / search).is_file() else search
        study = cls(
            name=name,
            grid={str(k): list(v) for k, v in grid.items()},
            storage=str(data.get("storage", "runs/studies")),
            search=search,
            set=dict(data.get("set") or {}),
            max_concurrent=data.get("max_concurrent", 0),
            finetune_steps=data.get("finetune_steps", 200),
            wandb=dict(data.get("wandb") or {}),
        )
        study.cells()  # every cell's search config is valid before anything runs
        return study

    @property
    def path(self) -> Path:
        return Path(self.storage).resolve() / self.name

    def base(self) -> dict[str, Any]:
        path = Path(self.search) if self.search.endswith((".yaml", ".yml")) else builtin_config(self.search)
        if not path.is_file():
            raise FileNotFoundError(f"{WHERE}: search is {self.search!r}: no such file")
        return yaml.safe_load(path.read_text()) or {}

    def cells(self) -> list[Cell]:
        """Every combination of the grid, in the grid's order (the last field varying fastest)."""
        keys = list(self.grid)
        short = [k.rsplit(".", 1)[-1] for k in keys]
        labels = short if len(set(short)) == len(short) else [k.replace(".", "-") for k in keys]
        base = merge(self.base(), self.set)
        cells = []
        for values in itertools.product(*self.grid.values()):
            overrides = dict(zip(keys, values, strict=True))
            name = "_".join(f"{label}-{_slug(value)}" for label, value in zip(labels, values, strict=True))
            changes = {**overrides, "name": f"{self.name}-{name}", "run_dir": str(self.path / "runs" / name)}
            if self.wandb.get("project"):
                changes["wandb"] = {}  # a trial logs through Tune's W&B callback, not its recorder's own run
            try:
                config = SearchConfig.from_dict(merge(base, changes))
            except ConfigError as error:
                raise ValueError(f"{WHERE}: the cell {name} ({_describe(overrides)}): {error}") from None
            cells.append(Cell(name, overrides, config.to_dict()))
        if len({c.name for c in cells}) != len(cells):
            raise ConfigError(WHERE, "grid", self.grid, "values that differ once written as folder names")
        return cells

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "storage": self.storage,
            "search": self.search,
            "set": self.set,
            "grid": self.grid,
            "max_concurrent": self.max_concurrent,
            "finetune_steps": self.finetune_steps,
            "wandb": self.wandb,
        }


def _slug(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.]+", "", text) or "x"


def _describe(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items())


def method_label(cell: Cell, study: StudyConfig) -> str:
    """The method a cell runs: its algorithm and the agent fields the grid varies (``sac``, ``sac lr=0.001``)."""
    algo = cell.config["agent"]["algo"]
    extra = [f"{k.split('.', 1)[1]}={v}" for k, v in cell.overrides.items() if k.startswith("agent.") and k != "agent.algo"]
    return " ".join([algo, *extra])


def setting_label(cell: Cell) -> str:
    """What the methods are compared under: the grid's fields that are neither the agent's nor the seed."""
    parts = [f"{k}={v}" for k, v in cell.overrides.items() if not k.startswith("agent.") and k != "seed"]
    return ", ".join(parts) or "all cells"


# --- running --------------------------------------------------------------------------------------------
def trial(params: dict[str, Any]) -> None:
    """One Tune trial: the cell's search, resumed from its run directory when it has one, reporting as it goes."""
    import torch
    from ray import tune

    from experiments.results import make_env
    from experiments.rundir import RunDir
    from experiments.search import check_budget, run_method

    torch.set_num_threads(1)
    config = SearchConfig.from_dict(params["cell"]["config"])
    run = RunDir.open(config, resume=True)  # a restored study continues the cell's search where it stopped
    run.start_clock()
    env = make_env(config)
    env.reset(seed=config.seed)
    check_budget(config, env, run)
    run.set_state(status="running", pid=os.getpid(), algo=config.agent.algo)

    def report(summary: dict[str, Any]) -> None:
        tune.report({k: float(v) for k, v in summary.items() if isinstance(v, int | float)})

    run_method(
        config,
        run,
        env,
        progress=False,
        on_iteration=lambda iteration, summary, checkpoint: report(summary),
        on_episode=lambda done, summary: report(summary),
    )
    run.set_state(status="finished")


def _resources(params: dict[str, Any]) -> Any:
    from ray import tune

    from agents.config import RL_ALGOS

    agent = params["cell"]["config"]["agent"]
    runners = agent.get("env_runners", 0) if agent["algo"] in RL_ALGOS else 0
    return tune.PlacementGroupFactory([{"CPU": 1}] + [{"CPU": 1}] * runners)


def run(study: StudyConfig, resume: bool = False) -> dict[str, Any]:
    """Run (or, with ``resume``, restore) the study as one Tune experiment; then write its report."""
    from ray import tune

    from envs.jsonio import write_atomic
    from experiments.sweep import _wandb_callback, raise_failed_trials

    cells = study.cells()
    path = study.path
    saved = path / "study.yaml"
    if resume:
        if not tune.Tuner.can_restore(str(path)):
            raise FileNotFoundError(f"--resume: no study to continue in {path}")
        old = yaml.safe_load(saved.read_text()) if saved.is_file() else {}
        for key in ("search", "set", "grid"):
            if old.get(key) != study.to_dict()[key]:
                now = study.to_dict()[key]
                raise ValueError(f"--resume: the study in {path} ran with {key}: {old.get(key)!r}; the config now says {now!r}")
    elif path.exists() and any(path.iterdir()):
        raise FileExistsError(f"study {path} exists; pass --resume to continue it, or choose another name")
    path.mkdir(parents=True, exist_ok=True)
    write_atomic(saved, yaml.safe_dump(study.to_dict(), sort_keys=False))
    log.info("study %s: %d cells (%s), in %s", study.name, len(cells), ", ".join(c.name for c in cells), path)
    callbacks = []
    if not resume:
        by_cell = {c.name: c for c in cells}

        def labels(t: Any) -> dict[str, Any]:
            cell = by_cell.get(_cell_name(t.config))
            return {"name": cell.name, "job_type": method_label(cell, study)} if cell else {}

        options = {k: v for k, v in study.wandb.items() if k in ("entity", "mode")}
        callbacks = _wandb_callback(study.wandb.get("project"), study.name, labels, log_config=False, **options)
    results = fit_cells(study.name, path.parent, cells, max_concurrent=study.max_concurrent, callbacks=callbacks, resume=resume)
    out = report(study)
    print(f"study {path}: {len(cells)} cells; report: {path / REPORT_DIR / 'study.md'}")
    raise_failed_trials("galen study", "cells", results, lambda r: _cell_name(r.config))
    return out


def fit_cells(
    name: str,
    storage: Path,
    cells: list[Cell],
    *,
    max_concurrent: int = 0,
    callbacks: list[Any] | None = None,
    resume: bool = False,
    time_budget_s: float | None = None,
    verbose: int = 1,
) -> Any:
    """Run ``cells`` as the Tune experiment ``storage/name`` (``resume``: restore it), each cell one trial of
    :func:`trial` continuing its run directory; returns Tune's ``ResultGrid``. ``time_budget_s``: stop every trial
    after this long (each keeps what it recorded; its run directory resumes later)."""
    from ray import tune

    from experiments import cluster

    owns_ray = cluster.connect()
    try:
        trainable = tune.with_resources(trial, resources=_resources)
        if resume:
            tuner = tune.Tuner.restore(str(storage / name), trainable=trainable, resume_errored=True, resume_unfinished=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"cell": tune.grid_search([{"name": c.name, "config": c.config} for c in cells])},
                tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=max_concurrent or None, time_budget_s=time_budget_s),
                run_config=tune.RunConfig(name=name, storage_path=str(storage), callbacks=callbacks or None, verbose=verbose),
            )
        return tuner.fit()
    finally:
        if owns_ray:
            import ray

            ray.shutdown()


def _cell_name(config: dict[str, Any] | None) -> str:
    return ((config or {}).get("cell") or {}).get("name", "?")


# --- the report -------------------------------------------------------------------------------------------
def score_cell(cell: Cell, study: StudyConfig) -> dict[str, Any]:
    """What the report says of one cell, from its run directory (nothing measured yet)."""
    from agents.recorder import read_episodes
    from experiments import analysis
    from experiments.rundir import RunDir

    config = cell.search
    run_dir = Path(config.run_dir)
    records = read_episodes(run_dir) if run_dir.is_dir() else []
    algo, budget = config.agent.algo, config.env.target_ratio
    own = [r for r in records if r.get("source") == algo]
    scored = analysis.score(own, budget)
    safety = analysis.best_within([r for r in records if r.get("source") == "uniform-safety"], budget)
    state = RunDir(run_dir).state()
    best = analysis.best_within(own, budget)
    return {
        "cell": cell.name,
        "overrides": cell.overrides,
        "method": method_label(cell, study),
        "setting": setting_label(cell),
        "seed": config.seed,
        "budget": budget,
        "objective": config.env.objective,
        "target": config.env.target,
        "run_dir": str(run_dir),
        "status": state.get("status", "not started"),
        "episodes": scored["episodes"],
        "episodes_asked": config.episodes,
        "within_budget_rate": scored["within"] / scored["episodes"] if scored["episodes"] else None,
        "best_accuracy": best["accuracy"] if best else None,
        "best_cost_ratio": best["cost_ratio"] if best else None,
        "best_episode": best["episode"] if best else None,
        "best_policy": best.get("policy") if best else None,
        "safety_net_accuracy": safety["accuracy"] if safety else None,
        "reach_95_episodes": scored["reach_episodes"],
        "reach_95_seconds": scored["reach_seconds"],
        "wall_seconds": scored["wall_seconds"],
        "cache_hit_rate": scored["cache_hit_rate"],
        "best_so_far": scored["best_so_far"],
        "points": [[r["cost_ratio"], r["accuracy"]] for r in own],
    }


def measure_best(row: dict[str, Any], cell: Cell, steps: int, cache: dict[str, Any]) -> None:
    """The cell's best policy: its latency re-measured on the target and its test accuracy after ``steps`` of the fixed
    fine-tune (cached in the report's ``final.json`` by policy, so a report written again measures only what is new)."""
    from compression.policy import CompressionPolicy
    from experiments.results import fixed_finetune, make_env, measure_final

    key = json.dumps([cell.config["workload"], cell.config["env"], row["best_policy"], steps], sort_keys=True)
    if key not in cache:
        config = cell.search
        env = make_env(config)
        policy = CompressionPolicy.from_dict(row["best_policy"])
        artifact = env.build_compressed(policy, finetune_steps=0).artifact.data
        measured = measure_final(env, artifact, expected_ratio=row["best_cost_ratio"] if config.env.measured_objective else None)
        after, seconds = fixed_finetune(env, policy, steps) if steps else (None, 0.0)
        cache[key] = {"latency_ratio": measured.ratio, "test_after_finetune": after, "finetune_seconds": seconds}
    row.update(
        latency_ratio_remeasured=cache[key]["latency_ratio"],
        best_accuracy_after_finetune=cache[key]["test_after_finetune"],
    )


def report(study: StudyConfig, finetune_steps: int | None = None) -> dict[str, Any]:
    """Score every cell, measure the best policies (cached), compare the methods; write study.json, study.md, plots."""
    from envs.jsonio import dumps, write_atomic

    steps = study.finetune_steps if finetune_steps is None else finetune_steps
    out_dir = study.path / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_path = out_dir / "final.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    cells = study.cells()
    rows = []
    for cell in cells:
        row = score_cell(cell, study)
        if row["best_policy"] is not None and row["status"] == "finished":
            measure_best(row, cell, steps, cache)
            write_atomic(cache_path, dumps(cache, indent=1))  # each measurement kept as it is made
        rows.append(row)
    comparison = compare(rows)
    out = {"study": study.to_dict(), "finetune_steps": steps, "cells": rows, "comparison": comparison}
    write_atomic(study.path / RESULTS, dumps(out, indent=1) + "\n")
    plots = plot(rows, out_dir)
    write_atomic(out_dir / "study.md", markdown(out, plots))
    return out


def _stats(values: list[Any]) -> dict[str, Any]:
    numbers = [v for v in values if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v))]
    if not numbers:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": statistics.mean(numbers), "sd": statistics.pstdev(numbers) if len(numbers) > 1 else 0.0, "n": len(numbers)}


def compare(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per setting and method: the mean and spread over its seeds of what the report measures."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        out.setdefault(row["setting"], {}).setdefault(row["method"], []).append(row)
    quantities = (
        "best_accuracy",
        "best_accuracy_after_finetune",
        "latency_ratio_remeasured",
        "within_budget_rate",
        "reach_95_episodes",
        "reach_95_seconds",
        "cache_hit_rate",
        "episodes",
    )
    return {
        setting: {method: {"seeds": len(g), **{q: _stats([r.get(q) for r in g]) for q in quantities}} for method, g in methods.items()}
        for setting, methods in out.items()
    }


def _fmt(stat: dict[str, Any], percent: bool = True, digits: int = 1) -> str:
    if stat["mean"] is None:
        return "-"
    scale = 100 if percent else 1
    text = f"{scale * stat['mean']:.{digits}f}"
    return text + (f" ± {scale * stat['sd']:.{digits}f}" if stat["n"] > 1 else "")


def markdown(out: dict[str, Any], plots: dict[str, list[str]]) -> str:
    study = out["study"]
    grid = "; ".join(f"`{k}`: {', '.join(map(str, v))}" for k, v in study["grid"].items())
    lines = [
        f"# Study {study['name']}",
        "",
        f"{len(out['cells'])} cells (grid: {grid}), each one search from `{study['search']}`. Best = the most accurate "
        "within-budget episode of the cell's own method (the uniform safety net a search ends with is apart); after "
        f"fine-tune = its test accuracy after the fixed {out['finetune_steps']}-step fine-tune; latency re-measured on the "
        "target. Raw data: `study.json`.",
        "",
    ]
    for setting, methods in out["comparison"].items():
        lines += [f"## {setting}", ""]
        lines.append(
            "| method | seeds | within budget | best val. acc. | after fine-tune | latency (target) | episodes to 95% | time to 95% (s) |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for method, s in methods.items():
            lines.append(
                f"| {method} | {s['seeds']} | {_fmt(s['within_budget_rate'], digits=0)}% | {_fmt(s['best_accuracy'], digits=2)} | "
                f"{_fmt(s['best_accuracy_after_finetune'], digits=2)} | {_fmt(s['latency_ratio_remeasured'], digits=1)}% | "
                f"{_fmt(s['reach_95_episodes'], percent=False, digits=0)} | {_fmt(s['reach_95_seconds'], percent=False, digits=0)} |"
            )
        lines.append("")
        lines += [f"![{Path(p).stem}]({p})" for p in plots.get(setting, [])]
        lines.append("")
    lines += ["## Cells", "", "| cell | status | episodes | within budget | best val. acc. | safety net | after fine-tune | cache hits |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in out["cells"]:

        def pct(v: Any, digits: int = 2) -> str:
            return "-" if v is None else f"{100 * v:.{digits}f}%"

        lines.append(
            f"| {r['cell']} | {r['status']} | {r['episodes']}/{r['episodes_asked']} | {pct(r['within_budget_rate'], 0)} | "
            f"{pct(r['best_accuracy'])} | {pct(r['safety_net_accuracy'])} | {pct(r.get('best_accuracy_after_finetune'))} | "
            f"{pct(r['cache_hit_rate'], 0)} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, list[str]]:
    """Per setting: every episode with each method's Pareto front, and the best-so-far curves (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from agents.recorder import pareto_front

    paths: dict[str, list[str]] = {}
    settings: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        if row["points"]:
            settings.setdefault(row["setting"], {}).setdefault(row["method"], []).append(row)
    for index, (setting, methods) in enumerate(settings.items()):
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        budget = next(iter(methods.values()))[0]["budget"]
        for color, (method, group) in enumerate(methods.items()):
            points = [p for r in group for p in r["points"]]
            left.scatter([c for c, _ in points], [100 * a for _, a in points], s=8, alpha=0.35, color=f"C{color}")
            front = pareto_front([{"cost_ratio": c, "accuracy": a, "episode": i} for i, (c, a) in enumerate(points)])
            left.step([f["cost_ratio"] for f in front], [100 * f["accuracy"] for f in front], where="post", color=f"C{color}", label=method)
            curves = [r["best_so_far"] for r in group]
            n = min(len(c) for c in curves)
            array = 100 * np.array([c[:n] for c in curves], dtype=float)
            for curve in array:
                right.plot(curve, color=f"C{color}", lw=0.6, alpha=0.4)
            with np.errstate(all="ignore"):  # episodes before any within budget are NaN in every seed
                right.plot(np.nanmean(array, axis=0), color=f"C{color}", lw=2, label=f"{method} ({len(group)} seeds)")
        left.axvline(budget, color="k", ls="--", lw=1, label=f"budget {budget:g}")
        left.set_xlabel("cost ratio (measured)")
        left.set_ylabel("validation accuracy (%)")
        left.set_title("every episode and each method's Pareto front")
        left.legend(fontsize=8)
        right.set_xlabel("episode")
        right.set_ylabel("best within-budget accuracy so far (%)")
        right.set_title("best so far (thin: seeds; thick: mean)")
        right.legend(fontsize=8)
        fig.suptitle(setting)
        fig.tight_layout()
        path = out_dir / f"setting-{index}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths[setting] = [path.name]
    return paths


# --- the command ------------------------------------------------------------------------------------------
def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = parser or argparse.ArgumentParser(prog="galen study", description=__doc__, formatter_class=formatter)
    parser.add_argument("action", nargs="?", choices=("run", "report"), default="run", help="run the study (default) or write its report")
    parser.add_argument("--config", required=True, help="study config YAML")
    parser.add_argument("--resume", action="store_true", help="continue the study of this name in its storage (Tuner.restore)")
    parser.add_argument("--finetune-steps", type=int, default=None, help="report: the fixed fine-tune's steps (default: the config's)")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    study = StudyConfig.from_yaml(args.config)
    if args.finetune_steps is not None and args.finetune_steps < 0:
        raise ValueError(f"galen study: --finetune-steps is {args.finetune_steps}; allowed: an integer >= 0")
    if args.action == "report":
        if not study.path.is_dir():
            raise FileNotFoundError(f"galen study report: no study in {study.path} (run it first: galen study --config {args.config})")
        out = report(study, args.finetune_steps)
        print((study.path / REPORT_DIR / "study.md").read_text())
        return out
    return run(study, resume=args.resume)


def cli(argv: list[str] | None = None) -> int:
    """``python -m experiments.study`` (what ``ray job submit`` runs): the same as ``galen study``."""
    from experiments.entry import module_main

    return module_main("study", build_parser, main, argv)


if __name__ == "__main__":
    sys.exit(cli())
