"""The search benchmark: SAC (joint, with the action wall) against random search, TPE and the best uniform policy.

``python -m bench.search`` runs, for each model and budget of the plan, every method for every seed
as one ``galen search`` process each (resumable: a stopped run continues, a finished one is
skipped), then, alone on the machine, re-measures each run's best within-budget policy without the
latency cache, gives it the fixed fine-tune (``--finetune-steps`` SGD steps, batch 128, lr 0.01,
simulated quantization; the same as ``bench.search.fidelity``) and writes ``bench/results/search.json``
and the benchmark's section of ``bench/README.md``.

``--results methods`` (``make bench-methods``) writes the comparison of every search method of issue 24 instead
(``bench/results/methods.json``, the README's methods section): the presets of ``PRESETS`` (SAC, PPO, random, TPE,
GP-BO, NSGA-II, the two-stage search, random search screened by the accuracy predictor, SAC with block removal (also
only where needed: ``sac-drop-needed``), the best uniform policy), with the episodes and wall time each needed to
reach 95% of its final best. Runs both benchmarks share are run once.

Each method plays the same number of episodes; SAC's best counts only the episodes its agent
played (the uniform safety net every search ends with, and the deterministic read-out, are
reported apart). Run directories live under ``bench/search/runs/`` (not committed); each finished
run's episodes are archived to ``bench/search/data/<run>.jsonl.gz`` (committed), so a fresh checkout
re-writes the results without re-running.

Latency ratios of two CPUs are not comparable (ResNet-56's floor, min keep and int8: 26-29% on the AMD EPYC, 33-36%
on the Intel Xeon), so one set of runs is searched on one CPU: each archive records the CPU it was searched on, and a
search on another CPU than the plan's archives stops with an error unless ``--machine TAG`` names a separate set (run
names end in ``-m<TAG>``; results ``bench/results/<results>-<TAG>.json``, their own README section and plots). The
untagged archives of ResNet-56 and of ResNet-20 at 40% were searched on the AMD EPYC, ResNet-20 at 50% on the Xeon.
A CPU's name does not identify it (a Zen 5 VM is also "AMD EPYC", with ResNet-56's floor at 34.5%): archives record the
CPU's identity too (x86 family, model, stepping; ``hardware.protocol.cpu_identity``), and since older archives have the
name only, every search is also stopped before its first episode when the floor it measured is more than 15% from its
set's (``floor_mismatch``).
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from experiments import rundir

ROOT = Path(__file__).parent
REPO = ROOT.parent.parent
RESULTS = REPO / "bench" / "results" / "search.json"  # --results methods: methods.json
TITLES = {"search": "## Search quality (issue 20)", "methods": "## Search methods compared (issue 24)"}
METHODS = ("sac", "random", "tpe", "uniform")
# every method either benchmark runs: its label (in run names, search.json/methods.json and the README) -> the search
# config's changes; the label is the agent's algo (what its episodes' source says) unless the preset sets another
PRESETS: dict[str, dict[str, Any]] = {
    "sac": {},
    "ppo": {"agent.algo": "ppo"},
    "random": {},
    "tpe": {},
    "uniform": {},
    "gp-bo": {},
    "nsga2": {},
    "two-stage": {"agent.algo": "sac", "env.kind": "two-stage"},  # DRL two-stage: prune at 8 bits, then precisions (SAC)
    "random-apq": {"agent.algo": "random", "agent.screen": 8},  # random search screened by the accuracy predictor
    "sac-drop": {"agent.algo": "sac", "env.block_drop": True},  # SAC joint with N2N-style block removal
    "sac-drop-needed": {"agent.algo": "sac", "env.block_drop": "needed"},  # ... only where channel pruning cannot reach
}
SET_FIELDS = ("model", "budget", "round_to", "distill", "target", "machine")  # runs alike in these are one set (one CPU)
FLOOR_TOLERANCE = 0.15  # ResNet-56's floor when each run started: Intel Xeon 32.6-34.4%, AMD EPYC 25.9-29.4%; its namesake 34.5%
POLL_S = 2.0  # how often a running search's state is read (its floor, measured before the first episode)
SLOW_WAITS = 18  # final re-measure: at most 3 minutes waiting for the machine to leave its slow state
WALL_MODES = ("paced", "relative", "clamp")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", default="resnet20:0.5", help="model:budget[,budget...][;model:...] (default: resnet20:0.5)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"methods (default: {','.join(METHODS)}; all: {','.join(PRESETS)})")
    p.add_argument(
        "--results",
        choices=("search", "methods"),
        default="search",
        help="search: bench/results/search.json and the README's search section (issue 20's aims); methods: methods.json and "
        "the methods section (issue 24's comparison); the runs are shared",
    )
    p.add_argument(
        "--wall-modes", default="paced", help="wall modes of the searches (paced, relative, clamp; uniform plays without the wall)"
    )
    p.add_argument(
        "--round-to",
        type=int,
        default=16,
        help="env.round_to: channels kept in multiples of this (default 16: AVX-512 CPUs run other widths slowly; 8: the first tables)",
    )
    p.add_argument(
        "--distill",
        default="",
        help="model:steps[,model:steps]: per-episode distillation steps (env.finetune_steps) of a model's searches (default 0: "
        "batch-norm re-estimation only, Kendall tau 0.85 on ResNet-56 over budgets of 38-90%%; 20 steps: 0.71; "
        "bench/results/fidelity.json)",
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--episodes", type=int, default=100, help="episodes per run, the same for every method (default: 100)")
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--only", choices=("search", "write"), default=None, help="one phase only")
    p.add_argument("--stop-after", type=float, default=None, help="minutes: start no new search after this long")
    p.add_argument(
        "--machine",
        default="",
        help="a separate set of runs searched on this machine (lower-case letters and digits, e.g. xeon): run names end in "
        "-m<TAG>, results go to bench/results/<results>-<TAG>.json and a README section of their own (default: none, the "
        "benchmark's own set; a search on another CPU than its archives' is refused, also one of the same name whose floor "
        "measures more than 15%% off theirs)",
    )
    args = p.parse_args(argv)
    if args.machine and not re.fullmatch(r"[a-z0-9]+", args.machine):
        p.error(f"--machine: {args.machine!r} is not a tag; allowed: lower-case letters and digits (e.g. xeon)")
    unknown = [m for m in args.methods.split(",") if m not in PRESETS]
    if unknown:
        p.error(f"--methods: unknown method {unknown[0]!r}; allowed: {', '.join(PRESETS)}")
    return args


def algo_of(method: str) -> str:
    """The agent algo of a benchmark method (the source its searched episodes record)."""
    return PRESETS.get(method, {}).get("agent.algo", method)


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = []
    for part in args.plan.split(";"):
        model, _, budgets = part.partition(":")
        for budget in budgets.split(","):
            for seed in range(args.seeds):
                for method in args.methods.split(","):
                    common = {"model": model, "budget": float(budget), "seed": seed, "method": method, "round_to": args.round_to}
                    if args.machine:
                        common["machine"] = args.machine
                    if distill_steps(args).get(model):
                        common["distill"] = distill_steps(args)[model]
                    if method == "uniform":
                        if seed == 0:  # deterministic
                            runs.append(common)
                        continue
                    for mode in args.wall_modes.split(","):
                        runs.append({**common, "wall_mode": mode})
    return runs


def distill_steps(args: argparse.Namespace) -> dict[str, int]:
    """``--distill resnet56:20`` -> {"resnet56": 20}."""
    pairs = [item.partition(":") for item in args.distill.split(",") if item]
    return {model: int(steps) for model, _, steps in pairs}


def method_key(run: dict[str, Any]) -> str:
    """The method's key in search.json: the default wall mode (paced) is the method itself, other modes are apart."""
    mode = run.get("wall_mode", "paced")
    return run["method"] if mode == "paced" or run["method"] == "uniform" else f"{run['method']}-{mode}"


def run_name(run: dict[str, Any]) -> str:
    """``<model>-b<budget>[-r<round_to>][-d<distill>][-t<target>]-<method>[-<mode>]-s<seed>[-m<machine>]``; no mode suffix for
    ``relative`` (the archives before ``paced`` existed), none for uniform (it plays without the wall)."""
    mode = run.get("wall_mode", "paced")
    mode = "" if mode == "relative" or run["method"] == "uniform" else f"-{mode}"
    rounding = "" if run.get("round_to", 8) == 8 else f"-r{run['round_to']}"
    distill = f"-d{run['distill']}" if run.get("distill") else ""
    target = "" if run.get("target", "local-cpu") == "local-cpu" else f"-t{run['target']}"  # bench.targets' searches
    machine = f"-m{run['machine']}" if run.get("machine") else ""
    return f"{run['model']}-b{round(100 * run['budget'])}{rounding}{distill}{target}-{run['method']}{mode}-s{run['seed']}{machine}"


@functools.cache
def base_checkpoint(model: str) -> str:
    """The one base model every seed searches (5 epochs, training seed 0; the seeds differ in the search only): from
    the store, else the committed copy in ``data/base/``, else trained here on every core (ResNet-56: 60 min on 2
    cores) and committed (``bench.galen.archive.committed_base``)."""
    import logging

    import torch

    from bench.galen import archive
    from workloads.training import Recipe

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # a line per training epoch in the benchmark's log
    torch.set_num_threads(os.cpu_count() or 1)
    base, restored = archive.committed_base(ROOT, model, Recipe(epochs=5), progress=False)
    if restored:
        print(f"base model {model}: restored from {ROOT / 'data' / 'base'}")
    return str(base.path)


def config_for(run: dict[str, Any], episodes: int) -> dict[str, Any]:
    from experiments.config import merge

    name = run_name(run)
    config = {
        "name": name,
        "run_dir": str(ROOT / "runs" / name),
        "episodes": episodes,
        "seed": run["seed"],
        "workload": {"model": run["model"], "dataset": "fashion-mnist", "base_epochs": 5, "checkpoint": base_checkpoint(run["model"])},
        "env": {
            "kind": "joint",
            "target": run.get("target", "local-cpu"),
            "objective": "latency",
            "target_ratio": run["budget"],
            "wall_mode": run.get("wall_mode", "paced"),
            "round_to": run.get("round_to", 8),
            "finetune_steps": run.get("distill", 0),
        },  # fmt: skip
        "agent": {"algo": run["method"], "uniform_steps": 21},
    }
    return merge(config, PRESETS.get(run["method"], {}))


def archive(run: dict[str, Any]) -> Path:
    return ROOT / "data" / f"{run_name(run)}.jsonl.gz"


def search(run: dict[str, Any], episodes: int) -> None:
    from agents.recorder import read_episodes
    from hardware.protocol import cpu_identity, cpu_model

    if archive(run).exists():
        return
    config = config_for(run, episodes)
    run_dir = Path(config["run_dir"])
    path = ROOT / "configs" / f"{run_name(run)}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "experiments.search", "--config", str(path), "--no-progress", "--no-summary"]
    if run_dir.exists():
        command.append("--resume")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    started = time.time()
    print(f"[{time.strftime('%H:%M:%S')}] {run_name(run)}: searching", flush=True)
    process = subprocess.Popen(command, cwd=REPO, env=env)
    try:
        mismatch = watch_floor(run, run_dir, process)
    except BaseException:
        process.terminate()  # a search stopped by SIGTERM resumes
        process.wait()
        raise
    if mismatch:
        raise MachineError(mismatch)
    state = read_state(run_dir)
    header = {"run": run, "state": state, "config": config, "cpu": cpu_model(), "cpu_id": cpu_identity()}
    floor = (state.get("feasible_range") or [None])[0]
    if process.returncode and floor is not None and run["budget"] < floor:
        # refused before its first episode: the budget is below this CPU's floor for the env (galen search's BudgetError);
        # an outcome of the method on this machine (block removal reaches budgets channel pruning cannot), archived as such
        write_archive(run, {**header, "refused": {"floor": floor, "extreme": state.get("feasible_extreme")}}, [])
        print(f"[{time.strftime('%H:%M:%S')}] {run_name(run)}: refused, the budget is below the floor ({floor:.3f})", flush=True)
        return
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    records = read_episodes(run_dir)
    write_archive(run, header, records)
    print(f"[{time.strftime('%H:%M:%S')}] {run_name(run)}: {len(records)} episodes, {time.time() - started:.0f} s", flush=True)


def read_state(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / rundir.STATE).read_text())
    except (OSError, ValueError):  # not written yet (written atomically: never half)
        return {}


def watch_floor(run: dict[str, Any], run_dir: Path, process: subprocess.Popen) -> str | None:
    """Wait for the search; as soon as it has measured its floor (before its first episode; a resumed run's is the one it
    started with) compare that with its set's (``floor_mismatch``), and on a mismatch stop it (SIGTERM: it resumes) and
    return why. Also a refusal is checked: another CPU's floor is no outcome of this set."""
    while True:
        exited = process.poll() is not None
        state = read_state(run_dir)
        if state.get("feasible_range") and state.get("feasible_extreme"):
            mismatch = floor_mismatch(run, state["feasible_range"][0], state["feasible_extreme"])
            if mismatch and not exited:
                process.terminate()
            process.wait()  # stopped, or the whole search
            return mismatch
        if exited:
            return None
        time.sleep(POLL_S)


def floor_mismatch(run: dict[str, Any], floor: float, extreme: str) -> str | None:
    """Why ``floor`` (measured here for ``run``'s env) shows that this is not the CPU its set was searched on, or None.

    The floor (the cheapest uniform extreme's latency over the uncompressed model's) is the set's latency ratios in one
    number: the archives of its set (as ``check_machine``'s) with the same extreme measured it within 13% on one CPU, so
    a floor more than ``FLOOR_TOLERANCE`` from their median is another CPU under the same name (two "AMD EPYC": 26.7% and
    34.5%) or other work loading this one."""
    floors = []
    for path, header in archive_headers():
        done, state = header["run"], header.get("state") or {}
        if path == archive(run) or not same_set(run, done):
            continue
        if state.get("feasible_extreme") == extreme and state.get("feasible_range"):
            floors.append((state["feasible_range"][0], run_name(done)))
    if not floors:
        return None
    middle = statistics.median(f for f, _ in floors)
    if abs(floor - middle) <= FLOOR_TOLERANCE * middle:
        return None
    low, high = min(floors)[0], max(floors)[0]
    return (
        f"bench.search: {run_name(run)} measured its floor ({extreme}) at {floor:.1%} on this machine, the {len(floors)} "
        f"archives of its set at {low:.1%}-{high:.1%} (e.g. {floors[0][1]}): this is another CPU than theirs under the same "
        f"name, or other work is loading this one, and its latency ratios would not be comparable with theirs; the search "
        f"was stopped (its run directory resumes). Pass --machine TAG to search a separate set on this machine, or run "
        f"again when the machine is idle"
    )


def archive_headers() -> list[tuple[Path, dict[str, Any]]]:
    """Every archive's header line (``data/*.jsonl.gz``), by name."""
    headers = []
    for path in sorted((ROOT / "data").glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as handle:
            headers.append((path, json.loads(handle.readline())))
    return headers


def same_set(run: dict[str, Any], other: dict[str, Any]) -> bool:
    return all(run.get(f) == other.get(f) for f in SET_FIELDS)


def searched_here(header: dict[str, Any]) -> bool:
    """Whether an archive (or a final re-measure) was made on this CPU: by its identity (name, family, model, stepping)
    where recorded, else (archives before 2026-12-05) by the name only; ``floor_mismatch`` catches a namesake there."""
    from hardware.protocol import cpu_identity, cpu_model

    if header.get("cpu_id"):
        return header["cpu_id"] == cpu_identity()
    return header.get("cpu") == cpu_model()


def write_archive(run: dict[str, Any], header: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """``data/<run>.jsonl.gz``: the header line, then one line per episode; written whole or not at all (an archive that
    exists is a finished run)."""
    path = archive(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with gzip.GzipFile(partial, "wb", mtime=0) as handle:
        handle.write((json.dumps(header) + "\n" + "".join(json.dumps(r) + "\n" for r in records)).encode())
    os.replace(partial, path)


class MachineError(RuntimeError):
    """A search on another CPU than the archives of the set it would join."""


def check_machine(runs: list[dict[str, Any]]) -> None:
    """Refuse to search a run whose set (model, budget, rounding, distillation, target and ``--machine`` tag alike) has
    archives searched on another CPU (their latency ratios differ): every archive in ``data/`` counts, not only the plan's."""
    from hardware.protocol import cpu_identity

    here = cpu_identity()
    pending = [run for run in runs if not archive(run).exists()]
    if not pending:
        return
    for _, header in archive_headers():
        cpu, done = header.get("cpu_id") or header.get("cpu"), header["run"]
        same = [r for r in pending if same_set(r, done)]
        if cpu and not searched_here(header) and same:
            words = re.findall(r"[a-z0-9]+", here.lower().replace("(r)", ""))
            tag = next((w for w in ("xeon", "epyc", "graviton", "neoverse") if w in words), words[0] if words else "here")
            raise MachineError(
                f"bench.search: {run_name(done)} was searched on {cpu}, this machine is {here}: latency ratios of two CPUs are "
                f"not comparable, so {run_name(same[0])} would not join that set; search it on {cpu}, or pass --machine TAG "
                f"(e.g. --machine {tag}) to search a separate set on this machine"
            )


def load(run: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    if not archive(run).exists():
        return None
    lines = gzip.decompress(archive(run).read_bytes()).decode().splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


TOLERANCE = 1.03  # the measurement's repeatability (README: the same artifact spreads a few percent)


def wall_seconds_per_episode(records: list[dict[str, Any]], seconds: float | None) -> float | None:
    """The run's wall time per episode (its agent's time included): the mean gap between consecutive episodes'
    timestamps, leaving out the gaps of an interruption (over 10x the median gap: a run stopped and resumed later).

    Not ``state.json``'s seconds over the episodes: before 2026-12-03 a resumed run's state held its last process's time
    only (ResNet-56 TPE seed 0, resumed for its last 23 of 80 episodes: 626 s, 7.7 s per episode; its gaps: 19 s on average).
    """
    times = sorted(r["time"] for r in records if isinstance(r.get("time"), (int, float)))
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    if not gaps:
        return seconds / len(records) if seconds and records else None
    usual = statistics.median(gaps)
    kept = [g for g in gaps if g <= 10 * usual]
    return statistics.mean(kept)


EARLY = (10, 30)  # episode counts at which the methods table reports the best so far


def run_metrics(method: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    from agents.accuracy import rank_agreement

    own = [r for r in records if r["source"] == method]
    within = [r for r in own if r["within_budget"]]
    best = max(within, key=lambda r: r["accuracy"], default=None)
    fifth = max(1, len(own) // 5)
    seconds = [sum(r["seconds"].values()) for r in own if isinstance(r.get("seconds"), dict)]
    errors = [abs(r["latency_ratio"] / r["predicted_ratio"] - 1) for r in own if r.get("predicted_ratio")]
    return {
        "episodes": len(own),
        "within_budget_rate": len(within) / len(own) if own else 0.0,
        "within_budget_rate_tolerant": sum(r["cost_over_target"] <= TOLERANCE for r in own) / len(own) if own else 0.0,
        "best": best,
        "first_20_mean_accuracy": statistics.mean(r["accuracy"] for r in own[:fifth]) if own else None,
        "last_20_mean_accuracy": statistics.mean(r["accuracy"] for r in own[-fifth:]) if own else None,
        "seconds_per_episode_env": statistics.median(seconds) if seconds else None,
        "predictor_mape": 100 * statistics.mean(errors) if errors else None,
        # Condensa's small-sample question: how good the best within-budget policy is after the first 10 and 30 episodes
        **{f"best_at_{n}": max((r["accuracy"] for r in own[:n] if r["within_budget"]), default=None) for n in EARLY},
        "screening": rank_agreement(own),  # APQ-style screening: the predicted accuracy's Kendall tau with the scored one
    }


def reach_metrics(records: list[dict[str, Any]], budget: float) -> dict[str, Any]:
    """Episodes and wall seconds until the method's best within budget first reached 95% of its final value."""
    from experiments.analysis import reach

    reached = reach(records, budget)
    return {"reach_episodes": reached[0] if reached else None, "reach_seconds": reached[1] if reached else None}


def final_key(model: str, budget: float, record: dict[str, Any], finetune_steps: int, round_to: int, machine: str) -> str:
    """The re-measurement cache's key (``data/final.json``) of a run's best policy."""
    rounding = "" if round_to == 8 else f"/r{round_to}"
    return f"{model}/{budget}/{json.dumps(record['policy'], sort_keys=True)}/{finetune_steps}{rounding}" + (
        f"/m{machine}" if machine else ""
    )


def final_measure(
    model: str, budget: float, record: dict[str, Any], finetune_steps: int, cache: dict[str, Any], round_to: int = 8, machine: str = ""
) -> dict[str, Any]:
    """Re-measured latency ratio (uncached, the fastest-reference one of 5) and test accuracy after the fixed fine-tune.

    ``round_to``: the run's (a keep ratio means other channel counts under another rounding); ``machine``: the run set's
    tag (``--machine``; the same policy re-measured on another CPU is another entry).
    """
    key = final_key(model, budget, record, finetune_steps, round_to, machine)
    if key in cache and "reference_ms" in cache[key]:
        return cache[key]
    from compression.pipeline import compress
    from compression.policy import CompressionPolicy
    from envs import JointEnv
    from experiments.results import fixed_finetune
    from hardware.client import LatencyClient, lowest_ratio
    from hardware.protocol import cpu_identity, cpu_model

    env = JointEnv({"model": model, "base_epochs": 5, "target_ratio": budget, "round_to": round_to})
    policy = CompressionPolicy.from_dict(record["policy"])
    ctx = env.ctx
    artifact = compress(ctx.model, policy, ctx.example, ctx.calibration, structure=ctx.structure, round_to=round_to).artifact
    client = LatencyClient(ctx.target, cache=None)
    # five timings, the lowest ratio (a 0.453 policy re-measured 0.596 in the VM's slow state; LatencyClient.confirm)
    normal_ms = ctx.reference_ms  # the reference as timed for the predictor's calibration
    timings = [client.measure(artifact.data, ctx.reference) for _ in range(5)]
    # The slow state lasts up to minutes: wait it out (bounded), also while every reading is more than 10% above what the
    # search measured (SAC seed 2's best at 40%, 0.397 in its search: five timings 0.508-0.531 in a row, then 0.374-0.384).
    expected = record.get("latency_ratio")
    for _ in range(SLOW_WAITS):
        slow = min(m.reference.median_ms for m in timings) > 1.15 * normal_ms
        surprising = isinstance(expected, (int, float)) and lowest_ratio(timings).ratio > 1.10 * expected
        if not slow and not surprising:
            break
        time.sleep(10)
        timings.append(client.measure(artifact.data, ctx.reference))
    witness = lowest_ratio(timings)
    result = dict(cache.get(key) or {})
    if "test_after_finetune" not in result:
        after, seconds = fixed_finetune(env, policy, finetune_steps)
        result.update(test_after_finetune=after, finetune_seconds=seconds)
    result.update(latency_ratio=witness.ratio, reference_ms=witness.reference.median_ms, cpu=cpu_model(), cpu_id=cpu_identity())
    cache[key] = result
    return cache[key]


def results_name(args: argparse.Namespace) -> str:
    """``search``, ``methods``, or with ``--machine TAG`` ``<results>-<TAG>`` (its json, plots and README section)."""
    return f"{args.results}-{args.machine}" if args.machine else args.results


def write(args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """search.json, the plot and the README section from the archived runs (re-measure and fine-tune what is new).

    A best policy is re-measured on the CPU its run was searched on only: an archive of another CPU whose best is not in
    the cache yet keeps its search-time numbers (no re-measured latency, no fine-tune) until written there.
    """
    from envs.jsonio import dumps, write_atomic
    from hardware.protocol import cpu_model

    here = cpu_model()
    final_path = ROOT / "data" / "final.json"
    cache = json.loads(final_path.read_text()) if final_path.exists() else {}
    fidelity_path = REPO / "bench" / "results" / "fidelity.json"
    fidelity = json.loads(fidelity_path.read_text()) if fidelity_path.exists() else {}
    # the tau of the proxy the model's searches use (their per-episode distillation steps)
    used = {run["model"]: run.get("distill", 0) for run in runs}
    taus = {m: f["kendall_tau"].get(f"distill_{used.get(m, 0)}") for m, f in fidelity.items()}
    out: dict[str, Any] = {"proxy_kendall_tau": {m: t for m, t in taus.items() if t is not None}}
    curves: dict[tuple[str, str], dict[str, list[list[float]]]] = {}
    for run in runs:
        loaded = load(run)
        if loaded is None:
            continue
        header, records = loaded
        model, budget, method = run["model"], f"{run['budget']:.2f}", method_key(run)
        metrics = run_metrics(algo_of(run["method"]), records)
        metrics["wall_seconds_per_episode"] = wall_seconds_per_episode(records, header["state"].get("seconds"))
        own = [r for r in records if r["source"] == algo_of(run["method"])]
        metrics.update(reach_metrics(own, run["budget"]))
        if header.get("refused"):
            metrics["refused_floor"] = header["refused"]["floor"]  # no episode: the budget is below the floor here
            metrics["cpu"], metrics["cpu_id"] = header.get("cpu"), header.get("cpu_id")
        cell = out.setdefault(model, {}).setdefault(budget, {}).setdefault(method, {"seeds": []})
        best = metrics.pop("best")
        searched_on = header.get("cpu")
        key = final_key(model, run["budget"], best, args.finetune_steps, run.get("round_to", 8), run.get("machine", "")) if best else ""
        if best is not None and searched_on and not searched_here(header) and key not in cache:
            print(f"{run_name(run)}: searched on {searched_on}, not re-measured here ({here}); write it there", flush=True)
            metrics.update(
                best_accuracy=best["accuracy"],
                best_episode=best["episode"],
                best_policy=best["policy"],
                cpu=searched_on,
                cpu_id=header.get("cpu_id"),
            )
        elif best is not None:
            final = final_measure(model, run["budget"], best, args.finetune_steps, cache, run.get("round_to", 8), run.get("machine", ""))
            write_atomic(final_path, dumps(cache, indent=1))
            metrics.update(
                best_accuracy=best["accuracy"],
                best_episode=best["episode"],
                best_policy=best["policy"],
                best_accuracy_after_finetune=final["test_after_finetune"],
                latency_ratio_remeasured=final["latency_ratio"],
                cpu=final["cpu"],
                cpu_id=final.get("cpu_id"),  # re-measures before 2026-12-05 have the name only
            )
        cell["seeds"].append({"seed": run["seed"], **metrics})
        curves.setdefault((model, budget), {}).setdefault(method, []).append(best_so_far(own))
    for model, budgets in out.items():
        if model == "proxy_kendall_tau":
            continue
        for methods in budgets.values():
            for cell in methods.values():
                aggregate(cell)
    write_atomic(RESULTS.with_name(f"{results_name(args)}.json"), json.dumps(out, indent=1) + "\n")
    plots = plot(curves, out, results_name(args))
    write_readme(out, plots, args)
    return out


def best_so_far(records: list[dict[str, Any]]) -> list[float]:
    best, curve = float("nan"), []
    for r in records:
        if r["within_budget"] and not (r["accuracy"] <= best):
            best = r["accuracy"]
        curve.append(best)
    return curve


def aggregate(cell: dict[str, Any]) -> None:
    seeds = cell["seeds"]
    cell["within_budget_rate"] = statistics.mean(s["within_budget_rate"] for s in seeds)
    cell["within_budget_rate_tolerant"] = statistics.mean(s["within_budget_rate_tolerant"] for s in seeds)
    for name in ("best_accuracy", "best_accuracy_after_finetune", "latency_ratio_remeasured"):
        cell[name] = [s[name] for s in seeds if name in s]
    cell["episodes"] = [s["episodes"] for s in seeds]
    values = [s["wall_seconds_per_episode"] for s in seeds if s.get("wall_seconds_per_episode")]
    cell["seconds_per_episode"] = statistics.mean(values) if values else None  # the run's wall time per episode (agent included)
    cell["first_20_mean_accuracy"] = [s["first_20_mean_accuracy"] for s in seeds]
    cell["last_20_mean_accuracy"] = [s["last_20_mean_accuracy"] for s in seeds]
    mapes = [s["predictor_mape"] for s in seeds if s["predictor_mape"] is not None]
    cell["predictor_mape"] = statistics.mean(mapes) if mapes else None
    for n in EARLY:
        cell[f"best_at_{n}"] = [s[f"best_at_{n}"] for s in seeds if s.get(f"best_at_{n}") is not None]
    taus = [s["screening"]["kendall_tau"] for s in seeds if (s.get("screening") or {}).get("kendall_tau") is not None]
    if taus:
        cell["screening_kendall_tau"] = taus


def plot(curves: dict[tuple[str, str], dict[str, list[list[float]]]], out: dict[str, Any], prefix: str = "search") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []
    for (model, budget), methods in curves.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        for index, (method, runs) in enumerate(methods.items()):
            color = f"C{index}"
            if method == "uniform":
                best = max(out[model][budget]["uniform"]["best_accuracy"], default=None)
                if best is not None:
                    ax.axhline(100 * best, color="k", ls="--", lw=1, label="best uniform policy")
                continue
            n = min(len(c) for c in runs)
            if n == 0:  # a refused run (budget below the floor): no curve
                continue
            array = 100 * np.array([c[:n] for c in runs])
            for row in array:
                ax.plot(row, lw=0.5, alpha=0.4, color=color)
            style = "--" if "-" in method else "-"
            ax.plot(np.nanmean(array, axis=0), lw=2, color=color, ls=style, label=f"{method} ({len(runs)} seeds)")
        ax.set_xlabel("episode")
        ax.set_ylabel("best within-budget val. accuracy so far (%)")
        ax.set_title(f"{model}, latency budget {float(budget):.0%} (local-cpu)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = REPO / "bench" / "results" / f"{prefix}-{model}-b{round(100 * float(budget))}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(str(path.relative_to(REPO)))
    return paths


def _fmt(values: list[float]) -> str:
    if not values:
        return "none"
    mean = 100 * statistics.mean(values)
    return f"{mean:.1f} ± {100 * statistics.pstdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def write_readme(out: dict[str, Any], plots: list[str], args: argparse.Namespace) -> None:
    name = results_name(args)
    title = TITLES[args.results] + (f", the set searched on `--machine {args.machine}`" if args.machine else "")
    lines = [f"<!-- {name}:begin -->", title, ""]
    cells = [x for m, b in out.items() if m != "proxy_kendall_tau" for c in b.values() for x in c.values()]
    cpus = {s.get("cpu_id") or s.get("cpu") for x in cells for s in x["seeds"]}
    lines.append(
        f"`python -m bench.search` ({args.episodes} episodes per run, fixed fine-tune {args.finetune_steps} steps; "
        f"CPU: {', '.join(sorted(c for c in cpus if c))}). Raw data: `bench/results/{name}.json`; episodes: `bench/search/data/`."
    )
    lines.append("")
    early = args.results == "methods"  # the methods table: also the best after the first 10 and 30 episodes (Condensa's setting)
    lines.append(
        "| model | budget | method | seeds | within budget (strict / +3%) | "
        + ("best after 10 / 30 episodes | " if early else "")
        + "best val. acc. | after fine-tune | "
        "re-measured latency | first 20% → last 20% mean acc. | predictor MAPE | s / episode | episodes (s) to 95% of best | CPU |"
    )
    columns = 14 if early else 13
    lines.append("|---" * columns + "|")
    screened = []  # the screened methods' Kendall tau (predicted vs. scored accuracy), a line under the table
    for model, budgets in out.items():
        if model == "proxy_kendall_tau":
            continue
        for budget, methods in budgets.items():
            for method, c in methods.items():
                first, last = c["first_20_mean_accuracy"], c["last_20_mean_accuracy"]
                learn = f"{_fmt([f for f in first if f is not None])} → {_fmt([v for v in last if v is not None])}"
                mape = f"{c['predictor_mape']:.1f}%" if c["predictor_mape"] is not None else ""
                rates = f"{100 * c['within_budget_rate']:.0f}% / {100 * c['within_budget_rate_tolerant']:.0f}%"
                floors = [s["refused_floor"] for s in c["seeds"] if "refused_floor" in s]
                if len(floors) == len(c["seeds"]):  # every seed refused: nothing else to report
                    span = f"{100 * min(floors):.1f}%" + (f"-{100 * max(floors):.1f}%" if max(floors) > min(floors) else "")
                    dashes = " - |" * (columns - 6)  # all but model, budget, method, seeds, the refusal and the CPU
                    head = f"| {model} | {float(budget):.0%} | {method} | {len(c['seeds'])} |"
                    lines.append(f"{head} refused: floor {span} |{dashes} {_short_cpu(c)} |")
                    continue
                if floors:  # some seeds refused: the budget was below the env's floor on this CPU when they started
                    rates = f"refused ({len(floors)} of {len(c['seeds'])}): floor {100 * min(floors):.1f}%, others {rates}"
                accuracies = f"{_fmt(c['best_accuracy'])} | {_fmt(c['best_accuracy_after_finetune'])}"
                if early:
                    accuracies = " / ".join(_fmt(c.get(f"best_at_{n}", [])) for n in EARLY) + " | " + accuracies
                if c.get("screening_kendall_tau"):
                    screened.append(f"{model} at {float(budget):.0%}, {method}: {_fmt_tau(c['screening_kendall_tau'])}")
                lines.append(
                    f"| {model} | {float(budget):.0%} | {method} | {len(c['seeds'])} | {rates} | {accuracies} | "
                    f"{_fmt(c['latency_ratio_remeasured'])} | {learn} | {mape} | {c['seconds_per_episode'] or 0:.1f} | "
                    f"{_reach(c)} | {_short_cpu(c)} |"
                )
    lines.append("")
    if screened:
        lines += [
            "Accuracy predictor's screening (Kendall tau of predicted vs. scored accuracy, played episodes): " + "; ".join(screened) + ".",
            "",
        ]
    fidelity_path = REPO / "bench" / "results" / "fidelity.json"
    fidelity = json.loads(fidelity_path.read_text()) if fidelity_path.exists() and name == "search" else {}
    for model, summary in fidelity.items():
        for f in [summary, *summary.get("other_settings", [])]:
            lines.append(f"Proxy fidelity, {model} (`python -m bench.search.fidelity`): {fidelity_line(f)}")
    used = distill_steps(args)
    if fidelity:
        lines.append(
            "The searches' per-episode proxy: "
            + ", ".join(f"{m} {used.get(m, 0)} distillation steps" for m in fidelity)
            + " (the cheapest that ranks policies; ResNet-20's 0 steps reach tau 0.66)."
        )
    lines += ["", *[f"![{p}](results/{Path(p).name})" for p in plots], "", f"<!-- {name}:end -->"]
    readme = REPO / "bench" / "README.md"
    text = readme.read_text()
    section = "\n".join(lines)
    if f"<!-- {name}:begin -->" in text:
        head, _, rest = text.partition(f"<!-- {name}:begin -->")
        _, _, tail = rest.partition(f"<!-- {name}:end -->")
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    readme.write_text(text)


def _fmt_tau(taus: list[float]) -> str:
    return f"{statistics.mean(taus):.2f} ({min(taus):.2f}-{max(taus):.2f})" if len(taus) > 1 else f"{taus[0]:.2f}"


def _reach(cell: dict[str, Any]) -> str:
    pairs = [(s["reach_episodes"], s["reach_seconds"]) for s in cell["seeds"] if s.get("reach_episodes") is not None]
    if not pairs:
        return ""
    return f"{statistics.mean(e for e, _ in pairs):.0f} ({statistics.mean(t for _, t in pairs):.0f})"


def _short_cpu(cell: dict[str, Any]) -> str:
    """The CPUs a cell's seeds were re-measured on (cells are compared within one machine only)."""
    names = sorted({s.get("cpu") or "?" for s in cell["seeds"]})
    return ", ".join(n.replace("(R)", "").replace(" Processor", "").split(" with ")[0] for n in names)


def fidelity_line(f: dict[str, Any]) -> str:
    """One fidelity summary in words: the policies, tau per proxy variant with its cost, the targets' spread."""
    counts = f.get("policies_per_variant", {})
    variants = ", ".join(
        f"{tau:.2f} with {name.split('_')[1]} distillation steps ({f['seconds_per_episode'][name]:.1f} s per episode"
        + (f"; {counts[name]} of the policies" if counts.get(name, f["policies"]) != f["policies"] else "")
        + ")"
        for name, tau in f["kendall_tau"].items()
    )
    budget = f["budget"]
    if isinstance(budget, str):
        low, _, high = budget.partition(":")
        where = f"each within its own budget drawn from {float(low):.0%}-{float(high):.0%}"
    else:
        where = f"within {budget:.0%}"
    rounding = f", channels in multiples of {f['round_to']}" if f.get("round_to") else ""
    spread = f.get("test_after_finetune") or {}
    span = f"; after the fine-tune they span {100 * spread['min']:.2f}-{100 * spread['max']:.2f}%" if spread else ""
    return (
        f"Kendall tau between the per-episode accuracy and the test accuracy after the fixed fine-tune over {f['policies']} "
        f"random policies {where}{rounding}: {variants}{span}."
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runs = plan(args)
    started = time.time()
    if args.only in (None, "search"):
        try:
            check_machine(runs)
            for run in runs:
                if args.stop_after is not None and time.time() - started > 60 * args.stop_after:
                    print("stop-after reached; run again to continue", flush=True)
                    break
                search(run, args.episodes)
        except MachineError as error:
            raise SystemExit(f"error: {error}") from None
    if args.only in (None, "write"):
        write(args, runs)
