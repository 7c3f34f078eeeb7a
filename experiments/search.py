"""Search a compression policy: ``galen search --config <yaml>`` / ``python -m experiments.search --config <yaml>``.

RL agents (SAC, PPO) train with RLlib on Ray; baselines (uniform, random, TPE) play their policies
in this process. Every finished episode is in ``<run_dir>/episodes.jsonl`` before the next starts;
agents are checkpointed every ``checkpoint_every`` iterations, and ``--resume`` continues a stopped
run (SIGTERM, SIGKILL, a crash) from its last checkpoint, numbering episodes on from the last one
written. At the end the best policy is compared with the baseline on the test split and the
target, and the report (``report/report.md``, ``report/pareto.png``) is written.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from agents.recorder import EpisodeLog, read_episodes
from envs.jsonio import read_json, write_json
from experiments import cluster, rundir
from experiments.config import SearchConfig, builtin_config
from experiments.results import format_summary, make_env, summarize
from experiments.rundir import RunDir

log = logging.getLogger("galen.search")


class Interrupted(KeyboardInterrupt):
    """SIGTERM: stop like Ctrl-C (the run resumes from its last checkpoint)."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. inside a Tune trial): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _bar(total: int, initial: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="ep", disable=not enabled, dynamic_ncols=True)


def _postfix(summary: dict[str, Any]) -> str:
    within = "within budget" if summary["best_within_budget"] else "over budget"
    return (
        f"reward(10) {summary['reward_mean_10']:.3f} | best acc {100 * summary['best_accuracy']:.1f}% "
        f"at {100 * summary['best_cost_ratio']:.0f}% cost ({within}) | pareto {summary['pareto_size']}"
    )


BASELINE_LOG_EVERY = 4  # episodes between progress lines of a baseline when the output is not a terminal


def _log_progress(bar: Any, done: int, total: int, summary: dict[str, Any]) -> None:
    """A progress line when the bar cannot be seen (a job log, CI, a file): tqdm off, or stderr not a terminal."""
    if bar.disable or not sys.stderr.isatty():
        log.info("episodes %d/%d: %s", done, total, _postfix(summary))


def _wandb_options(config: SearchConfig, run: RunDir) -> dict[str, Any] | None:
    if not config.wandb.get("project"):
        return None
    run_id = hashlib.sha1(str(run.path).encode()).hexdigest()[:12]  # the same W&B run on resume
    return {**config.wandb, "name": config.name, "id": run_id, "config": config.to_dict()}


# --- RL -------------------------------------------------------------------------------------------
def save_checkpoint(algo: Any, run: RunDir, iteration: int, episodes: int, algo_name: str, obs_dim: int, action_dim: int) -> None:
    from agents.policy_net import export_actor
    from agents.replay import save_replay

    tmp, final = run.new_checkpoint_dir(iteration)
    algo.save_to_path(str(tmp / "rllib"))
    save_replay(algo, tmp)  # RLlib's new-stack checkpoint holds no replay buffer
    export_actor(algo.get_module(), algo_name, tmp, obs_dim, action_dim)
    write_json(tmp / "progress.json", {"iteration": iteration, "episodes": episodes, "time": time.time()})
    run.commit_checkpoint(tmp, final)
    run.set_state(iterations=iteration, checkpoint=final.name, episodes=episodes)


def _checkpoint_episodes(checkpoint: Path) -> int:
    """The run's episode count when ``checkpoint`` was saved (0 if it does not say)."""
    return int((read_json(checkpoint / "progress.json") or {}).get("episodes", 0))


def rllib_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of an ``algo.train()`` result worth a dashboard: the learners' (losses, entropy, temperature,
    ...) as ``learners/<module>/<name>`` and the env runners' episode metrics (``env_runners/galen_*``, returns)."""
    out: dict[str, float] = {}

    def scalar(value: Any) -> float | None:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return number if math.isfinite(number) else None

    for module, stats in (result.get("learners") or {}).items():
        for name, value in (stats if isinstance(stats, dict) else {}).items():
            if (number := scalar(value)) is not None:
                out[f"learners/{module}/{name}"] = number
    for name, value in (result.get("env_runners") or {}).items():
        if (name.startswith("galen_") or name.startswith("episode_")) and (number := scalar(value)) is not None:
            out[f"env_runners/{name}"] = number
    return out


def run_rl(config: SearchConfig, run: RunDir, env: Any, progress: bool, on_iteration: Any = None) -> None:
    """Train the RL agent until the run holds ``config.episodes`` episodes; then play its deterministic policy once."""
    import ray

    from agents.baselines import play_safety_net
    from agents.policy_net import ActorNet, rollout
    from agents.recorder import start_recorder
    from agents.replay import renormalise_rewards, replay_elites, restore_replay
    from agents.rllib import build_algo_config, learn_burst, prime_calibration, repeat_noise, set_progress

    name = f"galen-recorder:{hashlib.sha1(str(run.path).encode()).hexdigest()[:10]}:{os.getpid()}"
    recorder = start_recorder(name, run.path, _wandb_options(config, run))
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    algo_config = build_algo_config(
        config.agent, type(env), config.env.to_dict(), len(env.units), config.seed, name, episodes=config.episodes
    )
    algo = algo_config.build_algo()
    try:
        iteration = 0
        checkpoint = run.latest_checkpoint()
        if checkpoint is not None:
            algo.restore_from_path(str(checkpoint / "rllib"))
            iteration = int(checkpoint.name.split("_")[1])
            restored = restore_replay(algo, checkpoint)
            primed = prime_calibration(algo, run.episodes())
            log.info(
                "resumed the agent from %s (iteration %d, %d episodes back in its replay buffer, %d measured ones in the "
                "env runners' latency calibration)",
                checkpoint, iteration, restored, primed,
            )  # fmt: skip
        count = ray.get(recorder.count.remote())
        # the burst of learner updates at the end of the warm-up (SAC): once per run; a checkpoint saved after the
        # warm-up holds the agent it trained
        warmup = config.agent.warmup_for(config.episodes)
        burst_done = config.agent.algo != "sac" or (checkpoint is not None and _checkpoint_episodes(checkpoint) >= warmup)
        with _bar(config.episodes, min(count, config.episodes), f"{config.agent.algo} search", progress) as bar:
            while count < config.episodes:
                # the exploration schedule continues from the run's episode count; replayed policies raise SAC's noise
                floor = 0.0
                if config.agent.algo == "sac" and config.agent.noise_on_repeat > 0:
                    floor = repeat_noise(run.episodes(), "sac", config.agent.noise_on_repeat)
                set_progress(algo, count, floor)
                result = algo.train()
                iteration += 1
                if config.agent.algo == "sac":
                    if config.agent.elite_episodes:
                        replay_elites(algo, config.agent.elite_episodes)
                    if config.agent.reward_baseline == "buffer":
                        renormalise_rewards(algo)  # one baseline for every buffered episode, not the one of its time
                new_count = ray.get(recorder.count.remote())
                if not burst_done and new_count >= warmup and new_count < config.episodes:
                    made = learn_burst(algo, config.agent.warmup_updates * warmup)  # the warm-up ends: the actor learns before it plays
                    burst_done = True
                    log.info("warm-up over after %d episodes: %d learner updates before the agent plays", new_count, made)
                summary = ray.get(recorder.summary.remote())
                bar.update(min(new_count, config.episodes) - min(count, config.episodes))
                bar.set_postfix_str(_postfix(summary))
                _log_progress(bar, min(new_count, config.episodes), config.episodes, summary)
                count = new_count
                if iteration % config.checkpoint_every == 0 or count >= config.episodes:
                    save_checkpoint(algo, run, iteration, count, config.agent.algo, obs_dim, action_dim)
                if on_iteration is not None:  # Tune (and W&B through it): the recorder's summary and RLlib's own metrics
                    on_iteration(iteration, {**summary, **rllib_metrics(result)}, run.latest_checkpoint())
        if config.safety and not any(r.get("source") == "uniform-safety" for r in run.episodes()):
            play_safety_net(env, lambda info, source, extra: ray.get(recorder.record.remote(info, source, extra)))
        final = run.latest_checkpoint()
        source = f"{config.agent.algo}-deterministic"
        episodes = run.episodes()
        done = any(r.get("source") == source and r.get("iteration") == iteration for r in episodes)
        if final is not None and not done:
            # The final policy, read out of the checkpoint without Ray: deterministic actions through the env, whose
            # predictor and wall margin first learn what the search measured (as the env runners' did).
            env.ctx.replay_observations(episodes)
            info = rollout(env, ActorNet(final), seed=config.seed)
            ray.get(recorder.record.remote(info, source, {"iteration": iteration, "checkpoint": final.name}))
    finally:
        algo.stop()
        with contextlib.suppress(Exception):
            ray.get(recorder.close.remote())
            ray.kill(recorder)


# --- baselines --------------------------------------------------------------------------------------
def run_baselines(config: SearchConfig, run: RunDir, env: Any, progress: bool, on_episode: Any = None) -> None:
    """Play the baseline until the run holds ``config.episodes`` of its episodes, then the uniform safety net;
    ``on_episode(done, summary)`` after each (a study's trial reports to Tune through it)."""
    from agents.baselines import play_safety_net, run_baseline

    episode_log = EpisodeLog(run.path, _wandb_options(config, run))
    try:
        done = min(episode_log.count(), config.episodes)  # counted here: a disabled tqdm bar (--no-progress) does not count
        with _bar(config.episodes, done, f"{config.agent.algo} baseline", progress) as bar:

            def tick(record: dict[str, Any]) -> None:
                nonlocal done
                done += 1
                bar.update(1)
                bar.set_postfix_str(_postfix(episode_log.summary()))
                run.set_state()  # the run's seconds so far (a killed run resumes its clock from here)
                if done % BASELINE_LOG_EVERY == 0 or done >= config.episodes:
                    _log_progress(bar, min(done, config.episodes), config.episodes, episode_log.summary())
                if on_episode is not None:
                    on_episode(done, episode_log.summary())

            env.ctx.replay_observations(episode_log.records)  # a resumed run keeps its online calibration
            own = [r for r in episode_log.records if r.get("source") != "uniform-safety"]
            if len(own) < config.episodes:
                run_baseline(
                    config.agent.algo, env, episode_log, config.episodes, config.seed, config.agent.uniform_steps, tick, config.agent.screen
                )
            played = any(r.get("source") == "uniform-safety" for r in episode_log.records)
            if config.safety and config.agent.algo != "uniform" and not played:
                play_safety_net(env, episode_log.record)
    finally:
        episode_log.close()


def run_method(config: SearchConfig, run: RunDir, env: Any, progress: bool, on_iteration: Any = None, on_episode: Any = None) -> None:
    """The search's method on ``env``: an RL agent or a baseline; a two-stage search plays its two stages
    (``experiments.stages``), each with the method. ``on_iteration`` / ``on_episode``: a study's reports to Tune."""
    if config.env.kind == "two-stage":
        from experiments.stages import run_two_stage

        run_two_stage(
            config, run, progress, lambda sub, sub_run, sub_env: run_method(sub, sub_run, sub_env, progress, on_iteration, on_episode)
        )
    elif config.agent.is_rl:
        run_rl(config, run, env, progress, on_iteration=on_iteration)
    else:
        run_baselines(config, run, env, progress, on_episode=on_episode)


# --- the entry point ---------------------------------------------------------------------------------
def main(config: SearchConfig, resume: bool = False, progress: bool = True, report: bool = True, summary: bool = True) -> dict[str, Any]:
    """Run (or resume) a search; returns the summary (baseline vs best policy; empty with ``summary=False``)."""
    # One thread: the driver's RLlib iterations measured 10x slower with torch's default. A base model trained on the
    # way uses every core (envs/context.py: every_core).
    torch.set_num_threads(1)
    run = RunDir.open(config, resume)
    run.start_clock()  # state.json's seconds: the run's time over all its processes
    log.info("run directory: %s", run.path)
    log.info(
        "preparing the %s environment: %s on %s, target %s ...", config.env.kind, config.env.model, config.env.dataset, config.env.target
    )
    owns_ray = cluster.connect_for(config.env.target)  # a target timed on Ray nodes: the env's preparation times there
    try:
        env = make_env(config)
        env.reset(seed=config.seed)  # computes (or loads) the sensitivity once, here, before env runners need it
        check_budget(config, env, run)
        owns_ray = cluster.connect() or owns_ray
        run.set_state(status="running", pid=os.getpid(), algo=config.agent.algo)
        with _sigterm_interrupts():
            run_method(config, run, env, progress)
        run.set_state(status="finished")
        if not summary:
            return {}
        return finish(config, run, env, report)  # under Ray: the latency client's actors are still there
    except KeyboardInterrupt:
        run.set_state(status="interrupted")
        log.warning("interrupted; continue with: galen search --config %s --resume", run.path / rundir.CONFIG)
        raise
    finally:
        if owns_ray:
            import ray

            ray.shutdown()


RECHECK_PAUSE_S = 30.0  # the VM's slow state was seen to last over 40 s


class BudgetError(ValueError):
    """A budget outside the feasible range of the model on the target (measured before the search)."""


def check_budget(config: SearchConfig, env: Any, run: RunDir | None = None) -> tuple[float, float]:
    """Measure the feasible range (the most compressed policy on the target) and refuse a budget below it, at once.

    A resumed run keeps the range measured when it started (its budget was accepted against it; 9 timings saved).
    """
    started = time.perf_counter()
    state = run.state() if run is not None else {}
    if state.get("feasible_range") and state.get("feasible_extreme"):
        (floor, ceiling), which, how = state["feasible_range"], state["feasible_extreme"], "measured when the run started"
    else:
        floor, ceiling, which = env.feasible_range()
        # A refusal is measured twice more after a pause, the lowest floor counting: a stretch of load on a shared
        # machine (seen here: Ray workers of a stopped run still exiting) put ResNet-20's 44% floor at 55%.
        for _ in range(2 if config.env.target_ratio < floor and config.env.measured_objective else 0):
            time.sleep(RECHECK_PAUSE_S)
            again, _, also = env.feasible_range()
            if again < floor:
                floor, which = again, also
            if config.env.target_ratio >= floor:
                break
        how = f"{time.perf_counter() - started:.1f} s"
    log.info(
        "feasible range of %s on %s: %.1f%%..100%% (the cheapest uniform extreme: %s; %s)",
        config.env.model, config.env.target, 100 * floor, which, how,
    )  # fmt: skip
    if run is not None:
        run.set_state(feasible_range=[floor, ceiling], feasible_extreme=which)
    target = config.env.target_ratio
    if target < floor and not config.env.budget_guard:
        log.warning("env.target_ratio %g is below the feasible range (%.3f); budget_guard is off, so the search runs anyway", target, floor)
    elif target < floor:
        latency = config.env.measured_objective
        # a small model's floor is overhead-bound and reads high under load (ResNet-20, AMD EPYC: 30% idle, 43-45% while
        # a test suite ran beside it), even timed again after pauses
        busy = "; timings read high while other work shares the CPU: if some did, run again when the machine is idle" if latency else ""
        raise BudgetError(
            f"env.target_ratio is {target:g}, below the feasible range of {config.env.model} on {config.env.target}: the cheapest "
            f"uniform extreme of the {env.kind} env ({which}) {'measures' if latency else 'costs'} {100 * floor:.1f}% of the "
            f"uncompressed model's {config.env.objective}; allowed: {floor:.3f} <= env.target_ratio <= {ceiling:g}{busy}"
        )
    return floor, ceiling


def finish(config: SearchConfig, run: RunDir, env: Any, report: bool = True) -> dict[str, Any]:
    best = read_json(run.path / rundir.BEST)
    if best is None:
        raise RuntimeError(f"{run.path}: no episode finished")
    summary = summarize(env, best, read_episodes(run.path))
    write_json(run.path / rundir.SUMMARY, summary)
    print(format_summary(summary))
    if report:
        from experiments.report import write_report

        paths = write_report(run.path)
        print(f"report: {paths['markdown']}\nPareto plot: {paths['pareto']}")
    return summary


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="galen search", description=__doc__)
    parser.add_argument("--config", required=False, default=None, help="search config YAML (default: the built-in demo.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue the run in the config's run_dir (starts it when there is none)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field, e.g. --set agent.lr=1e-3 (repeatable)"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--no-report", dest="report", action="store_false", help="skip writing the report")
    parser.add_argument(
        "--no-summary", dest="summary", action="store_false", help="skip the closing summary (test-set evaluation) and the report"
    )
    return parser


def parse_overrides(items: list[str]) -> dict[str, Any]:
    import yaml

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE, e.g. agent.lr=1e-3")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    path = args.config or builtin_config("demo")
    return SearchConfig.from_yaml(path, parse_overrides(args.set))


def command(args: argparse.Namespace) -> None:
    """``galen search``'s handler."""
    main(config_from_args(args), resume=args.resume, progress=args.progress, report=args.report, summary=args.summary)


def run(argv: list[str] | None = None) -> int:
    """``python -m experiments.search`` (what ``ray job submit`` runs): the same as ``galen search``."""
    from experiments.entry import module_main

    return module_main("search", build_parser, command, argv)


if __name__ == "__main__":
    sys.exit(run())
