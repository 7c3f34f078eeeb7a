"""Benchmark: a study (``galen study``) of 2 methods x 2 seeds on ResNet-20, run with 1 and with 2 trials at once.

``python -m bench.study`` writes two study configs (the same grid, every cell on one base model; ``max_concurrent``
1 and 2) into ``bench/study/``, runs each as ``galen study`` (a finished study is reported again, not re-run; a
stopped one resumes), and records the wall time of each, the cells' results and what the second
trial slot bought. On this 2-core machine two trials share the cores the first one used for its
batch-norm re-estimation and scoring, so the speed-up is bounded well below 2; on a cluster each
trial gets its own node's CPUs. Writes ``bench/results/study.json`` and the ``study`` section of
``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.report import environment, write_section

ROOT = Path(__file__).parent / "study"
REPO = ROOT.parent.parent
RESULTS = REPO / "bench" / "results" / "study.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="random,tpe", help="agent.algo values of the grid (default: random,tpe)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--budget", type=float, default=0.5, help="latency budget (default: 0.5)")
    p.add_argument("--finetune-steps", type=int, default=50)
    return p.parse_args(argv)


def base_checkpoint() -> str:
    """The one base model every cell compresses: ResNet-20, 5 epochs, seed 0 (trained once if the store lacks it). The
    grid's seed is the search's; without a checkpoint a search's seed also picks its base model's, and every seed but 0
    stopped at "no checkpoint for resnet20--fashion-mnist--...--seed1"."""
    from workloads.base import obtain_base_model
    from workloads.training import Recipe

    return str(obtain_base_model("resnet20", "fashion-mnist", Recipe(epochs=5), 0).path)


def study_config(args: argparse.Namespace, concurrent: int, checkpoint: str) -> Path:
    search = {
        "name": "bench-study",
        "episodes": args.episodes,
        "workload": {"model": "resnet20", "dataset": "fashion-mnist", "checkpoint": checkpoint},
        "env": {"kind": "joint", "target": "local-cpu", "objective": "latency", "target_ratio": args.budget, "round_to": 16},
        "agent": {"algo": "random"},
    }
    ROOT.mkdir(parents=True, exist_ok=True)
    (ROOT / "search.yaml").write_text(yaml.safe_dump(search, sort_keys=False))
    study = {
        "name": f"r20-{concurrent}-at-once",
        "storage": str(ROOT / "runs"),
        "search": str(ROOT / "search.yaml"),
        "grid": {"agent.algo": args.methods.split(","), "seed": list(range(args.seeds))},
        "max_concurrent": concurrent,
        "finetune_steps": args.finetune_steps,
    }
    path = ROOT / f"study-{concurrent}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def run(path: Path) -> dict[str, Any]:
    """Run (or resume, or only report) one study; its wall time is the study's own (the runs' time over every process)."""
    name = yaml.safe_load(path.read_text())["name"]
    storage = ROOT / "runs" / name
    command = [sys.executable, "-m", "experiments.study", "--config", str(path)]
    if storage.is_dir():
        results = storage / "study.json"
        finished = results.is_file() and all(c["status"] == "finished" for c in json.loads(results.read_text())["cells"])
        command = [*command[:3], "report", *command[3:]] if finished else [*command, "--resume"]
    # its own GALEN_HOME (latency cache, sensitivity): the second study plays the same searches (same seeds), and from a
    # shared cache it would time nothing (the base model is named by its path; the dataset is the system's)
    env = {**os.environ, "GALEN_HOME": str(ROOT / "home" / name)}
    started = time.time()
    subprocess.run(command, cwd=REPO, check=True, env=env)
    out = json.loads((storage / "study.json").read_text())
    timing_path = storage / "bench-timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    if "report" not in command:
        timing["wall_seconds"] = timing.get("wall_seconds", 0.0) + time.time() - started
        timing_path.write_text(json.dumps(timing))
    rates = [c["cache_hit_rate"] for c in out["cells"] if c.get("cache_hit_rate") is not None]
    hits = sum(rates) / len(rates) if rates else None
    return {
        "name": name,
        "wall_seconds": timing.get("wall_seconds"),
        "cache_hit_rate": hits,
        "cells": out["cells"],
        "comparison": out["comparison"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    checkpoint = base_checkpoint()
    studies = [run(study_config(args, n, checkpoint)) for n in (1, 2)]
    one, two = (s["wall_seconds"] for s in studies)
    out = {"environment": environment(), "args": vars(args), "studies": studies, "speedup": one / two if one and two else None}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    lines = [
        "## A study on Ray Tune (issue 22)",
        "",
        f"`python -m bench.study`: `galen study` of {args.methods.replace(',', ' and ')} x {args.seeds} seeds on ResNet-20 "
        f"(latency budget {args.budget:.0%}, {args.episodes} episodes per cell, fixed fine-tune {args.finetune_steps} steps), "
        f"{out['environment']['cpu']}, {out['environment']['cores']} cores, {out['environment']['date']}.",
        "",
        "| trials at once | wall time | latency cache hits | "
        + " | ".join(f"{m} best (after fine-tune)" for m in args.methods.split(","))
        + " |",
        "|---|---|---|" + "---|" * len(args.methods.split(",")),
    ]
    for n, study in zip((1, 2), studies, strict=True):
        methods = next(iter(study["comparison"].values()))
        cells = []
        for m in args.methods.split(","):
            s = methods.get(m, {})
            best, after = s.get("best_accuracy", {}).get("mean"), s.get("best_accuracy_after_finetune", {}).get("mean")
            cells.append(f"{100 * best:.1f}% ({100 * after:.1f}%)" if best is not None and after is not None else "-")
        wall = f"{study['wall_seconds'] / 60:.1f} min" if study["wall_seconds"] else "-"
        hits = f"{100 * study['cache_hit_rate']:.0f}%" if study.get("cache_hit_rate") is not None else "-"
        lines.append(f"| {n} | {wall} | {hits} | " + " | ".join(cells) + " |")
    speedup = f"{out['speedup']:.2f}x" if out["speedup"] else "not measured"
    lines += [
        "",
        f"Two trials at once: {speedup} on this machine's 2 cores (each trial's scoring and batch-norm re-estimation used "
        "both cores when alone). On a cluster Tune places each trial on a node with a free CPU, so the study's wall time "
        "falls with the number of nodes until the latency targets (one device each) become the bottleneck. The wall times "
        "compare only when both studies timed their episodes (cache hits near 0%: each study has its own latency cache).",
    ]
    write_section("study", lines)
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()
