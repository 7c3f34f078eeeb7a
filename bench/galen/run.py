"""Run the Galen benchmark: train the base model, run every search, score, re-measure, fine-tune, write.

Phases (each resumable; run the same command again to continue):

1. base model: ResNet-56 (``--model``) on Fashion-MNIST, trained by the platform and stored;
2. searches: one search per (method, budget, seed) of ``bench.galen.plan``, each one trial of a Ray
   Tune experiment (``experiments.study.fit_cells``, the machinery of ``galen study``), ``--jobs`` at a
   time, each in its own run directory (stopped runs resume from their last checkpoint; finished ones
   are skipped);
3. final measurements, alone on the machine: the core's peak fp32/int8 throughput; per run and
   budget the best policy (most accurate within budget; else the cheapest) rebuilt, exported and
   re-timed interleaved with the reference without the latency cache; per method and budget the
   best of the seeds fine-tuned for a fixed number of steps (the same for every method) and
   scored on the test split before and after;
4. ``RESULTS.md``, plots and the raw per-episode data.

What a fresh checkout needs to continue is committed under ``data/`` (``bench.galen.archive``): the
base model, every finished run (archived when it finishes) and the final measurements. A clone
restores them and runs only what is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from agents.recorder import read_episodes
from bench.galen import archive
from bench.galen.plan import METHODS, Run, budget_tag, plan, search_config
from envs.jsonio import dumps, write_atomic
from experiments import analysis, rundir

ROOT = Path(__file__).parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.galen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet56", help="base model (default: resnet56)")
    p.add_argument("--base-epochs", type=int, default=5, help="epochs of the base model's training recipe (default: 5)")
    p.add_argument(
        "--budgets",
        default="0.5,0.2,0.1",
        help="latency budgets, fractions of the uncompressed latency; the first one also goes into the shared runs' configs "
        "(default: 0.5,0.2,0.1: the reachable one first)",
    )
    p.add_argument("--methods", default=",".join(METHODS), help=f"methods (default: all: {', '.join(METHODS)})")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (default: 3; the uniform grid is deterministic: 1)")
    p.add_argument("--episodes", type=int, default=200, help="episodes per run, the same for every method (default: 200)")
    p.add_argument("--val-size", type=int, default=500, help="validation images scored per episode (default: 500)")
    p.add_argument("--finetune-steps", type=int, default=200, help="SGD steps (batch 128) of the fixed fine-tune (default: 200)")
    p.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="searches at once: Tune trials of one CPU each (latency timings stay serialised by the device lock)",
    )
    p.add_argument("--out", default=str(ROOT), help="where runs/, RESULTS.md, plots/ and data/ go (default: bench/galen)")
    p.add_argument(
        "--stop-after",
        type=float,
        default=None,
        help="minutes: stop the searches after this long (each keeps what it recorded; run again to resume)",
    )
    p.add_argument("--only", choices=("search", "write"), default=None, help="one phase only: the searches, or scoring and writing")
    args = p.parse_args(argv)
    try:
        args.budgets = [float(b) for b in args.budgets.split(",")]
    except ValueError:
        p.error(f"--budgets {args.budgets!r}: expected comma-separated fractions, e.g. 0.2,0.1")
    if not all(0 < b <= 1 for b in args.budgets):
        p.error(f"--budgets {args.budgets}: each must be in (0, 1]")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        args.runs = plan(args.methods, args.budgets, args.seeds)
    except ValueError as error:
        p.error(str(error))
    args.out = Path(args.out).resolve()
    return args


# --- phase 1: the base model ------------------------------------------------------------------------


def base_model(args: argparse.Namespace) -> dict[str, Any]:
    """The stored base model: from the store, else from the committed copy (``data/base/``), else trained; then committed."""
    from workloads.training import Recipe

    base, restored = archive.committed_base(args.out, args.model, Recipe(epochs=args.base_epochs), train=True)
    keep = ("test_acc", "epochs", "parameters", "sha256")
    return {"path": str(base.path), "reused": base.reused, "restored": restored, **{k: base.meta.get(k) for k in keep}}


# --- phase 2: the searches ----------------------------------------------------------------------------


def status(run: Run, out: Path) -> str:
    state = archive.run_state(run.run_dir(out))
    return state.get("status", "unknown") if state else "new"


def _episodes_done(run: Run, out: Path) -> int:
    path = run.run_dir(out) / rundir.EPISODES
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def run_searches(args: argparse.Namespace, base: dict[str, Any]) -> list[str]:
    """Run (or resume) every unfinished search as one trial of a Tune experiment (``experiments.study``), ``args.jobs``
    at a time; archive each that finished; returns the failures."""
    import shutil
    import threading

    from tqdm import tqdm

    from experiments.config import SearchConfig
    from experiments.study import Cell, fit_cells
    from experiments.sweep import TrialsFailedError, raise_failed_trials

    todo = [r for r in args.runs if status(r, args.out) != "finished"]
    if not todo:
        return []
    cells = []
    for run in todo:
        config = search_config(run, args.out, model=args.model, checkpoint=base["path"], episodes=args.episodes, val_size=args.val_size)
        path = args.out / "configs" / f"{_file_label(run)}.yaml"  # what each run ran, readable beside its results
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, yaml.safe_dump(config, sort_keys=False))
        cells.append(
            Cell(_file_label(run), {"method": run.method, "budget": run.budget, "seed": run.seed}, SearchConfig.from_dict(config).to_dict())
        )
    total = len(args.runs) * args.episodes
    done = lambda: sum(min(_episodes_done(r, args.out), args.episodes) for r in args.runs)  # noqa: E731
    bar = tqdm(total=total, initial=done(), unit="ep", desc=f"searches ({len(todo)} of {len(args.runs)} to run)", dynamic_ncols=True)
    stop = threading.Event()

    def follow() -> None:  # the bar follows the run directories' episode logs (Tune pickles its callbacks: no bar in one)
        while not stop.wait(5):
            bar.update(done() - bar.n)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    # the run directories hold every search's state: each start is a fresh Tune experiment over the unfinished runs
    shutil.rmtree(args.out / "tune", ignore_errors=True)
    budget_s = None if args.stop_after is None else 60 * args.stop_after
    try:
        results = fit_cells("searches", args.out / "tune", cells, max_concurrent=args.jobs, time_budget_s=budget_s, verbose=0)
    finally:
        stop.set()
        follower.join()
        bar.update(done() - bar.n)
        bar.close()
    try:
        raise_failed_trials("bench.galen", "searches", results, lambda r: ((r.config or {}).get("cell") or {}).get("name", "?"))
        failures = []
    except TrialsFailedError as error:
        failures = [line.strip() for line in str(error).splitlines()[1:]]
    for run in todo:
        if status(run, args.out) == "finished":
            archive.save_run(args.out, run)  # committed data: a fresh checkout skips this run
    return failures


def _file_label(run: Run) -> str:
    return run.label.replace("/", "--")


# --- phase 3: scoring and final measurements --------------------------------------------------------


def _macs_by_precision(compressed: Any) -> tuple[int, int]:
    """(fp32 MACs, int8 MACs) of a compressed model: int8 kernels run where weights and activations are 8-bit."""
    fp32 = int8 = 0
    for layer in compressed.structure.layers:
        p = compressed.policy.precision_of(layer.name)
        if p.weight_bits <= 8 and p.activation_bits <= 8:
            int8 += layer.macs
        else:
            fp32 += layer.macs
    return fp32, int8


class Finalizer:
    """Re-measures and fine-tunes chosen policies, remembering results in ``final.json`` (resumable)."""

    def __init__(self, args: argparse.Namespace, base: dict[str, Any]) -> None:
        from bench.galen.peak import METHOD, matmul_peak

        self.args, self.base = args, base
        self.path = args.out / "data" / "final.json"  # committed with the runs' archives
        old = args.out / "runs" / "final.json"  # where earlier versions kept it
        source = self.path if self.path.exists() or not old.exists() else old
        self.done: dict[str, Any] = json.loads(source.read_text()) if source.exists() else {}
        # measured once per CPU, with the first final measurements there: that CPU's floors use the same numbers
        cpu = archive.cpu_name()
        first = self.done.get("peak")
        self.peak_key = "peak" if first is None or first.get("cpu") == cpu else f"peak/{cpu}"
        stored = self.done.get(self.peak_key)
        if stored is None or stored.get("method") != METHOD:
            if stored is not None:  # measured the older way on this CPU: kept for the record, its floors recomputed
                self.done[f"superseded/{self.peak_key}"] = stored
            self.done[self.peak_key] = {**matmul_peak(), "cpu": cpu}
            self._save()
        self.peak = self.done[self.peak_key]
        self.peaks = {v["cpu"]: v for k, v in self.done.items() if k == "peak" or k.startswith("peak/")}
        self.envs: dict[int, Any] = {}

    def _env(self, seed: int) -> Any:
        from envs import JointEnv

        if seed not in self.envs:
            self.envs[seed] = JointEnv(
                {"model": self.args.model, "checkpoint": self.base["path"], "val_size": self.args.val_size, "seed": seed}
            )
        return self.envs[seed]

    def _save(self) -> None:
        write_atomic(self.path, dumps(self.done, indent=1))

    def remeasure(self, key: str, seed: int, record: dict[str, Any]) -> dict[str, Any]:
        """The policy rebuilt and exported, timed against the reference without the cache; its latency floor."""
        if key not in self.done:
            self.done[key] = self._measure(seed, record)
            self._save()
        return self._with_floors(self.done[key])

    def _with_floors(self, measured: dict[str, Any]) -> dict[str, Any]:
        """Floors from the stored MACs and the peak of the CPU the policy was timed on (never stored: a peak may be re-measured)."""
        from bench.galen.peak import floor_ms

        peak, reference = self.peaks[measured["cpu"]], measured["reference_ms"]
        floor = floor_ms(measured["macs_fp32"], measured["macs_int8"], peak)
        ref_floor = floor_ms(measured["reference_macs"], 0, peak)
        return {**measured, "floor_ms": floor, "floor_ratio": floor / reference, "reference_floor_ratio": ref_floor / reference}

    def _measure(self, seed: int, record: dict[str, Any]) -> dict[str, Any]:
        from compression.policy import CompressionPolicy
        from hardware.protocol import device_lock, measure

        env = self._env(seed)
        compressed = env.build_compressed(CompressionPolicy.from_dict(record["policy"]))
        with device_lock(env.ctx.target.name):
            m = measure(compressed.artifact.data, env.ctx.target, env.ctx.reference)
        fp32, int8 = _macs_by_precision(compressed)
        return {
            "latency_ms": m.candidate.median_ms,
            "reference_ms": m.reference.median_ms,
            "ratio": m.ratio,
            "spread": m.spread,
            "macs_fp32": fp32,
            "macs_int8": int8,
            "reference_macs": env.ctx.reference_costs.macs,
            "cpu": archive.cpu_name(),
            "artifact_bytes": len(compressed.artifact.data),
        }

    def finetune(self, key: str, seed: int, record: dict[str, Any]) -> dict[str, Any]:
        """The fixed fine-tune (``--finetune-steps`` SGD steps with simulated quantization): test accuracy before and after."""
        if key in self.done:
            return self.done[key]
        import torch

        from compression.pipeline import finetune_and_build
        from compression.policy import CompressionPolicy
        from experiments.results import test_accuracy

        env = self._env(seed)
        ctx = env.ctx
        compressed = env.build_compressed(CompressionPolicy.from_dict(record["policy"]))
        before = test_accuracy(env, compressed)
        torch.set_num_threads(os.cpu_count() or 1)
        started = time.perf_counter()
        steps = self.args.finetune_steps
        finetune_and_build(compressed, ctx.data, ctx.example, ctx.calibration, steps=steps, lr=0.01, seed=0, progress=False)
        seconds = time.perf_counter() - started
        torch.set_num_threads(1)
        after = test_accuracy(env, compressed)
        self.done[key] = {"test_before": before, "test_after": after, "steps": self.args.finetune_steps, "seconds": seconds}
        self._save()
        return self.done[key]

    @property
    def reference_key(self) -> str:
        """Per base model (its weights' sha256): a retrained base model is measured anew, the earlier one's numbers kept."""
        sha = self.base.get("sha256")
        return f"reference/{sha[:16]}" if sha else "reference"

    def reference(self) -> dict[str, Any]:
        """The uncompressed model's test accuracy (ONNX Runtime) and validation accuracy (the episodes' images)."""
        if self.reference_key not in self.done:
            from experiments.results import test_accuracy

            env = self._env(0)
            accuracy = test_accuracy(env, env.ctx.reference)
            self.done[self.reference_key] = {"test_accuracy": accuracy, "val_accuracy": env.ctx.reference_accuracy}
            self._save()
        return self.done[self.reference_key]


def collect(args: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any]:
    """Score every run under every budget it is scored against; re-measure and fine-tune the chosen policies."""
    from tqdm import tqdm

    final = Finalizer(args, base)
    reference = final.reference()
    rows: dict[str, dict[str, Any]] = {}  # f"{budget_tag}/{method}" -> per-seed scores
    jobs = [(run, budget) for run in args.runs for budget in run.scored_budgets]
    for run, budget in tqdm(jobs, desc="scoring and re-measuring", unit="run", dynamic_ncols=True):
        records = read_episodes(run.run_dir(args.out)) if run.run_dir(args.out).exists() else []
        scored = analysis.score(records, budget, args.episodes)
        scored["status"] = status(run, args.out)
        scored["cpu"] = archive.run_state(run.run_dir(args.out)).get("cpu")  # set when the run is archived
        scored["run"] = run.label  # a shared run (uniform, random) is scored under every budget: count it once
        rows_searched = analysis.searched(records, args.episodes)
        chosen = analysis.best_within(rows_searched, budget) or analysis.lowest_cost(rows_searched)
        if chosen is not None and scored["status"] == "finished":
            scored["remeasured"] = final.remeasure(f"{run.label}/{budget_tag(budget)}/e{chosen['episode']}", run.seed, chosen)
            scored["_record"] = chosen
        rows.setdefault(f"{budget_tag(budget)}/{run.method}", {})[str(run.seed)] = scored
    for key, seeds in tqdm(rows.items(), desc="fixed fine-tune of each method's best", unit="method", dynamic_ncols=True):
        budget = float(key.split("/")[0][1:]) / 100
        candidates = [(s, v) for s, v in seeds.items() if v.get("_record") is not None and v["best"] is not None]
        if not candidates:
            continue
        seed, best = max(candidates, key=lambda sv: sv[1]["best"]["accuracy"])
        record = best["_record"]
        seeds[seed]["finetuned"] = final.finetune(f"{key}/seed{seed}/e{record['episode']}/ft{args.finetune_steps}", int(seed), record)
        seeds[seed]["finetuned"]["budget"] = budget
    for seeds in rows.values():
        for v in seeds.values():
            v.pop("_record", None)
    earlier = final.done.get("reference") if final.reference_key != "reference" else None  # a base model whose sha was not kept
    return {
        "peak": final.peak,
        "peaks": list(final.peaks.values()),
        "superseded_peaks": [v for k, v in final.done.items() if k.startswith("superseded/")],
        "reference_test_accuracy": reference["test_accuracy"],
        "reference": reference,
        "earlier_reference": earlier,
        "rows": rows,
    }


def export_episodes(args: argparse.Namespace) -> Path:
    """Every run's per-episode records without the per-layer policy, one gzipped JSON line each."""
    keep = ("episode", "source", "time", "reward", "accuracy", "cost_ratio", "latency_ms", "latency_cached", "macs", "bops")
    keep += ("artifact_bytes", "target_ratio", "within_budget")
    path = args.out / "data" / "episodes.jsonl.gz"
    # the same episodes give the same bytes, so a re-run does not churn the committed file
    with archive.gz_text_writer(path) as handle:
        for run in args.runs:
            if run.run_dir(args.out).exists():
                for r in read_episodes(run.run_dir(args.out)):
                    handle.write(
                        json.dumps({"run": run.label, "method": run.method, "seed": run.seed, **{k: r.get(k) for k in keep}}) + "\n"
                    )
    return path


def main(argv: list[str] | None = None) -> int:
    from bench.galen.write import write_results
    from experiments.cluster import quiet_ray

    args = parse_args(argv)
    quiet_ray()
    import torch

    torch.set_num_threads(1)
    base = base_model(args)
    print(f"base model: {args.model}, {base['epochs']} epochs, test accuracy {100 * base['test_acc']:.2f}% ({base['path']})")
    restored = archive.restore_runs(args.out, args.runs)
    if restored:
        print(f"restored {len(restored)} finished runs from {args.out / 'data' / 'archive'}")
    failures: list[str] = []
    if args.only != "write":
        failures = run_searches(args, base)
        for failure in failures:
            print(f"FAILED {failure}", file=sys.stderr)
    if args.only == "search":
        return 1 if failures else 0
    for run in args.runs:  # runs finished before archiving existed, or by hand
        archive.save_run(args.out, run)
    unfinished = [r.label for r in args.runs if status(r, args.out) != "finished"]
    results = collect(args, base)
    # runs archived from an earlier version's exported episodes: no per-layer policies (their final measurements are kept)
    without_policies = [r.label for r in args.runs if "migrated" in archive.run_state(r.run_dir(args.out))]
    results.update(base=base, unfinished=unfinished, without_policies=without_policies, config=_config_of(args))
    write_atomic(args.out / "results.json", dumps(results, indent=1))
    data = export_episodes(args)
    path = write_results(args.out, results)
    print(f"{path}; raw episodes: {data}; {len(args.runs) - len(unfinished)} of {len(args.runs)} runs finished")
    return 1 if failures else 0


def _config_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": args.model,
        "base_epochs": args.base_epochs,
        "budgets": args.budgets,
        "methods": args.methods,
        "seeds": args.seeds,
        "episodes": args.episodes,
        "val_size": args.val_size,
        "finetune_steps": args.finetune_steps,
        "jobs": args.jobs,
        "runs": [r.label for r in args.runs],
    }
