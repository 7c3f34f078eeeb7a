"""``RESULTS.md`` and the plots of the Galen benchmark, from ``results.json`` and the run directories."""

from __future__ import annotations

import math
import platform
import statistics
from datetime import date
from pathlib import Path
from typing import Any

from agents.recorder import read_episodes
from bench.galen.archive import cpu_name
from bench.galen.plan import METHODS, budget_tag
from experiments import analysis

LABELS = {
    "sac-joint": "SAC, joint (pruning + int8)",
    "sac-prune": "SAC, pruning only",
    "sac-quant": "SAC, quantization only",
    "ppo-joint": "PPO, joint",
    "uniform": "uniform policies (grid)",
    "random": "random search",
    "tpe": "Optuna TPE (Ray Tune)",
}


def _pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.{digits}f}"


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def _seeds(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [row[k] for k in sorted(row, key=int)]


def method_table(results: dict[str, Any], budget: float) -> list[str]:
    tag = budget_tag(budget)
    lines = [
        "| method | seeds (finished) | episodes | within budget | best val. acc. within budget, % (mean ± sd) | per seed | "
        "re-measured latency, % of baseline | floor, % of baseline | lowest cost reached, % (its acc.) | test acc. before → after "
        "fine-tune, % | episodes / wall to 95% | cache hits |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        row = results["rows"].get(f"{tag}/{method}")
        if not row:
            continue
        seeds = _seeds(row)
        finished = sum(s["status"] == "finished" for s in seeds)
        bests = [s["best"]["accuracy"] for s in seeds if s["best"]]
        per_seed = ", ".join(_pct(s["best"]["accuracy"]) if s["best"] else "none" for s in seeds)
        remeasured = [s["remeasured"] for s in seeds if s.get("remeasured")]
        ratio = ", ".join(f"{100 * m['ratio']:.1f}" for m in remeasured) or "—"
        floor = ", ".join(f"{100 * m['floor_ratio']:.1f}" for m in remeasured) or "—"
        lows = [s["lowest_cost"] for s in seeds if s["lowest_cost"]]
        low = min(lows, key=lambda r: r["cost_ratio"]) if lows else None
        low_text = f"{_pct(low['cost_ratio'])} ({_pct(low['accuracy'])})" if low else "—"
        ft = next((s["finetuned"] for s in seeds if s.get("finetuned")), None)
        ft_text = f"{_pct(ft['test_before'], 2)} → {_pct(ft['test_after'], 2)}" if ft else "—"
        reach = [(s["reach_episodes"], s["reach_seconds"]) for s in seeds if s["reach_episodes"]]
        reach_text = ", ".join(f"{e} / {sec / 60:.0f} min" for e, sec in reach) or "—"
        hits = [s["cache_hit_rate"] for s in seeds if s["cache_hit_rate"] is not None]
        lines.append(
            f"| {LABELS[method]} | {len(seeds)} ({finished}) | {', '.join(str(s['episodes']) for s in seeds)} | "
            f"{', '.join(str(s['within']) for s in seeds)} | {_mean_sd(bests)} | {per_seed} | {ratio} | {floor} | {low_text} | "
            f"{ft_text} | {reach_text} | {_pct(statistics.mean(hits), 0) + '%' if hits else '—'} |"
        )
    return lines


def _runs_by_method(out: Path, results: dict[str, Any], budget: float) -> dict[str, list[list[dict[str, Any]]]]:
    by: dict[str, list[list[dict[str, Any]]]] = {}
    for label in results["config"]["runs"]:
        method, budget_part, _ = label.split("/")
        if budget_part not in (budget_tag(budget), "shared"):
            continue
        path = out / "runs" / label  # Run.run_dir
        if path.exists():
            by.setdefault(method, []).append(analysis.searched(read_episodes(path), results["config"]["episodes"]))
    return by


def plots(out: Path, results: dict[str, Any]) -> list[tuple[float, str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    (out / "plots").mkdir(exist_ok=True)
    for budget in results["config"]["budgets"]:
        by = _runs_by_method(out, results, budget)
        if not by:
            continue
        tag = budget_tag(budget)
        cols = min(4, len(by))
        rows = math.ceil(len(by) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), sharex=True, sharey=True, squeeze=False)
        for ax, (method, runs) in zip(axes.flat, by.items(), strict=False):
            episodes = [r for run in runs for r in run]
            ax.scatter(
                [r["cost_ratio"] for r in episodes], [r["accuracy"] for r in episodes], s=5, alpha=0.35, color="C0", label="episodes"
            )
            for i, run in enumerate(runs):
                front = analysis.pareto(run)
                ax.step(
                    [r["cost_ratio"] for r in front],
                    [r["accuracy"] for r in front],
                    where="post",
                    lw=1.2,
                    color=f"C{i + 1}",
                    label=f"Pareto, seed {i}",
                )
            ax.axvline(budget, color="red", ls="--", lw=1, label=f"budget {100 * budget:.0f}%")
            ax.set_title(LABELS[method], fontsize=9)
            ax.grid(alpha=0.3)
        for ax in axes.flat[len(by) :]:
            ax.axis("off")
        for ax in axes[-1]:
            ax.set_xlabel("latency, fraction of uncompressed")
        for ax in axes[:, 0]:
            ax.set_ylabel("validation accuracy")
        # one legend for every panel: the first panel may lack some seeds (the uniform grid runs one)
        entries = {label: handle for ax in axes.flat for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)}
        axes.flat[0].legend(entries.values(), entries.keys(), fontsize=6)
        fig.suptitle(f"Every episode per method, budget {100 * budget:.0f}% (reward scored against it)")
        fig.tight_layout()
        scatter = f"plots/episodes_{tag}.png"
        fig.savefig(out / scatter, dpi=110)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(7, 4))
        for method, runs in by.items():
            curves = [analysis.best_so_far(run, budget) for run in runs if run]
            length = min(len(c) for c in curves) if curves else 0
            if not length:
                continue
            mean = [_nanmean([c[i] for c in curves]) for i in range(length)]
            (line,) = ax.plot(range(1, length + 1), mean, label=LABELS[method])
            if len(curves) > 1:  # each seed thin, so a dip of the mean (a seed joining lower) reads as such
                for c in curves:
                    ax.plot(range(1, length + 1), c[:length], color=line.get_color(), alpha=0.3, linewidth=0.8)
        ax.set_xlabel("episode")
        ax.set_ylabel("best val. accuracy within budget")
        ax.set_title(f"Best so far, budget {100 * budget:.0f}%: mean over the seeds within it so far (thin: each seed)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        progress = f"plots/best_so_far_{tag}.png"
        fig.savefig(out / progress, dpi=110)
        plt.close(fig)
        written.append((budget, scatter, progress))
    return written


def _nanmean(values: list[float]) -> float:
    ok = [v for v in values if not math.isnan(v)]
    return statistics.mean(ok) if ok else math.nan


def _best(results: dict[str, Any], budget: float, method: str) -> list[float]:
    row = results["rows"].get(f"{budget_tag(budget)}/{method}", {})
    return [s["best"]["accuracy"] for s in _seeds(row) if s["best"] and s["status"] == "finished"] if row else []


def _lowest(results: dict[str, Any], budget: float, method: str) -> float | None:
    row = results["rows"].get(f"{budget_tag(budget)}/{method}", {})
    lows = [s["lowest_cost"]["cost_ratio"] for s in _seeds(row) if s["lowest_cost"]] if row else []
    return min(lows) if lows else None


def _lowest_any(results: dict[str, Any], budget: float) -> float | None:
    """The lowest cost any method's search for ``budget`` reached."""
    return min((v for m in METHODS if (v := _lowest(results, budget, m)) is not None), default=None)


def _finished(results: dict[str, Any], budget: float, method: str) -> bool:
    return any(s["status"] == "finished" for s in _seeds(results["rows"].get(f"{budget_tag(budget)}/{method}", {})))


def _joint_vs_single_unmet(results: dict[str, Any], budget: float, single: dict[str, list[float]]) -> str:
    """Galen's joint-vs-single finding where the joint agent did not meet the budget: who did, else who came closest."""
    head = f"- **Joint vs single** (Galen's finding), budget {100 * budget:.0f}%: "
    lows = {m: _lowest(results, budget, m) for m in ("sac-joint", "sac-prune", "sac-quant") if _finished(results, budget, m)}
    reached = ", ".join(f"{LABELS[m]} {_pct(v)}%" for m, v in lows.items() if v is not None)
    met = [LABELS[m] for m, v in single.items() if v]
    if met:
        return (
            f"{head}the joint SAC agent never met it while {' and '.join(met)} did, so joint is **worse** here, the opposite of "
            f"Galen's finding (lowest latency reached: {reached})."
        )
    return f"{head}none of the SAC agents met it; the lowest latency each reached (lower is closer): {reached}."


def _compare(a: list[float], b: list[float]) -> str:
    """'better' / 'equal' / 'worse' for a against b: a difference larger than the seeds' spread, or 1 point without seeds."""
    if not a or not b:
        return "not measured"
    diff = statistics.mean(a) - statistics.mean(b)
    spreads = [statistics.stdev(x) for x in (a, b) if len(x) > 1]
    spread = max(spreads or [0.01])
    basis = f"seeds' spread {100 * spread:.1f}" if spreads else "one seed each: threshold 1 point"
    if abs(diff) <= max(spread, 0.005):
        return f"equal (difference {100 * diff:+.1f} points; {basis})"
    return f"{'better' if diff > 0 else 'worse'} ({100 * diff:+.1f} points; {basis})"


def _finetuned(results: dict[str, Any], budget: float, method: str) -> float | None:
    row = results["rows"].get(f"{budget_tag(budget)}/{method}", {})
    after = [s["finetuned"]["test_after"] for s in _seeds(row) if s.get("finetuned")] if row else []
    return after[0] if after else None


def _reading(results: dict[str, Any], budget: float) -> str | None:
    """What the best uniform policy is, in MACs and precision, and how it compares after the fixed fine-tune."""
    row = results["rows"].get(f"{budget_tag(budget)}/uniform", {})
    seeds = [s for s in _seeds(row) if s.get("best") and s.get("remeasured")] if row else []
    if not seeds:
        return None
    m = seeds[0]["remeasured"]
    macs = m["macs_fp32"] + m["macs_int8"]
    share = m["macs_int8"] / macs if macs else 0.0
    ratio = seeds[0]["best"].get("macs_ratio")
    kept = f"{100 * ratio:.0f}% of the MACs ({macs / 1e6:.1f} M)" if ratio is not None else f"{macs / 1e6:.1f} M MACs"
    after = {LABELS[k]: v for k in METHODS if (v := _finetuned(results, budget, k)) is not None}
    tuned = "; ".join(f"{name} {100 * v:.2f}%" for name, v in after.items())
    return (
        f"- Reading, budget {100 * budget:.0f}%: the best uniform policy keeps {kept} with {100 * share:.0f}% of them in int8 and "
        f"measures {100 * m['ratio']:.1f}% of the uncompressed latency. Per-layer searches mix precisions and widths; on this CPU a "
        "mixed network pays for the conversions between int8 and fp32 layers and for per-operator overhead, so halving the latency "
        "by pruning alone cuts most channels, which costs accuracy before fine-tuning. After the same fixed fine-tune (test "
        f"accuracy): {tuned}."
    )


def discussion(results: dict[str, Any]) -> list[str]:
    base_acc = results["reference"]["val_accuracy"] if results.get("reference") else None
    lines = ["## Comparison with Galen and AMC", ""]
    galen = 0.2 if 0.2 in results["config"]["budgets"] else results["config"]["budgets"][0]
    joint = _best(results, galen, "sac-joint")
    lowest = _lowest_any(results, galen)
    if joint and base_acc is not None:
        loss = base_acc - statistics.mean(joint)
        lines.append(
            f"- **Galen** (ResNet-18, CIFAR-10, ARM CPU): 20% of the latency without significant accuracy loss. Here, at a "
            f"{100 * galen:.0f}% budget, the joint SAC agent's best policy loses {100 * loss:.1f} points of validation accuracy before "
            f"fine-tuning (base {100 * base_acc:.1f}%). {'Equal to Galen.' if loss <= 0.01 else 'Worse than Galen.'}"
        )
    else:
        anywhere = min(((v, b) for b in results["config"]["budgets"] if (v := _lowest_any(results, b)) is not None), default=None)
        reach = (
            f"the lowest latency any method reached searching for it was {_pct(lowest)}% of the uncompressed model"
            if lowest is not None
            else ""
        )
        if reach and anywhere is not None and anywhere[0] < lowest:
            reach += f" ({_pct(anywhere[0])}% in a search for {100 * anywhere[1]:.0f}%)"
        floors = [
            s["remeasured"]["floor_ratio"]
            for m in METHODS
            for s in _seeds(results["rows"].get(f"{budget_tag(galen)}/{m}", {}))
            if s.get("remeasured")
        ]
        floor = f"{_pct(min(floors))}% for the cheapest re-measured policy" if floors else "far lower"
        lines.append(
            f"- **Galen** (ResNet-18, CIFAR-10, ARM CPU) reached 20% of the latency without significant accuracy loss. Here no "
            f"joint SAC policy met the {100 * galen:.0f}% budget{': ' + reach if reach else ''}. This platform is **worse** on this "
            "point, and the table's floor column says why: below roughly a third of the uncompressed latency the measured time is no "
            "longer arithmetic but per-operator overhead of ONNX Runtime on a 56-layer network of 16-64 channels (the arithmetic floor "
            f"is {floor}), and channels are kept in multiples of 8, so the 16-channel stage keeps "
            "at least half of its channels."
        )
    lines.append("")
    for budget in results["config"]["budgets"]:
        learned = {m: _best(results, budget, m) for m in ("sac-joint", "sac-prune", "sac-quant", "ppo-joint", "tpe")}
        uniform = _best(results, budget, "uniform")
        parts = [f"{LABELS[m]} {_compare(v, uniform)}" for m, v in learned.items() if v]
        if parts:
            lines.append(f"- **AMC's claim** (learned beats uniform at equal cost), budget {100 * budget:.0f}%: " + "; ".join(parts) + ".")
        joint, prune, quant = (_best(results, budget, m) for m in ("sac-joint", "sac-prune", "sac-quant"))
        if joint and (prune or quant):
            lines.append(
                f"- **Joint vs single** (Galen's finding), budget {100 * budget:.0f}%: joint vs pruning only: {_compare(joint, prune)}; "
                f"joint vs quantization only: {_compare(joint, quant)}."
            )
        elif joint and _finished(results, budget, "sac-prune") and _finished(results, budget, "sac-quant"):
            lines.append(
                f"- **Joint vs single** (Galen's finding), budget {100 * budget:.0f}%: only the joint SAC agent met it, so joint is "
                "**better** here, as Galen found."
            )
        elif not joint and any(_finished(results, budget, m) for m in ("sac-joint", "sac-prune", "sac-quant")):
            lines.append(_joint_vs_single_unmet(results, budget, {"sac-prune": prune, "sac-quant": quant}))
        if not parts and not joint:
            lines.append(f"- Budget {100 * budget:.0f}%: no learned or uniform policy met it, so the claims cannot be compared there.")
        if (reading := _reading(results, budget)) is not None:
            lines.append(reading)
    lines.append("")
    return lines


def write_results(out: Path, results: dict[str, Any]) -> Path:
    import onnxruntime
    import torch

    config = results["config"]
    base = results["base"]
    peak = results["peak"]
    ref = results.get("reference") or {}
    written = plots(out, results)
    lines = [
        "# Galen's experiment on this machine",
        "",
        f"Written by `python -m bench.galen` (`make bench-galen`) on {date.today().isoformat()}: "
        f"{platform.processor() or platform.machine()}, {cpu_name()}, "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}. Raw per-episode data: "
        "`data/episodes.jsonl.gz`; every number below: `results.json`.",
        "",
        "## Setup",
        "",
        f"- Workload: {config['model']} on Fashion-MNIST, trained by the platform ({base.get('epochs')} epochs): test accuracy "
        f"{_pct(base.get('test_acc'), 2)}% (stored model), {_pct(results.get('reference_test_accuracy'), 2)}% as the uncompressed "
        f"ONNX artifact; {_pct(ref.get('val_accuracy'), 2)}% on the {config['val_size']} validation images each episode scores.",
        "- Target `local-cpu`: ONNX Runtime, 1 thread, batch 1, latency measured (cache first) and compared with the uncompressed "
        "model interleaved in the same rounds.",
        f"- Budgets: {', '.join(f'{100 * b:.0f}%' for b in config['budgets'])} of the uncompressed latency; Galen's reward "
        "(R = accuracy − 5·|C/T − 1|).",
        f"- Every method: {config['episodes']} episodes per run, {config['seeds']} seeds (the uniform grid is deterministic: one run). "
        "The uniform grid and random search choose actions without the reward: their episodes are scored against every budget.",
        f"- Fixed fine-tune of each method's best policy (best of its seeds): {config['finetune_steps']} SGD steps of batch 128 "
        "with simulated quantization, lr 0.01, the same for every method; test accuracy on the 10,000 test images through "
        "ONNX Runtime.",
        "- ResNet-18 (3x3 stem), the seed paper's network, is **missing**: training it needs the GPU machine, and none was lent "
        "when this was written."
        if config["model"] != "resnet18"
        else "- ResNet-18 (3x3 stem): the seed paper's network.",
        "- Peak throughput of one core in ONNX Runtime (matrix multiply, one thread): "
        + "; ".join(f"{p.get('cpu', 'this CPU')}: {_peak_text(p)}" for p in results.get("peaks") or [peak])
        + "".join(
            f" ({p['cpu']} was first measured another way, at {_peak_text(p)}; its floors use the re-measured rates)"
            for p in results.get("superseded_peaks") or []
        )
        + ". The floor column: a model's MACs at its CPU's rates (arithmetic only, no memory traffic, no per-operator overhead), "
        "as % of the uncompressed model's measured latency." + _floor_check(results),
        *_machines(results),
        "- Committed with this file, so that a fresh checkout continues the benchmark instead of redoing it: the base model "
        f"(`data/base/`{', weights sha256 ' + base['sha256'][:16] + '…' if base.get('sha256') else ''}), every finished run "
        "(`data/archive/`, its episodes and per-layer policies) and the final measurements (`data/final.json`)."
        + (
            f" {len(results['without_policies'])} runs that finished before archiving existed are archived from their exported "
            "episodes, without the per-layer policies; their re-measurements and fine-tunes are kept in `data/final.json`."
            + _earlier_base(results)
            if results.get("without_policies")
            else ""
        ),
        "",
    ]
    if results["unfinished"]:
        lines += [
            f"**Incomplete:** {len(results['unfinished'])} of {len(config['runs'])} runs have not finished yet "
            f"({', '.join(results['unfinished'][:12])}{' ...' if len(results['unfinished']) > 12 else ''}). "
            "Run the same command again to continue them; the tables count what exists.",
            "",
        ]
    for budget in config["budgets"]:
        lines += [f"## Budget {100 * budget:.0f}%", "", *method_table(results, budget), ""]
        for b, scatter, progress in written:
            if b == budget:
                lines += [f"![episodes, budget {100 * b:.0f}%]({scatter})", "", f"![best so far, budget {100 * b:.0f}%]({progress})", ""]
    lines += [
        "Columns: within budget = episodes that met it; re-measured = the best policy (else the cheapest) rebuilt, exported and "
        "timed again against the reference without the cache, per seed; episodes / wall to 95% = until the best accuracy within "
        "budget first reached 95% of its final value; cache hits = share of episodes whose latency came from the shared cache "
        "(it is shared by every run, so runs started later hit more).",
        "",
        *discussion(results),
    ]
    path = out / "RESULTS.md"
    path.write_text("\n".join(lines))
    return path


def _earlier_base(results: dict[str, Any]) -> str:
    earlier = results.get("earlier_reference")
    if not earlier:
        return ""
    return (
        " **Those runs used an earlier base model** (same recipe; "
        f"{_pct(earlier.get('test_accuracy'), 2)}% test, {_pct(earlier.get('val_accuracy'), 2)}% on the validation images) whose "
        "checkpoint was not kept, and retraining does not reproduce it bit for bit, so "
        "the other runs use the committed retrained model above. Latency does not depend on the weights; accuracies of the "
        "two groups differ by the base models' training noise as well as by seed."
    )


def _floor_check(results: dict[str, Any]) -> str:
    """Whether the uncompressed model ran faster than its floor anywhere: then the peak was not the core's peak."""
    ratios: dict[str, list[float]] = {}  # per CPU: the uncompressed model's floor / its measured latency
    for seeds in results["rows"].values():
        for v in seeds.values():
            if v.get("remeasured"):
                ratios.setdefault(v["remeasured"]["cpu"], []).append(v["remeasured"]["reference_floor_ratio"])
    if not ratios:
        return ""
    parts = "; ".join(
        f"{cpu}: the uncompressed model's floor is {_pct(min(r))}-{_pct(max(r))}% of its measured latency"
        for cpu, r in sorted(ratios.items())
    )
    over = [cpu for cpu, r in ratios.items() if max(r) > 1]
    if not over:
        return f" Check ({parts}): below 100% everywhere, so the floors are lower bounds."
    return (
        f" Check ({parts}): **above 100% on {', '.join(over)}**: the matrix multiply does not reach that core's rate for these "
        "convolutions, so there the floors are not lower bounds."
    )


def _peak_text(peak: dict[str, Any]) -> str:
    """One CPU's peak rates and how they were measured (earlier versions timed one size with both operands as inputs)."""
    rates = f"fp32 {peak['fp32']['macs_per_s'] / 1e9:.0f} GMAC/s, int8 {peak['int8']['macs_per_s'] / 1e9:.0f} GMAC/s"
    if "sizes" not in peak:
        return f"{rates} ({peak['n']}³, both operands inputs)"
    sizes = "/".join(str(n) for n in peak["sizes"])
    return f"{rates} (fastest of {sizes}³ with constant weights: fp32 at {peak['fp32']['n']}³, int8 at {peak['int8']['n']}³)"


def _machines(results: dict[str, Any]) -> list[str]:
    """Which CPU each run was searched on, when more than one (a benchmark continued on another machine)."""
    by_cpu: dict[str, set[str]] = {}
    for key, seeds in results["rows"].items():
        for seed, v in seeds.items():
            if v.get("cpu"):  # runs, not rows: a shared run is a row under every budget
                by_cpu.setdefault(v["cpu"], set()).add(v.get("run") or f"{key}/seed{seed}")
    if len(by_cpu) < 2:
        return []
    parts = [f"{cpu}: {len(runs)} ({', '.join(sorted(runs)[:6])}{', …' if len(runs) > 6 else ''})" for cpu, runs in by_cpu.items()]
    return [
        "- **Runs were searched on different machines** (the benchmark was continued on another CPU; method/budget/seed): "
        + "; ".join(parts)
        + ". Every latency ratio is against the uncompressed model timed on the same machine in the same rounds, but the "
        "ratios an architecture reaches differ between CPUs, so compare seeds of one machine first."
    ]
