"""``galen compress``: from a trained model to a faster deployable one on a target, in one command.

1. evaluate the given model (its test accuracy: the weights and the data fit, or you see at once that they do not);
2. measure the feasible range on the target and refuse a budget outside it (seconds, not hours later);
3. search a per-layer policy (pruning + int8; SAC by default, ``--episodes`` by the model's size);
4. fine-tune the best policy (``--finetune-epochs`` with simulated quantization, or ``--finetune-steps``);
5. export: ``<out>/model.onnx`` (int8 kernels where the policy quantizes, precision-checked), ``<out>/policy.json``,
   the report (``<out>/report/report.md``, Pareto plot) and ``<out>/compress.json``; print one table, uncompressed vs
   compressed: accuracy, latency on the target, size.

Every step is written as it finishes; re-running the same command continues (or only reprints a finished run).
The same flow from a search config: ``--config my.yaml`` (its workload, env and agent; flags given override it), and
on a cluster: ``ray job submit -- python -m experiments.compress --model ... --out /shared/out``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from agents.config import ALGOS
from envs.config import ConfigError
from envs.jsonio import read_json, write_json
from experiments import rundir
from experiments.config import SearchConfig, merge
from experiments.options import add_options, from_args, option

log = logging.getLogger("galen.compress")

# the search config's fields that a flag sets: an error about the field names the flag
FLAGS = {
    "workload.model": "--model",
    "workload.weights": "--weights",
    "workload.dataset": "--dataset",
    "workload.data_dir": "--data-dir",
    "workload.base_epochs": "--base-epochs",
    "workload.input_size": "--input-size",
    "workload.pad": "--pad",
    "workload.mean": "--mean",
    "workload.std": "--std",
    "workload.normalize": "--normalize",
    "workload.transform": "--transform",
    "env.target": "--target",
    "env.target_ratio": "--budget",
    "episodes": "--episodes",
    "agent.algo": "--agent",
    "seed": "--seed",
}
SMALL_MODEL_UNITS = 32  # decisions; up to this many the demo's 60 episodes sufficed (ResNet-20: 60/60 within budget)


@dataclass(frozen=True)
class CompressConfig:
    """What to compress, for which target and budget; every field is a flag (``--finetune-epochs``)."""

    model: str | None = option(None, "registered model, package.module:factory, or tv:<torchvision name>", shown_default="resnet20")
    weights: str | None = option(
        None, "your trained weights: a state-dict file (torch.save(model.state_dict(), path)); without it a registered model "
        "is trained on the dataset first and stored"
    )  # fmt: skip
    dataset: str | None = option(
        None, "registered dataset, or a directory of images (train/<class>/*, test/<class>/*)", shown_default="fashion-mnist"
    )
    data_dir: str | None = option(None, "directory holding the dataset's files", shown_default="system installs, then a download")
    input_size: int | None = option(None, "side of the square images your model expects (resized to it)", shown_default="the dataset's own")
    pad: int | None = option(
        None, "zero border in pixels, inside --input-size", shown_default="the dataset's own: 2 for Fashion-MNIST/MNIST (28 -> 32), else 0"
    )
    mean: str | None = option(
        None, "normalisation mean per channel, in [0, 1] units (0.485,0.456,0.406)", shown_default="the dataset's own"
    )
    std: str | None = option(None, "normalisation std per channel (0.229,0.224,0.225)", shown_default="the dataset's own")
    normalize: bool | None = option(None, "--no-normalize: your model sees pixels in [0, 1]", shown_default="normalised")
    transform: str | None = option(
        None, "package.module:callable turning each [0, 1] batch (B, C, H, W) into your model's input, instead of --mean/--std"
    )
    target: str | None = option(None, "hardware target (galen hardware list)", shown_default="local-cpu")
    budget: str | None = option(
        None, "latency budget: a fraction of the uncompressed model's latency (0.5) or milliseconds (2.5ms)", shown_default="0.5"
    )
    episodes: int | None = option(None, "search episodes", shown_default=f"60 for models of up to {SMALL_MODEL_UNITS} layers, 80 beyond")
    agent: str | None = option(None, "search method", shown_default="sac", choices=ALGOS)
    finetune_epochs: int = option(1, "fine-tune epochs of the best policy (cosine schedule, simulated quantization)")
    finetune_steps: int | None = option(None, "instead of whole epochs: this many batches of 128 (a short recovery)")
    base_epochs: int | None = option(None, "epochs to train a registered model when no --weights are given", shown_default="5")
    out: str | None = option(None, "output directory", shown_default="runs/compress-<model>")
    config: str | None = option(
        None, "a search config YAML to start from (workload, env, agent fields; the flags override it)", shown_default="the demo's"
    )
    seed: int | None = option(None, "seed of the search", shown_default="0")
    resume: bool = option(False, "continue the run in --out (re-running the same command does so too)")
    progress: bool = option(True, "progress bars (a log line per step and per episode batch either way)")


def flag_error(error: ConfigError) -> ValueError:
    """A search config error re-worded with the flag the user wrote."""
    flag = FLAGS.get(error.field)
    if flag is None:
        return error
    if error.unknown:
        return ValueError(f"galen compress: {flag}: {error}")
    return ValueError(f"galen compress: {flag} ({error.field}) is {error.value!r}; allowed: {error.allowed}")


def parse_budget(text: str) -> tuple[float | None, float | None]:
    """``0.5`` -> (0.5, None); ``2.5ms`` -> (None, 2.5). Anything else names ``--budget`` and what is allowed."""
    value = str(text).strip().lower()
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*ms", value)
    try:
        if match:
            ms = float(match.group(1))
            if ms > 0:
                return None, ms
        else:
            ratio = float(value)
            if 0 < ratio <= 1:
                return ratio, None
    except ValueError:
        pass
    raise ValueError(
        f"galen compress: --budget is {text!r}; allowed: a fraction of the uncompressed latency in (0, 1] (0.5) or a latency in ms (2.5ms)"
    )


def search_config(cfg: CompressConfig, out: Path, ratio: float | None) -> SearchConfig:
    """The search this compression runs: the built-in demo's settings, then ``--config``, then the flags."""
    from experiments.config import builtin_config

    base = _config_yaml(cfg) if cfg.config else yaml.safe_load(builtin_config("demo").read_text())
    if not cfg.config:  # the demo's settings less what only makes it fast: the env's own defaults for a real model
        base["workload"]["base_epochs"] = 5
        for name in ("val_size", "bn_batches"):
            base["env"].pop(name, None)
    dataset, data_dir = cfg.dataset, cfg.data_dir
    if dataset is not None and (Path(dataset).expanduser().is_dir() or "/" in dataset):
        if not Path(dataset).expanduser().is_dir():
            raise FileNotFoundError(f"galen compress: --dataset {dataset}: no such directory")
        dataset, data_dir = "imagefolder", str(Path(dataset).expanduser().resolve())
    weights = str(Path(cfg.weights).expanduser().resolve()) if cfg.weights else None
    flags = {
        "workload.model": cfg.model,
        "workload.weights": weights,
        "workload.dataset": dataset,
        "workload.data_dir": data_dir,
        "workload.base_epochs": cfg.base_epochs,
        "workload.input_size": cfg.input_size,
        "workload.pad": cfg.pad,
        "workload.mean": None if cfg.mean is None else list(_floats(cfg.mean, "--mean")),
        "workload.std": None if cfg.std is None else list(_floats(cfg.std, "--std")),
        "workload.normalize": cfg.normalize,
        "workload.transform": cfg.transform,
        "env.target": cfg.target,
        "agent.algo": cfg.agent,
        "seed": cfg.seed,
    }
    data = merge(base, {k: v for k, v in flags.items() if v is not None})
    data = merge(data, {"run_dir": str(out), "name": data.get("name", "compress") if cfg.config else f"compress-{out.name}"})
    if ratio is not None:
        data = merge(data, {"env.target_ratio": ratio})
    if weights:
        data = merge(data, {"workload.checkpoint": None, "workload.train_base": False})
    else:
        data = merge(data, {"workload.train_base": True})
    if cfg.episodes is not None:
        data["episodes"] = cfg.episodes
    try:
        return SearchConfig.from_dict(data)
    except ConfigError as error:
        raise flag_error(error) from None


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"galen compress: {flag} is {text!r}; allowed: numbers separated by commas, one per channel (or one)") from None


def _config_yaml(cfg: CompressConfig) -> dict[str, Any]:
    """``--config``'s fields (a file that is not a mapping of them is an error naming the flag)."""
    data = yaml.safe_load(Path(cfg.config).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"galen compress: --config {cfg.config} is not a mapping of search config fields")
    return data


def default_episodes(units: int) -> int:
    """60 episodes for up to ``SMALL_MODEL_UNITS`` decisions (the demo: every episode within budget, the agent's
    accuracy rising), 80 beyond (the search benchmark's runs on ResNet-20 and ResNet-56)."""
    return 60 if units <= SMALL_MODEL_UNITS else 80


def main(cfg: CompressConfig) -> dict[str, Any]:
    """``galen compress``: the flags (checked first, each error naming its flag) to a search config, then the flow."""
    if cfg.finetune_epochs < 1:
        raise ValueError(f"galen compress: --finetune-epochs is {cfg.finetune_epochs}; allowed: an integer >= 1")
    if cfg.finetune_steps is not None and cfg.finetune_steps < 1:
        raise ValueError(f"galen compress: --finetune-steps is {cfg.finetune_steps}; allowed: an integer >= 1")
    if cfg.episodes is not None and cfg.episodes < 1:
        raise ValueError(f"galen compress: --episodes is {cfg.episodes}; allowed: an integer >= 1")
    if cfg.weights and not Path(cfg.weights).expanduser().is_file():
        raise FileNotFoundError(f"galen compress: --weights {cfg.weights}: no such file")
    if cfg.config and not Path(cfg.config).is_file():
        raise FileNotFoundError(f"galen compress: --config {cfg.config}: no such file")
    if cfg.budget is not None:
        ratio, ms = parse_budget(cfg.budget)
    else:  # the config's env.target_ratio, or the default
        ratio, ms = (None, None) if cfg.config else (0.5, None)
    model_name = cfg.model or "model"
    out = Path(cfg.out or f"runs/compress-{re.sub(r'[^A-Za-z0-9_.-]+', '_', model_name)}").resolve()
    state = read_json(out / "compress.json") or {}
    # a budget in ms becomes a ratio once the uncompressed model is timed; a re-run with the same budget keeps that ratio
    known = state.get("target_ratio") if ms is not None and state.get("budget") == cfg.budget else None
    config = search_config(cfg, out, ratio or known or (1.0 if ms is not None else None))
    episodes_given = cfg.episodes is not None or bool(cfg.config and "episodes" in _config_yaml(cfg))
    return run_flow(
        config,
        budget=cfg.budget,
        budget_ms=None if known else ms,
        episodes_given=episodes_given,
        finetune_epochs=cfg.finetune_epochs,
        finetune_steps=cfg.finetune_steps,
        resume=cfg.resume,
        progress=cfg.progress,
    )


def run_flow(
    config: SearchConfig,
    *,
    budget: str | None = None,
    budget_ms: float | None = None,
    episodes_given: bool = True,
    finetune_epochs: int = 1,
    finetune_steps: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """The five steps on a search config (``galen compress`` builds it from the flags; ``galen demo`` is the built-in
    one); the run directory is ``config.run_dir``. ``budget_ms``: a latency to turn into ``env.target_ratio`` once the
    uncompressed model is timed; ``episodes_given=False``: the episode count follows the model's size."""
    from experiments import search
    from experiments.deploy import finetune_policy
    from experiments.results import make_env, test_accuracy

    out = Path(config.run_dir).resolve()
    state_path = out / "compress.json"
    state = read_json(state_path) or {}
    torch.set_num_threads(os.cpu_count() or 1)  # evaluation and base training on every core; the search sets its own
    log.info("[1/5] the given model: %s on %s ...", config.env.model, config.env.dataset)
    env = make_env(config)
    ctx = env.ctx
    base_test = test_accuracy(env, ctx.reference)
    sha = f" (sha256 {ctx.meta['sha256'][:16]}...)" if ctx.meta.get("sha256") else ""
    print(
        f"given model {config.env.model}: test accuracy {100 * base_test:.2f}% ({len(ctx.data.test)} images), validation "
        f"{100 * ctx.reference_accuracy:.2f}% ({config.env.val_size} images); weights: {ctx.meta.get('path')}{sha}; "
        f"inputs {'x'.join(map(str, ctx.example.shape[1:]))} ({config.env.preprocessing.describe()})",
        flush=True,
    )
    if budget_ms is not None:
        reference = ctx.reference_ms
        if budget_ms > reference:
            raise ValueError(
                f"galen compress: --budget {budget} is above the uncompressed model's latency on {config.env.target} "
                f"({reference:.3f} ms); allowed: up to {reference:.3f}ms, or a fraction in (0, 1]"
            )
        config = config.replace(**{"env.target_ratio": budget_ms / reference})
        log.info("--budget %s: %.1f%% of the uncompressed model's %.3f ms", budget, 100 * config.env.target_ratio, reference)
    ratio = config.env.target_ratio
    if not episodes_given:
        config = config.replace(episodes=default_episodes(len(env.units)))
    state.update(budget=budget, target_ratio=ratio, given_test_accuracy=base_test, model=config.env.model, status="running")
    state.update(weights=ctx.meta.get("path"), weights_sha256=ctx.meta.get("sha256"), frozen=dict(ctx.structure.frozen))
    state.update(input_shape=list(ctx.example.shape[1:]), preprocessing=config.env.preprocessing.describe())
    out.mkdir(parents=True, exist_ok=True)
    write_json(state_path, state)
    for name, reason in state["frozen"].items():
        log.warning("frozen (not pruned, still quantizable): %s: %s", name, reason)
    resume = resume or (out / rundir.CONFIG).exists()
    log.info("[2/5] feasible range and [3/5] search: %d episodes of %s at %.1f%% latency", config.episodes, config.agent.algo, 100 * ratio)
    try:
        summary = search.main(config, resume=resume, progress=progress, report=True, summary=True)
    except search.BudgetError as error:  # the budget is the flag's
        label = f"--budget {budget}" if budget else "env.target_ratio"
        raise search.BudgetError(f"galen compress: {label}: {error}".replace("env.target_ratio is", "the budget is")) from None
    log.info("[4/5] fine-tune of the best policy (episode %d)", summary["best"]["episode"])
    torch.set_num_threads(os.cpu_count() or 1)  # the search limits torch to one thread for RLlib; the fine-tune uses all
    done = read_json(out / "finetune" / "finetune.json")
    wanted = {"steps": finetune_steps} if finetune_steps else {"epochs": finetune_epochs}
    same = done and done.get("episode") == summary["best"]["episode"] and all(done.get(k) == v for k, v in wanted.items())
    result = done if same else finetune_policy(str(out), epochs=finetune_epochs, steps=finetune_steps)
    log.info("[5/5] export")
    for name in ("model.onnx", "policy.json"):
        shutil.copyfile(out / "finetune" / name, out / f".{name}.tmp")
        os.replace(out / f".{name}.tmp", out / name)
    baseline = summary["baseline"]
    state.update(
        status="finished",
        within_budget=bool(summary["within_budget"] and result["latency_ratio"] <= ratio * 1.03),
        uncompressed={k: baseline[k] for k in ("test_accuracy", "latency_ms", "artifact_bytes")},
        compressed={
            "test_accuracy": result["test_accuracy"],
            "test_accuracy_before_finetune": result["before"]["test_accuracy"],
            "latency_ms": result["latency_ms"],
            "latency_ratio": result["latency_ratio"],
            "artifact_bytes": result["artifact_bytes"],
            "episode": result["episode"],
        },
        finetune=wanted,
        artifact=str(out / "model.onnx"),
        policy=str(out / "policy.json"),
        report=str(out / "report" / "report.md"),
    )
    write_json(state_path, state)
    print(format_table(state, config))
    return state


def format_table(state: dict[str, Any], config: SearchConfig) -> str:
    u, c = state["uncompressed"], state["compressed"]
    met = "met" if state["within_budget"] else "NOT met"
    before = f"{100 * c['test_accuracy_before_finetune']:.2f}% before the fine-tune"
    budget = f"budget {100 * state['target_ratio']:.1f}% {met}"
    rows = [
        ("", "uncompressed", "compressed"),
        ("test accuracy", f"{100 * u['test_accuracy']:.2f}%", f"{100 * c['test_accuracy']:.2f}% ({before})"),
        (
            f"latency on {config.env.target}",
            f"{u['latency_ms']:.3f} ms",
            f"{c['latency_ms']:.3f} ms ({100 * c['latency_ratio']:.1f}%; {budget})",
        ),
        ("size", f"{u['artifact_bytes'] / 1024:.0f} KiB", f"{c['artifact_bytes'] / 1024:.0f} KiB"),
        ("accuracy change", "", f"{100 * (c['test_accuracy'] - u['test_accuracy']):+.2f} points"),
    ]
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    lines = [f"{a:<{w0}}  {b:<{w1}}  {x}" for a, b, x in rows]
    lines.append(f"artifact: {state['artifact']}\npolicy:   {state['policy']}\nreport:   {state['report']}")
    if state.get("input_shape"):
        shape = "x".join(map(str, state["input_shape"]))
        preprocessing = state.get("preprocessing") or "the dataset's own preprocessing"
        lines.append(f"the artifact's input: a batch of {shape} ({preprocessing})")
    if state.get("frozen"):
        where = Path(state["artifact"]).parent / "compress.json"
        lines.append(f"frozen (not pruned, still quantizable): {', '.join(state['frozen'])} (the reasons: {where})")
    return "\n".join(lines)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="galen compress", description=__doc__)
    add_options(parser, CompressConfig)
    return parser


def command(args: argparse.Namespace) -> dict[str, Any]:
    """``galen compress``'s handler."""
    return main(from_args(CompressConfig, args))


def run(argv: list[str] | None = None) -> int:
    """``python -m experiments.compress`` (what ``ray job submit`` runs): the same as ``galen compress``."""
    from experiments.entry import module_main

    return module_main("compress", build_parser, command, argv)


if __name__ == "__main__":
    sys.exit(run())
