"""Benchmark: is a policy specific to its target? (issue 23; ``make bench-targets``)

``python -m bench.targets`` searches the same model at the same latency budget once per target
(``local-cpu``: ONNX Runtime, 1 thread; ``openvino-cpu``: OpenVINO, 1 thread; ``local-cpu-2t``: ONNX
Runtime, 2 threads; the budget is a ratio to the uncompressed model *on that target*), then re-measures
every target's best within-budget policy on every target (uncached, the least disturbed of
``--timings`` readings against the uncompressed model) and gives it the fixed fine-tune of
``bench.search`` (the same cache, ``bench/search/data/final.json``). The searches are
``bench.search`` runs (resumable, archived to ``bench/search/data/``; the ``local-cpu`` ones are the
search benchmark's own, reused when present).

The cross-target matrix: row = the policy searched for target X, column = target Y, cell = its
latency ratio on Y (and its accuracy, which does not depend on the target). The claim holds on Y when
Y's own policy is within Y's budget and no other target's policy beats it there: more accurate
(beyond ``--accuracy-margin``) while also within Y's budget, or as accurate and faster beyond the
timing's repeatability on Y (measured: the policies are timed in turns, ``--timings`` rounds, and the median of
highest / lowest reading counts, at least 3%). Each write is pooled with the earlier writes of the same policies on the
same CPU (``targets.json`` keeps every write's readings): a cell is the median of its writes' ratios, and the spread
between writes (run to run: the shared machine drifts over hours) counts when larger than the spread within one.
Also per target: the latency predictor's error (MAPE of the predicted ratio) on the search's own measured episodes,
and with ``--predictor-policies N`` on N random policies of each model of the plan (channels rounded as the searches
round them, calibrated on 12 others, as ``bench.hardware``), next to the timing's own repeatability on the same
policies (each timed twice); ``--only predictor`` runs that part alone.

Writes ``bench/results/targets.json``, ``bench/results/targets-<model>-b<budget>.png`` and the
``targets`` section of ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import environment, write_section
from bench.search import run as search_bench

RESULTS = Path(__file__).parent / "results" / "targets.json"
TARGETS = ("local-cpu", "openvino-cpu", "local-cpu-2t")
# Budgets inside every target's feasible range (AMD EPYC, 2026-12-04): ResNet-56's floor is 26% on local-cpu, 25% on
# openvino-cpu and 47% on local-cpu-2t; VGG-11's is 1.3-1.8% everywhere, and int8 at full width 17-20%.
PLAN = "resnet56:0.5;vgg11_bn:0.1"
REPEATABILITY = search_bench.TOLERANCE - 1  # the measurement's repeatability (3%), as the search benchmark counts it


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.targets", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--plan",
        default=PLAN,
        help=f"model:budget[;model:budget], each budget above every target's floor (see --only ranges; default: {PLAN})",
    )
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated targets (default: {','.join(TARGETS)})")
    p.add_argument("--method", default="sac", help="the search method of every run (default: sac)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=80, help="episodes per search (default: 80, as bench.search)")
    p.add_argument("--round-to", type=int, default=16)
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--timings", type=int, default=3, help="uncached readings per policy and target; the lowest ratio counts")
    p.add_argument("--accuracy-margin", type=float, default=0.003, help="accuracy difference that counts (fraction; default 0.003)")
    p.add_argument("--predictor-policies", type=int, default=0, help="random policies of each model for each target's predictor MAPE")
    p.add_argument(
        "--only",
        choices=("ranges", "search", "write", "predictor"),
        default=None,
        help="one phase only; ranges: each model's feasible range on each target (its uniform extremes timed; no search); "
        "predictor: only the --predictor-policies MAPEs (the matrix as last written)",
    )
    args = p.parse_args(argv)
    from hardware.targets import TargetError, get_target

    for name in args.targets.split(","):
        try:
            get_target(name)
        except TargetError as error:
            p.error(f"--targets: {error}")
    if args.only == "predictor" and args.predictor_policies < 1:
        p.error("--only predictor: give --predictor-policies N (N >= 1), the random policies per model and target")
    for part in args.plan.split(";"):
        try:
            plan(part)
        except ValueError:
            p.error(f"--plan: {part!r} is not model:budget with a budget in (0, 1), e.g. resnet56:0.4")
    return args


def plan(text: str) -> list[tuple[str, float]]:
    """``model:budget[;model:budget]`` as (model, budget) pairs; ValueError for a budget outside (0, 1)."""
    out = []
    for part in text.split(";"):
        model, _, budget = part.partition(":")
        if not 0 < float(budget) < 1:
            raise ValueError(f"budget {budget} outside (0, 1)")
        out.append((model, float(budget)))
    return out


def runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One bench.search run per model, budget and target."""
    return [
        {"model": model, "budget": budget, "seed": args.seed, "method": args.method, "round_to": args.round_to}
        | {"wall_mode": "paced", "target": target}
        for model, budget in plan(args.plan)
        for target in args.targets.split(",")
    ]


def models(args: argparse.Namespace) -> list[str]:
    return list(dict.fromkeys(model for model, _ in plan(args.plan)))


def feasible_ranges(args: argparse.Namespace) -> dict[str, Any]:
    """Each model's uniform extremes timed on each target (``corner_costs``: uncached, 3 readings each, the least
    disturbed counts): the floor below which a budget is refused there. Kept in ``targets.json`` under ``feasible``,
    and said against the plan's budgets: a common budget must lie above every target's floor."""
    from envs import JointEnv
    from envs.jsonio import write_atomic

    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    found = old.get("feasible", {})
    budgets: dict[str, list[float]] = {}
    for model, budget in plan(args.plan):
        budgets.setdefault(model, []).append(budget)
    for model in models(args):
        checkpoint = search_bench.base_checkpoint(model)
        for target in args.targets.split(","):
            started = time.time()
            config = {"model": model, "base_epochs": 5, "checkpoint": checkpoint, "target": target, "round_to": args.round_to}
            env = JointEnv(config | {"target_ratio": max(budgets[model])})
            costs = env.corner_costs()
            which = min(costs, key=costs.get)
            ran = environment()
            found.setdefault(model, {})[target] = {
                "floor": costs[which],
                "extreme": which,
                "corners": costs,
                "cpu": ran["cpu"],
                "date": ran["date"],
            }
            inside = ", ".join(f"{b:.0%} {'inside' if b > costs[which] else 'BELOW THE FLOOR'}" for b in budgets[model])
            corners = ", ".join(f"{name} {ratio:.3f}" for name, ratio in costs.items())
            print(
                f"{model} on {target}: floor {costs[which]:.1%} ({which}; {corners}); {inside} ({time.time() - started:.0f} s)", flush=True
            )
            write_atomic(RESULTS, json.dumps(old | {"feasible": found}, indent=1) + "\n")
    return found


def search_all(args: argparse.Namespace) -> dict[str, str]:
    """Run (or resume, or skip when archived) every search; a target whose search fails is reported, not fatal."""
    failed = {}
    for run in runs(args):
        try:
            search_bench.search(run, args.episodes)
        except subprocess.CalledProcessError as error:
            failed[search_bench.run_name(run)] = f"galen search exited {error.returncode}"
            print(f"{search_bench.run_name(run)}: search failed ({failed[search_bench.run_name(run)]}); see its log above", flush=True)
    return failed


def best_policy(run: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The run's best within-budget episode of its own agent, and its metrics (bench.search's)."""
    loaded = search_bench.load(run)
    if loaded is None:
        return None, {}
    _, records = loaded
    metrics = search_bench.run_metrics(run["method"], records)
    return metrics.pop("best"), metrics


def measure_cell(
    model: str, budget: float, records: dict[str, dict[str, Any]], targets: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Every row's policy on every target: per target, ``args.timings`` rounds in which each policy is timed once in turn
    (uncached, against the uncompressed model on that target), so that the policies compared on a target are timed in
    the same stretch of the shared machine; per policy and target the lowest ratio counts, and all readings are kept."""
    from compression.pipeline import compress
    from compression.policy import CompressionPolicy
    from envs import JointEnv
    from hardware.client import LatencyClient, lowest_ratio
    from hardware.targets import get_target

    env = JointEnv({"model": model, "base_epochs": 5, "target_ratio": budget, "round_to": args.round_to})
    ctx = env.ctx
    artifacts = {
        x: compress(
            ctx.model,
            CompressionPolicy.from_dict(r["policy"]),
            ctx.example,
            ctx.calibration,
            structure=ctx.structure,
            round_to=args.round_to,
        )
        for x, r in records.items()
    }
    out: dict[str, dict[str, Any]] = {x: {} for x in records}
    for name in targets:
        client = LatencyClient(get_target(name), cache=None)
        readings: dict[str, list] = {x: [] for x in records}
        errors: dict[str, str] = {}
        for _ in range(args.timings):
            for x, built in artifacts.items():
                if x in errors:
                    continue
                try:
                    readings[x].append(client.measure(built.artifact.data, ctx.reference))
                except Exception as error:  # noqa: BLE001 - e.g. a runtime that runs a layer in another precision: said, not fatal
                    errors[x] = f"{type(error).__name__}: {error}"
        for x in records:
            if x in errors:
                out[x][name] = {"latency_ratio": float("nan"), "error": errors[x]}
                continue
            best = lowest_ratio(readings[x])
            out[x][name] = {
                "latency_ratio": best.ratio,
                "ms": best.candidate.median_ms,
                "reference_ms": best.reference.median_ms,
                "readings": [m.ratio for m in readings[x]],
            }
    return out


def spread(cell: dict[str, Any], target: str) -> float:
    """The timing's repeatability on ``target`` in this cell: the larger of the within-write one (the median over its
    policies of highest / lowest reading - 1 in one write) and the run-to-run one (the median over its policies timed in
    two or more writes of highest / lowest of the writes' counted ratios - 1); at least ``REPEATABILITY``. Differences of
    latency within it do not count."""
    return tolerance_of(repeatability(cell, target))


def tolerance_of(spreads: dict[str, float]) -> float:
    """``spread``'s rule on spreads already computed (``repeatability``): the larger one, at least ``REPEATABILITY``."""
    return max(REPEATABILITY, *spreads.values())


def repeatability(cell: dict[str, Any], target: str) -> dict[str, float]:
    """``within_write`` and ``run_to_run`` (each 0 where not measurable) of ``target``'s timings in this cell."""
    within, between = [], []
    for row in cell["rows"].values():
        on = row.get("on", {}).get(target, {})
        writes = on.get("writes") or ([{"readings": on["readings"]}] if on.get("readings") else [])
        within += [max(w["readings"]) / min(w["readings"]) - 1 for w in writes if len(w["readings"]) > 1]
        if len(writes) > 1:
            lowest = [w["lowest"] for w in writes]
            between.append(max(lowest) / min(lowest) - 1)
    return {
        "within_write": float(np.median(within)) if within else 0.0,
        "run_to_run": float(np.median(between)) if between else 0.0,
    }


def pooled(new: dict[str, Any], old: dict[str, Any] | None, at: str, old_at: str) -> dict[str, Any]:
    """One policy's timing on one target, pooled with an earlier write's of the same policy (``old``; None: none): each
    write keeps its readings and its counted (lowest) ratio; the cell's ratio is the median of the writes' ratios and
    ``readings`` all of them. Writes hours apart see what one write cannot: the shared machine's slow drift."""
    if "readings" not in new:  # not measured (an error): nothing to pool
        return new
    earlier = []
    if old and old.get("readings"):
        earlier = old.get("writes") or [{"at": old_at, "lowest": old["latency_ratio"], "readings": old["readings"]}]
    writes = [*earlier, {"at": at, "lowest": new["latency_ratio"], "readings": new["readings"]}]
    return new | {
        "latency_ratio": float(np.median([w["lowest"] for w in writes])),
        "readings": [r for w in writes for r in w["readings"]],
        "writes": writes,
    }


def verdicts(cell: dict[str, Any], targets: list[str], budget: float, margin: float) -> dict[str, Any]:
    """Per target Y: does Y's own policy beat the other targets' policies on Y?"""
    rows = cell["rows"]
    out = {}
    for y in targets:
        own = rows.get(y)
        if own is None or "on" not in own:
            out[y] = {"holds": None, "why": (own or {}).get("why") or "no policy searched for this target"}
            continue
        spreads = repeatability(cell, y)
        tolerance = tolerance_of(spreads)
        limit = budget * (1 + tolerance)
        own_ratio, own_acc = own["on"][y]["latency_ratio"], own["accuracy_after_finetune"]
        if own_ratio != own_ratio:  # NaN: not measured there
            out[y] = {"holds": None, "why": f"its own policy could not be measured on it ({own['on'][y].get('error')})"}
            continue
        pairs = {}
        for x, other in rows.items():
            if x == y or "on" not in other:
                continue
            ratio, acc = other["on"][y]["latency_ratio"], other["accuracy_after_finetune"]
            if ratio != ratio:
                pairs[x] = f"not measured on {y} ({other['on'][y].get('error')})"
            elif ratio > limit:
                pairs[x] = f"over budget on {y} ({ratio:.3f} > {budget:.2f})"
            elif acc > own_acc + margin:
                pairs[x] = f"more accurate within budget ({100 * acc:.2f}% vs {100 * own_acc:.2f}%): beats the own policy"
            elif acc >= own_acc - margin and ratio < own_ratio * (1 - tolerance):
                pairs[x] = f"as accurate and faster ({ratio:.3f} vs {own_ratio:.3f}): beats the own policy"
            elif acc < own_acc - margin:
                pairs[x] = f"less accurate ({100 * acc:.2f}% vs {100 * own_acc:.2f}%)"
            else:
                pairs[x] = f"a tie (accuracy within {100 * margin:.1f} points, latency {ratio:.3f} vs {own_ratio:.3f})"
        beaten = any("beats the own policy" in v for v in pairs.values())
        specific = any(v.startswith(("over budget", "less accurate")) for v in pairs.values())
        within = own_ratio <= limit
        holds = within and not beaten and specific
        out[y] = {"holds": holds, "own_within_budget": within, "against": pairs, "repeatability": tolerance}
        out[y] |= {f"repeatability_{k}": v for k, v in spreads.items()}
        if not within:
            out[y]["why"] = f"its own policy re-measured over the budget there ({own_ratio:.3f} > {budget:.2f})"
    return out


def predictor_mapes(model: str, targets: list[str], n: int, seed: int, round_to: int) -> dict[str, Any]:
    """Each target's predictor on ``n`` random policies of ``model`` (random weights, channels rounded as the searches
    round them; calibrated on 12 others, as ``bench.hardware``), and the timing's own repeatability on the same policies
    (each measured twice). The per-layer table comes from the latency cache the searches filled (the policies themselves
    are new artifacts: timed afresh)."""
    from bench.hardware import predictor_error
    from hardware.client import LatencyClient
    from hardware.targets import get_target

    out = {}
    for name in targets:
        client = LatencyClient(get_target(name))
        started = time.time()
        try:
            result = predictor_error(model, client, 12, n, seed, repeat=True, round_to=round_to)
        except Exception as error:  # noqa: BLE001 - one target's failure (a runtime's precision check) is a result too
            out[name] = {"error": f"{type(error).__name__}: {error}"}
            print(f"predictor {model} on {name}: failed: {out[name]['error']}", flush=True)
            continue
        keys = ("evaluated", "round_to", "mape_ms", "mape_ratio", "mape_uncalibrated_sum", "mape_repeat", "calibration")
        out[name] = {k: result[k] for k in keys} | {"seconds": time.time() - started, "table_timed": result["table_timed"]}
        print(
            f"predictor {model} on {name}: MAPE ratio {result['mape_ratio']:.1f}% on {n} policies, "
            f"the timing's own {result['mape_repeat']:.1f}% ({time.time() - started:.0f} s)",
            flush=True,
        )
    return out


def _why_not(run: dict[str, Any]) -> str:
    """Why a target has no policy: its search refused the budget (below its feasible range), or nothing was archived."""
    state_path = search_bench.ROOT / "runs" / search_bench.run_name(run) / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    floor = (state.get("feasible_range") or [None])[0]
    if floor is not None and run["budget"] < floor:
        which = state.get("feasible_extreme", "its cheapest uniform policy")
        return f"the budget is below this target's floor: {100 * floor:.1f}% ({which}); no search"
    return "no archived search, or no episode within budget"


def _predictor_by_model(old: dict[str, Any]) -> dict[str, Any]:
    """``predictor`` as model -> target -> result (the first run's layout was target -> result, on ResNet-20)."""
    if old and all("evaluated" in v or "error" in v for v in old.values()):
        return {"resnet20": old}
    return dict(old)


def write(args: argparse.Namespace, failed: dict[str, str]) -> dict[str, Any]:
    from envs.jsonio import dumps, write_atomic

    targets = args.targets.split(",")
    final_path = search_bench.ROOT / "data" / "final.json"
    cache = json.loads(final_path.read_text()) if final_path.exists() else {}
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    out: dict[str, Any] = {"environment": environment(), "targets": targets, "cells": {}, "failed_searches": failed}
    if args.only == "predictor":
        out |= {"environment": old.get("environment", out["environment"]), "failed_searches": old.get("failed_searches", {})}
    for key, cell in old.get("cells", {}).items():  # the cells of earlier plans stay (each with the machine and date it ran)
        out["cells"][key] = {"environment": old.get("environment", {})} | cell
    out["feasible"] = old.get("feasible", {})
    out["predictor"] = _predictor_by_model(old.get("predictor", {}))
    if args.predictor_policies:
        for model in models(args):
            out["predictor"][model] = predictor_mapes(model, targets, args.predictor_policies, args.seed, args.round_to)
            write_atomic(RESULTS, json.dumps(old | {"predictor": out["predictor"]}, indent=1) + "\n")  # kept if a later step fails
    cells = [] if args.only == "predictor" else plan(args.plan)  # --only predictor: the matrix stays as last written
    for model, budget in cells:
        cell: dict[str, Any] = {"model": model, "budget": budget, "method": args.method, "episodes": args.episodes, "seed": args.seed}
        cell |= {"environment": environment(), "rows": {}}
        for run in runs(args):
            if run["model"] != model or run["budget"] != budget:
                continue
            best, metrics = best_policy(run)
            row: dict[str, Any] = {"run": search_bench.run_name(run), "within_budget_rate": metrics.get("within_budget_rate")}
            row["predictor_mape_episodes"] = metrics.get("predictor_mape")
            if best is None:
                row["why"] = failed.get(row["run"]) or _why_not(run)
                cell["rows"][run["target"]] = row
                continue
            final = search_bench.final_measure(model, budget, best, args.finetune_steps, cache, args.round_to)
            write_atomic(final_path, dumps(cache, indent=1))
            row.update(
                policy=best["policy"],
                accuracy=best["accuracy"],
                latency_ratio_searched=best["latency_ratio"],
                accuracy_after_finetune=final["test_after_finetune"],
            )
            cell["rows"][run["target"]] = row
        measured = {x: row for x, row in cell["rows"].items() if "policy" in row}
        key = f"{model}:{budget:.2f}"
        earlier = old.get("cells", {}).get(key, {})
        ran_on = {k: earlier.get("environment", {}).get(k) for k in ("cpu", "cpu_id")}
        if ran_on["cpu"] != cell["environment"]["cpu"] or ran_on["cpu_id"] not in (None, cell["environment"]["cpu_id"]):
            earlier = {}  # another machine's timings are not pooled: ratios differ between CPUs (also two of one name)
        old_at = earlier.get("written_at") or earlier.get("environment", {}).get("date", "?")
        cell["written_at"] = time.strftime("%Y-%m-%d %H:%M")
        for x, on in (measure_cell(model, budget, measured, targets, args) if measured else {}).items():
            before = earlier.get("rows", {}).get(x, {})
            same = before.get("policy") == cell["rows"][x]["policy"]  # a policy searched again starts its writes afresh
            on = {y: pooled(v, before.get("on", {}).get(y) if same else None, cell["written_at"], old_at) for y, v in on.items()}
            cell["rows"][x]["on"] = on
            print(f"{cell['rows'][x]['run']}: " + ", ".join(f"{y} {v['latency_ratio']:.3f}" for y, v in on.items()), flush=True)
        cell["verdicts"] = verdicts(cell, targets, budget, args.accuracy_margin)
        out["cells"][key] = cell
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(RESULTS, json.dumps(out, indent=1) + "\n")
    plots = [plot(cell, targets) for cell in out["cells"].values() if any("on" in r for r in cell["rows"].values())]
    write_section("targets", readme_lines(out, plots, args))
    return out


def plot(cell: dict[str, Any], targets: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.8), sharey=True, squeeze=False)
    for ax, y in zip(axes[0], targets, strict=True):
        for index, (x, row) in enumerate(cell["rows"].items()):
            if "on" not in row:
                continue
            on = row["on"][y]
            point = (on["latency_ratio"], 100 * row["accuracy_after_finetune"])
            if len(on.get("readings", [])) > 1:  # the readings' range: the timing's repeatability on this target
                ax.hlines(point[1], min(on["readings"]), max(on["readings"]), color=f"C{index}", lw=1, alpha=0.6)
            ax.scatter(*point, s=120 if x == y else 50, marker="*" if x == y else "o", color=f"C{index}", label=f"searched for {x}")
        ax.axvline(cell["budget"], color="k", ls="--", lw=1, label="budget")
        ax.set_title(f"measured on {y}")
        ax.set_xlabel("latency ratio here (line: all readings)")
    axes[0][0].set_ylabel("test accuracy after fine-tune (%)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{cell['model']} at {cell['budget']:.0%}: each target's best policy on every target")
    fig.tight_layout()
    path = RESULTS.parent / f"targets-{cell['model']}-b{round(100 * cell['budget'])}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def readme_lines(out: dict[str, Any], plots: list[str], args: argparse.Namespace) -> list[str]:
    lines = [
        "## Is a policy specific to its target? (issue 23)",
        "",
        "`python -m bench.targets`: per model and budget, one search per target (the budget a ratio to the uncompressed model "
        "on that target). Rows: the best within-budget policy searched for a target; columns: its latency ratio re-measured "
        f"on each target (lowest of {args.timings} uncached readings in a write; the median over writes); accuracy after the "
        f"fixed {args.finetune_steps}-step fine-tune. Raw data: `bench/results/targets.json`.",
        "",
    ]
    for cell in out["cells"].values():
        ran = cell.get("environment", {})
        how = f"{cell.get('method', args.method)}, {cell.get('episodes', args.episodes)} episodes per target, seed {cell.get('seed', 0)}"
        lines += [f"**{cell['model']} at {cell['budget']:.0%}** ({how}; {ran.get('cpu', '?')}, {ran.get('date', '?')})", ""]
        times = sorted({w["at"] for row in cell["rows"].values() for on in row.get("on", {}).values() for w in on.get("writes", [])})
        if len(times) > 1:
            lines += [
                f"Timed in {len(times)} writes ({', '.join(times)}); a cell is the median of its writes' ratios (a policy searched "
                "again since an earlier write has only the writes after it).",
                "",
            ]
        lines.append("| searched for | val. acc. | after fine-tune | " + " | ".join(f"on {t}" for t in out["targets"]) + " |")
        lines.append("|---|---|---|" + "---|" * len(out["targets"]))
        for x, row in cell["rows"].items():
            if "on" not in row:
                lines.append(f"| {x} | {row.get('why', '')} | |" + " |" * len(out["targets"]))
                continue
            ratios = " | ".join(
                (f"**{row['on'][y]['latency_ratio']:.3f}**" if y == x else f"{row['on'][y]['latency_ratio']:.3f}") for y in out["targets"]
            )
            lines.append(f"| {x} | {100 * row['accuracy']:.2f}% | {100 * row['accuracy_after_finetune']:.2f}% | {ratios} |")
        lines.append("")
        for y, v in cell["verdicts"].items():
            if v["holds"] is None:
                lines.append(f"- on {y}: {v['why']}")
                continue
            word = "holds" if v["holds"] else "does not hold"
            reason = f" ({v['why']})" if v.get("why") else ""
            tolerance = ""
            if "repeatability" in v:
                parts = [f"{100 * v['repeatability']:.0f}%"]
                if "repeatability_within_write" in v:
                    parts.append(f"within a write {100 * v['repeatability_within_write']:.0f}%")
                if v.get("repeatability_run_to_run"):
                    parts.append(f"between writes {100 * v['repeatability_run_to_run']:.0f}%")
                tolerance = f" (the timing's repeatability there: {', '.join(parts)})"
            against = "; ".join(f"{x}'s policy: {why}" for x, why in v["against"].items())
            lines.append(f"- on {y}: the claim {word}{reason}{tolerance}; {against}")
        lines.append("")
    if out.get("feasible"):
        lines.append("Feasible range per target (the cheapest uniform extreme, timed uncached; a budget below it is refused there):")
        lines.append("")
        for model, per_target in out["feasible"].items():
            floors = "; ".join(f"{t} {100 * f['floor']:.1f}% ({f['extreme']})" for t, f in per_target.items())
            lines.append(f"- {model}: {floors}")
        lines.append("")
    if out.get("predictor"):
        lines.append(
            "Latency predictor per target (random policies of each model, calibrated on 12 measured ones; MAPE of the predicted "
            "ratio, and the timing's own: the same policies measured twice, the MAPE of one reading against the other):"
        )
        lines.append("")
        for model, per_target in out["predictor"].items():
            for t, p in per_target.items():
                if "error" in p:
                    lines.append(f"- {model} on {t}: failed ({p['error']})")
                    continue
                own = "" if p.get("mape_repeat") is None else f", the timing's own {p['mape_repeat']:.1f}%"
                rounded = f" (channels in multiples of {p.get('round_to', 8)})"
                lines.append(f"- {model} on {t}: {p['mape_ratio']:.1f}% on {p['evaluated']} random policies{rounded}{own}")
        lines.append("")
    lines += [f"![{p}](results/{p})" for p in plots]
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    failed: dict[str, str] = {}
    started = time.time()
    if args.only == "ranges":
        feasible_ranges(args)
        return None
    if args.only in (None, "search"):
        failed = search_all(args)
        print(f"searches done in {(time.time() - started) / 60:.1f} min", flush=True)
    if args.only in (None, "write", "predictor"):
        return write(args, failed)
    return None


if __name__ == "__main__":
    main()
