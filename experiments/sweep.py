"""Sweep an RL agent's hyperparameters with Ray Tune: ``galen sweep --config <search yaml>``.

Each trial is one search (the config's env, budget and episode count) with its own agent
hyperparameters, in its own run directory inside the trial's directory (episodes.jsonl, Pareto set,
agent checkpoints). Trials report after every training iteration; ASHA stops the weak ones early;
an Optuna (TPE) searcher proposes the next hyperparameters. The search space is built from the
agent config's field metadata (``agents.config``), narrowed with ``--params``. W&B logging goes
through Ray's ``WandbLoggerCallback`` (offline unless ``WANDB_API_KEY`` is set; ``wandb sync``
uploads later). ``--resume`` continues a stopped sweep (``Tuner.restore``); each unfinished trial
continues from its last agent checkpoint.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agents.config import search_space_defaults, tunable_spaces
from envs.config import ConfigError
from experiments import cluster
from experiments.config import SearchConfig, merge
from experiments.options import add_options, option

METRICS = ("reward_mean_10", "best_reward", "best_accuracy")


@dataclass
class SweepConfig:
    """How the hyperparameter sweep runs (the search itself comes from --config)."""

    config: str | None = option(None, "search config YAML the trials share (default: the built-in demo.yaml)")
    name: str = option("sweep", "sweep name (the Tune experiment's directory name)")
    storage: str = option("runs/sweeps", "where sweeps are written (Tune's storage path)")
    trials: int = option(8, "trials (hyperparameter samples)")
    max_concurrent: int = option(1, "trials at once (each needs 1 + env_runners CPUs)")
    params: str | None = option(None, "comma-separated agent fields to tune (default: the algorithm's usual set)")
    metric: str = option("reward_mean_10", "what ASHA and the searcher maximise", choices=METRICS)
    grace_period: int = option(2, "ASHA: iterations every trial runs before it may be stopped")
    reduction_factor: int = option(2, "ASHA: keep 1/reduction_factor of the trials at each rung")
    episodes: int | None = option(None, "episodes per trial (default: the search config's)")
    env_runners: int | None = option(None, "env runners per trial (default: the search config's; 0 samples in the trial's process)")
    wandb_project: str | None = option(None, "W&B project (default: the search config's wandb.project; none: no W&B)")
    resume: bool = option(False, "continue the sweep of this name in storage")
    seed: int = option(0, "searcher seed")


def param_space(algo: str, params: str | None) -> dict[str, Any]:
    from ray import tune

    defaults = search_space_defaults(algo)
    if not defaults:
        raise ConfigError("sweep", "agent.algo", algo, "sac, ppo (baselines have no hyperparameters to sweep)")
    names = [p.strip() for p in params.split(",")] if params else list(defaults)
    spaces = tunable_spaces()
    space = {}
    for name in names:
        if name not in spaces:
            raise ValueError(f"galen sweep: --params names {name!r}; allowed: comma-separated fields among {', '.join(spaces)}")
        kind, *args = spaces[name]
        space[name] = {"loguniform": tune.loguniform, "uniform": tune.uniform}[kind](*args) if kind != "choice" else tune.choice(list(args))
    return space


def trial(params: dict[str, Any], base: dict[str, Any], experiment_dir: str) -> None:
    """One Tune trial: a search with ``params`` as agent fields, reporting per training iteration.

    Its run directory lives in the sweep's storage (``<storage>/<name>/<trial>/run``), not in Tune's staging
    directory inside the Ray session: a sweep resumed after its driver was stopped finds every trial's episodes and
    agent checkpoint there and continues them (the search's own resume: no episode replayed or lost).
    """
    from ray import tune

    from experiments.results import make_env
    from experiments.rundir import RunDir
    from experiments.search import run_rl

    torch.set_num_threads(1)
    trial_dir = Path(experiment_dir) / Path(tune.get_context().get_trial_dir()).name
    config = SearchConfig.from_dict(merge(base, {"agent": params, "run_dir": str(trial_dir / "run"), "wandb": {}}))
    run = RunDir.open(config, resume=True)
    env = make_env(config)
    env.reset(seed=config.seed)

    def report(iteration: int, summary: dict[str, Any], checkpoint: Path | None) -> None:
        metrics = {k: float(v) for k, v in summary.items()}
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint)) if checkpoint else None)

    run_rl(config, run, env, progress=False, on_iteration=report)


def _wandb_callback(project: str | None, name: str, labels: Any = None, log_config: bool = True, **init: Any) -> list[Any]:
    """Tune's W&B callback for a sweep or a study (group ``name``; ``labels(trial)``: a run's own init fields; ``init``:
    more of them, e.g. entity, mode), or none without a project."""
    if not project:
        return []
    mode = init.pop("mode", None) or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    os.environ.setdefault("WANDB_MODE", mode)  # the callback's logging actors inherit the driver's environment
    return [_failure_marking_wandb_callback(labels)(project=project, group=name, mode=mode, log_config=log_config, **init)]


FAILED = "failed"  # the content of the END item Tune's W&B queue gets for a trial that errored


def _failure_marking_wandb_callback(labels: Any = None) -> type:
    """Ray's ``WandbLoggerCallback`` whose runs of errored trials end with exit code 1 (W&B marks them failed), with
    each run's files in its trial's folder of the sweep's storage; ``labels(trial)``: W&B init fields of the trial's run
    (a study names each run after its cell and gives the method as its job type).

    Ray's own ends every trial's run with exit code 0 (``log_trial_end`` ignores ``failed``), so a crashed trial looked
    finished on the dashboard. The classes are built here: importing Ray's W&B integration imports wandb.
    """
    from ray.air.integrations.wandb import WandbLoggerCallback, _QueueItem, _WandbLoggingActor

    class _Finish:
        """The wandb module as the logging actor sees it, with ``finish`` giving the trial's exit code."""

        def __init__(self, module: Any) -> None:
            self._module, self.failed = module, False

        def __getattr__(self, name: str) -> Any:
            return getattr(self._module, name)

        def finish(self) -> None:
            self._module.finish(exit_code=1 if self.failed else 0)

    class LoggingActor(_WandbLoggingActor):
        def run(self) -> None:
            wandb, get = _Finish(self._wandb), self.queue.get

            def watched(*args: Any, **kwargs: Any) -> Any:
                item = get(*args, **kwargs)
                if item[0] == _QueueItem.END and item[1] == FAILED:
                    wandb.failed = True
                return item

            self._wandb, self.queue.get = wandb, watched
            super().run()

    class FailureMarkingCallback(WandbLoggerCallback):
        _logger_actor_cls = LoggingActor

        def _start_logging_actor(self, trial: Any, exclude_results: list[str], **kwargs: Any) -> None:
            # The run's files in the sweep's storage: in Tune's staging folder (the default) the run of a trial that
            # errored was never synced there, so `wandb sync` had nothing to find
            if trial.path and "://" not in trial.path:
                Path(trial.path).mkdir(parents=True, exist_ok=True)
                kwargs.setdefault("dir", trial.path)
            if labels is not None:
                kwargs.update(labels(trial))
            super()._start_logging_actor(trial, exclude_results, **kwargs)

        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            if not failed or trial not in self._trial_queues:
                return super().log_trial_end(trial, failed)
            self._trial_queues[trial].put((_QueueItem.END, FAILED))
            self._cleanup_logging_actors()

    return FailureMarkingCallback


def main(sweep: SweepConfig) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from experiments.config import builtin_config

    checks = {
        "trials": (sweep.trials >= 1, "an integer >= 1"),
        "max_concurrent": (sweep.max_concurrent >= 1, "an integer >= 1"),
        "grace_period": (sweep.grace_period >= 1, "an integer >= 1"),
        "reduction_factor": (sweep.reduction_factor >= 2, "an integer >= 2"),
        "episodes": (sweep.episodes is None or sweep.episodes >= 1, "an integer >= 1"),
        "env_runners": (sweep.env_runners is None or sweep.env_runners >= 0, "an integer >= 0"),
    }
    for name, (ok, allowed) in checks.items():
        if not ok:
            raise ValueError(f"galen sweep: --{name.replace('_', '-')} is {getattr(sweep, name)}; allowed: {allowed}")
    torch.set_num_threads(1)
    base_config = SearchConfig.from_yaml(sweep.config or builtin_config("demo"))
    changes: dict[str, Any] = {}
    if sweep.episodes is not None:
        changes["episodes"] = sweep.episodes
    if sweep.env_runners is not None:
        changes["agent.env_runners"] = sweep.env_runners
    if sweep.max_concurrent > 1 and base_config.env.threads == 0:  # trials share the machine: one thread each
        changes["env.threads"] = 1
    base_config = base_config.replace(**changes)
    if not base_config.agent.is_rl:
        raise ConfigError("sweep", "agent.algo", base_config.agent.algo, "sac, ppo (baselines have no hyperparameters to sweep)")
    base = base_config.to_dict()
    space = param_space(base_config.agent.algo, sweep.params)
    storage = Path(sweep.storage).resolve()
    path = storage / sweep.name
    owns_ray = cluster.connect()
    try:
        trainable = tune.with_resources(
            tune.with_parameters(trial, base=base, experiment_dir=str(path)),
            tune.PlacementGroupFactory([{"CPU": 1}] + [{"CPU": 1}] * base_config.agent.env_runners),
        )
        if sweep.resume:
            if not tune.Tuner.can_restore(str(path)):
                raise FileNotFoundError(f"--resume: no sweep to continue in {path}")
            tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True, resume_unfinished=True)
        else:
            if path.exists() and any(path.iterdir()):
                raise FileExistsError(f"sweep {path} exists; pass --resume to continue it, or choose another --name")
            searcher = ConcurrencyLimiter(OptunaSearch(seed=sweep.seed), max_concurrent=sweep.max_concurrent)
            scheduler = ASHAScheduler(
                time_attr="training_iteration",
                grace_period=sweep.grace_period,
                reduction_factor=sweep.reduction_factor,
                max_t=10_000,
            )
            tuner = tune.Tuner(
                trainable,
                param_space=space,
                tune_config=tune.TuneConfig(
                    metric=sweep.metric, mode="max", search_alg=searcher, scheduler=scheduler, num_samples=sweep.trials
                ),
                run_config=tune.RunConfig(
                    name=sweep.name,
                    storage_path=str(storage),
                    callbacks=_wandb_callback(sweep.wandb_project or base_config.wandb.get("project"), sweep.name),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    verbose=1,
                ),
            )
        results = tuner.fit()
    finally:
        if owns_ray:
            import ray

            ray.shutdown()
    _print_results(results, sweep.metric, path)
    _write_results(results, path / "sweep.json")
    # a sweep with a failed trial is not a success: exit non-zero, say which and where its error is
    raise_failed_trials("galen sweep", "trials", results, lambda r: Path(r.path).name)
    return results


def raise_failed_trials(command: str, what: str, results: Any, name: Any) -> None:
    """TrialsFailedError naming each failed trial (``name(result)``), its error and its error file, if any failed."""
    failed = [r for r in results if r.error is not None]
    if failed:
        lines = [f"{name(r)}: {type(r.error).__name__}: {_first_line(r.error)} (error file: {r.path}/error.txt)" for r in failed]
        raise TrialsFailedError(f"{command}: {len(failed)} of {len(results)} {what} failed:\n  " + "\n  ".join(lines))


class TrialsFailedError(RuntimeError):
    """Trials of a sweep that raised; the message names each and its error file."""


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else ""  # a Ray task error's last line is the original exception


def _write_results(results: Any, path: Path) -> None:
    """Every trial's last reported metrics (the recorder's summary and RLlib's learner and env-runner metrics), its
    hyperparameters, run directory and status, as JSON beside Tune's own files (written atomically)."""
    from envs.jsonio import write_json

    trials = []
    for r in results:
        metrics = {k: v for k, v in (r.metrics or {}).items() if isinstance(v, int | float) and not isinstance(v, bool)}
        trials.append(
            {
                "trial": Path(r.path).name,
                "run_dir": f"{r.path}/run",
                "config": r.config,
                "status": "failed" if r.error is not None else "ok",
                "error": None if r.error is None else f"{type(r.error).__name__}: {_first_line(r.error)}",
                "metrics": metrics,
            }
        )
    write_json(path, {"trials": trials})


def _print_results(results: Any, metric: str, path: Path) -> None:
    rows = []
    for r in results:
        m = r.metrics or {}
        status = f"FAILED ({type(r.error).__name__})" if r.error is not None else "ok"
        rows.append((m.get(metric, float("nan")), m.get("episodes", 0), m.get("best_accuracy", float("nan")), r.config, r.path, status))
    rows.sort(key=lambda row: -row[0] if row[0] == row[0] else float("inf"))
    print(f"sweep {path}: {len(rows)} trials, by {metric}")
    for value, episodes, acc, config, trial_path, status in rows:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(config.items()))
        print(f"  {status}  {metric}={value:.4f}  episodes={int(episodes)}  best acc={100 * acc:.1f}%  {params}\n    {trial_path}/run")


def build_parser(parser: argparse.ArgumentParser) -> None:
    add_options(parser, SweepConfig)
