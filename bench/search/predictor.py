"""How well does the online accuracy predictor (``agents.accuracy``, APQ-style) rank the episodes a search plays next?

Replays every archived search of ``bench/search/data/`` (the search benchmark's runs, 80 episodes each) in episode order:
before episode t (t >= 10), the predictor is fitted on what the run had recorded so far (``own``), or on that plus every
other archived run of the same model (``transfer``: other methods, budgets and seeds; APQ transfers its predictor the
same way), and predicts episode t's accuracy. Per run: the Kendall tau between predicted and scored accuracy over
episodes 10..79; per model, the median over runs. No episode is re-played: this costs seconds.

Output: ``bench/results/predictor.json`` and the ``predictor`` section of ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).parent / "data"
RESULTS = Path(__file__).resolve().parents[1] / "results"
START = 10  # the predictor's first prediction (AccuracyPredictor.MIN_EPISODES)


def _runs(pattern: str) -> dict[str, list[dict[str, Any]]]:
    runs = {}
    for path in sorted(DATA.glob(pattern)):
        with gzip.open(path, "rt") as handle:
            records = [json.loads(line) for line in handle]
        searched = [r for r in records if r.get("policy") and r.get("source") not in ("uniform-safety", "sac-deterministic")]
        if len(searched) >= 2 * START:
            runs[path.name.removesuffix(".jsonl.gz")] = searched
    return runs


def evaluate(runs: dict[str, list[dict[str, Any]]], ridge: float = 1.0) -> dict[str, dict[str, Any]]:
    from agents.accuracy import AccuracyPredictor
    from bench.search.fidelity import kendall_tau

    first = next(iter(runs.values()))[0]["policy"]
    predictor = AccuracyPredictor(sorted(first["keep"]), sorted(first["precision"]), ridge)
    encoded = {
        name: (np.stack([predictor.encode(r["policy"]) for r in rs]), np.array([r["accuracy"] for r in rs])) for name, rs in runs.items()
    }
    out = {}
    for name, (x, y) in encoded.items():
        others = [v for other, v in encoded.items() if other != name]
        prior = (np.concatenate([o[0] for o in others]), np.concatenate([o[1] for o in others])) if others else (x[:0], y[:0])
        row: dict[str, Any] = {"episodes": len(y), "method": name.split("-r16-")[-1].split("-")[0]}
        for mode, (px, py) in (("own", (x[:0], y[:0])), ("transfer", prior)):
            predicted = []
            for t in range(START, len(y)):
                predictor.fit_arrays(np.concatenate([px, x[:t]]), np.concatenate([py, y[:t]]))
                predicted.append(float(predictor.predict([runs[name][t]["policy"]])[0]))
            row[f"tau_{mode}"] = kendall_tau(predicted, list(y[START:]))
        out[name] = row
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bench.report import environment, write_section
    from envs.jsonio import write_json

    p = argparse.ArgumentParser(prog="python -m bench.search.predictor", description=__doc__)
    p.add_argument("--models", default="resnet20,resnet56")
    p.add_argument("--ridge", type=float, default=1.0)
    args = p.parse_args(argv)
    results: dict[str, Any] = {"environment": environment(), "ridge": args.ridge, "start_episode": START, "models": {}}
    lines = [
        "## Accuracy predictor (issue 24)",
        "",
        "`python -m bench.search.predictor`: the online accuracy predictor (`agents.accuracy`, ridge regression on the policy's",
        "keep ratios and bit widths) replayed over every archived search of `bench/search/data/`: before each episode t >= 10",
        "it is fitted on the run's episodes so far (own), or on those plus every other archived run of the same model",
        "(transfer), and predicts episode t's accuracy. Kendall tau between predicted and scored accuracy over episodes",
        "10-79 of each run (seconds of CPU; no episode re-played):",
        "",
        "| model | runs | tau, own episodes: median (min-max) | tau, with transfer: median (min-max) |",
        "|---|---|---|---|",
    ]
    for model in args.models.split(","):
        runs = _runs(f"{model}-b*-r16-*-paced-s*.jsonl.gz")
        runs = {k: v for k, v in runs.items() if "-cpu" not in k}  # local-cpu runs only (bench.targets' runs name their target)
        if not runs:
            continue
        rows = evaluate(runs, args.ridge)
        results["models"][model] = rows
        cells = []
        for mode in ("own", "transfer"):
            taus = [r[f"tau_{mode}"] for r in rows.values()]
            cells.append(f"{statistics.median(taus):.2f} ({min(taus):.2f}-{max(taus):.2f})")
        lines.append(f"| {model} | {len(rows)} | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        "A search screens candidates with it (`agent.screen: N`, random search): from episode 10 each episode plans N random",
        "candidates through the wall and plays the one predicted most accurate; what that saves in episodes is the methods",
        "benchmark's to measure. Raw numbers per run: `bench/results/predictor.json`.",
    ]
    write_json(RESULTS / "predictor.json", results)
    write_section("predictor", lines)
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
