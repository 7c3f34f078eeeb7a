"""``galen report``: the Pareto-front plot (PNG), the best policies as a table, and a markdown summary of a run.

Other runs on the same env and budget (baselines, other agents) can be drawn on the same plot
with ``--compare``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from agents.recorder import pareto_front, read_episodes
from envs.jsonio import read_json
from experiments import rundir

REPORT_DIR = "report"


def _load(run_dir: Path) -> dict[str, Any]:
    config_file = run_dir / rundir.CONFIG
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    episodes = read_episodes(run_dir)
    if not episodes:
        raise ValueError(f"{run_dir}: no episodes recorded yet")
    return {
        "dir": run_dir,
        "config": yaml.safe_load(config_file.read_text()),
        "episodes": episodes,
        "front": pareto_front(episodes),
        "best": read_json(run_dir / rundir.BEST),
        "summary": read_json(run_dir / rundir.SUMMARY),
        "state": read_json(run_dir / rundir.STATE) or {},
    }


def _label(run: dict[str, Any]) -> str:
    return f"{run['config']['name']} ({run['config']['agent']['algo']})"


def plot_pareto(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = runs[0]
    target = main["config"]["env"]["target_ratio"]
    objective = main["config"]["env"]["objective"]
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    eps = main["episodes"]
    points = ax.scatter(
        [e["cost_ratio"] for e in eps], [100 * e["accuracy"] for e in eps], c=[e["episode"] for e in eps], cmap="viridis", s=14, alpha=0.6
    )
    fig.colorbar(points, ax=ax, label=f"episode ({_label(main)})")
    colors = ["tab:red", "tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    for run, color in zip(runs, colors, strict=False):
        front = run["front"]
        ax.step(
            [e["cost_ratio"] for e in front],
            [100 * e["accuracy"] for e in front],
            where="post",
            color=color,
            lw=1.5,
            label=f"Pareto front: {_label(run)}",
        )
        if run is not main:
            ax.scatter(
                [e["cost_ratio"] for e in run["episodes"]], [100 * e["accuracy"] for e in run["episodes"]], color=color, s=6, alpha=0.25
            )
    ax.axvline(target, color="black", ls="--", lw=1, label=f"budget: {100 * target:.0f}% {objective}")
    reference = eps[0].get("reference_accuracy")
    if reference is not None:
        ax.axhline(100 * reference, color="grey", ls=":", lw=1, label=f"uncompressed: {100 * reference:.1f}%")
    uniform = [e for e in eps if e["source"] in ("uniform", "uniform-safety")]
    if uniform:
        ax.scatter(
            [e["cost_ratio"] for e in uniform], [100 * e["accuracy"] for e in uniform], marker="s", s=40, facecolor="none",
            edgecolor="black", zorder=4, label="uniform policies (same keep and precision everywhere)",
        )  # fmt: skip
    best = main["best"]
    if best is not None:
        ax.scatter(
            [best["cost_ratio"]],
            [100 * best["accuracy"]],
            marker="*",
            s=220,
            color="gold",
            edgecolor="black",
            zorder=5,
            label=f"best within budget ({best['source']})" if best["within_budget"] else "best reward (no episode within budget)",
        )
    ax.set_xlabel(f"{objective} / uncompressed")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(
        f"{main['config']['workload']['model']} on {main['config']['workload']['dataset']}, target {main['config']['env']['target']}"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_progress(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.5), dpi=120)
    for run in runs:
        best, xs, ys = float("-inf"), [], []
        for e in run["episodes"]:
            best = max(best, e["reward"])
            xs.append(e["episode"])
            ys.append(best)
        ax.plot(xs, ys, label=_label(run))
    ax.set_xlabel("episode")
    ax.set_ylabel("best reward so far")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _row(e: dict[str, Any]) -> str:
    latency = f"{e['latency_ms']:.3f}" if e.get("latency_ms") is not None else "-"
    return (
        f"| {e['episode']} | {e['source']} | {100 * e['accuracy']:.2f} | {100 * e['cost_ratio']:.1f} | {latency} | "
        f"{e['macs'] / 1e6:.1f} | {e['artifact_bytes'] / 1024:.0f} | {e['reward']:.3f} | {'yes' if e['within_budget'] else 'no'} |"
    )


HEADER = (
    "| episode | source | val. accuracy (%) | cost (% of uncompressed) | latency (ms) | MACs (M) | artifact (KiB) | reward "
    "| within budget |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def _searched(episodes: list[dict[str, Any]]) -> int:
    return sum(1 for e in episodes if not e["source"].endswith("-deterministic"))


def _readouts(episodes: list[dict[str, Any]]) -> str:
    n = len(episodes) - _searched(episodes)
    return f" (+{n} deterministic read-out of the final policy)" if n else ""


def markdown(runs: list[dict[str, Any]], top: int = 10) -> str:
    main = runs[0]
    c = main["config"]
    lines = [
        f"# Run report: {c['name']}",
        "",
        f"- workload: {c['workload']['model']} on {c['workload']['dataset']}",
        f"- env: {c['env']['kind']}, target `{c['env']['target']}`, objective {c['env']['objective']}, "
        f"budget {100 * c['env']['target_ratio']:.0f}%, reward `{c['env']['reward']}`",
        f"- agent: {c['agent']['algo']}; episodes: {_searched(main['episodes'])} of {c['episodes']}"
        f"{_readouts(main['episodes'])}; "
        f"status: {main['state'].get('status', 'unknown')}",
        "",
    ]
    s = main["summary"]
    if s:
        b, f = s["baseline"], s["best"]
        lines += [
            "## Baseline vs best policy",
            "",
            "| | test accuracy (%) | latency (ms) | latency (% of baseline) | MACs (M) | artifact (KiB) |",
            "|---|---|---|---|---|---|",
            f"| baseline | {100 * b['test_accuracy']:.2f} | {b['latency_ms']:.3f} | 100.0 | {b['macs'] / 1e6:.1f} "
            f"| {b['artifact_bytes'] / 1024:.0f} |",
            f"| best (episode {f['episode']}, {f['source']}) | {100 * f['test_accuracy']:.2f} | {f['latency_ms']:.3f} | "
            f"{100 * f['latency_ratio']:.1f} | {f['macs'] / 1e6:.1f} | {f['artifact_bytes'] / 1024:.0f} |",
            "",
            f"Budget {'met' if s['within_budget'] else 'NOT met'}."
            + (
                f" The lowest cost any episode reached was {100 * s['lowest_cost_ratio']:.1f}% of the baseline "
                f"(budget {100 * s['target_ratio']:.0f}%); the Pareto front below shows what is reachable."
                if not s["within_budget"] and s.get("lowest_cost_ratio") is not None
                else ""
            ),
            "",
        ]
    frozen = (s or {}).get("frozen") or {}
    if frozen:
        lines += [
            "## Frozen pruning groups",
            "",
            "Not pruned (their layers are still quantizable): Torch-Pruning does not prune them correctly in this model.",
            "",
            *(f"- `{name}`: {reason}" for name, reason in frozen.items()),
            "",
        ]
    within = sorted((e for e in main["episodes"] if e["within_budget"]), key=lambda e: -e["accuracy"])[:top]
    lines += [f"## Best policies within budget (top {top})", "", HEADER, *(_row(e) for e in within)]
    if not within:
        lines.append("| none yet | | | | | | | | |")
    lines += ["", "## Pareto front (validation accuracy vs cost)", "", HEADER, *(_row(e) for e in main["front"]), ""]
    if len(runs) > 1:
        lines += [
            "## Compared runs",
            "",
            "| run | episodes | best within budget: accuracy (%) | at cost (%) | Pareto points |",
            "|---|---|---|---|---|",
        ]
        for run in runs:
            inside = [e for e in run["episodes"] if e["within_budget"]]
            top_e = max(inside, key=lambda e: e["accuracy"]) if inside else None
            acc = f"{100 * top_e['accuracy']:.2f}" if top_e else "-"
            cost = f"{100 * top_e['cost_ratio']:.1f}" if top_e else "-"
            lines.append(f"| {_label(run)} | {len(run['episodes'])} | {acc} | {cost} | {len(run['front'])} |")
        lines.append("")
    lines += ["![Pareto front](pareto.png)", "", "![Best reward so far](progress.png)", ""]
    return "\n".join(lines)


def write_report(run_dir: str | Path, compare: list[str | Path] | None = None) -> dict[str, Path]:
    runs = [_load(Path(run_dir))] + [_load(Path(d)) for d in compare or []]
    out = Path(run_dir) / REPORT_DIR
    out.mkdir(exist_ok=True)
    paths = {"pareto": out / "pareto.png", "progress": out / "progress.png", "markdown": out / "report.md"}
    plot_pareto(runs, paths["pareto"])
    plot_progress(runs, paths["progress"])
    paths["markdown"].write_text(markdown(runs))
    return paths


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="galen report", description=__doc__)
    parser.add_argument("run", help="run directory")
    parser.add_argument("--compare", nargs="*", default=[], metavar="RUN", help="other run directories to draw on the same plot")
    return parser


def main(args: argparse.Namespace) -> dict[str, Path]:
    paths = write_report(args.run, args.compare)
    print(Path(paths["markdown"]).read_text().split("## Best policies")[0].rstrip())
    print(f"\nreport: {paths['markdown']}\nPareto plot: {paths['pareto']}")
    return paths
