"""The ``galen`` command: one subcommand per entry point, each with its own ``--help``."""

from __future__ import annotations

import argparse
import json
import sys

from experiments import compress, deploy, hardware, report, search, study, sweep, train
from experiments.entry import run
from experiments.options import add_options, from_args

DEMO_FINETUNE_STEPS = 200  # 94 s for 300 on 2 cores; 200 keep the demo under 10 minutes with room for slow timings


def _demo(args: argparse.Namespace) -> None:
    """``galen compress``'s flow on the built-in demo config (a re-run continues, or reprints a finished demo).

    The best policy gets a short fine-tune: ``DEMO_FINETUNE_STEPS`` batches of 128 with simulated quantization.
    """
    compress.run_flow(search.config_from_args(args), finetune_steps=DEMO_FINETUNE_STEPS, resume=True, progress=args.progress)


def _list_models(args: argparse.Namespace) -> None:
    from workloads.models import MODELS

    for name, factory in MODELS.items():
        print(f"{name:<12} {(factory.__doc__ or '').strip().splitlines()[0]}")
    print("tv:<name>    any torchvision model (needs the 'vision' extra and a torchvision build that imports)")
    print("pkg.mod:fn   your own factory, called with in_channels= and num_classes= when it accepts them")


def _list_datasets(args: argparse.Namespace) -> None:
    from workloads.datasets import DATASETS

    for spec in DATASETS.values():
        found = [str(d) for d in spec.system_dirs if d.is_dir()]
        where = ", ".join(found) if found else ("not installed here" if spec.system_dirs else "none (use --data-dir or a download)")
        print(f"{spec.name:<14} {spec.in_channels}x{spec.image_size}x{spec.image_size}  system install: {where}")


def _list_checkpoints(args: argparse.Namespace) -> None:
    from workloads.checkpoints import CheckpointStore

    store = CheckpointStore(args.store)
    entries = store.entries()
    if args.json:
        print(json.dumps(entries, indent=2))
        return
    if not entries:
        print(f"no checkpoints in {store.root}")
    for e in entries:
        print(
            f"{e['model']:<12} {e['dataset']:<14} epochs={e['epochs']:<3} seed={e['seed']:<3} "
            f"test_acc={100 * e['test_acc']:.2f}%  {e['path']}"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="galen", description="Galen on Ray: hardware-specific automatic compression of neural networks.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train (or reuse from the store) a base model and evaluate it", description=train.__doc__)
    train.build_parser(p)
    p.set_defaults(handler=lambda a: train.main(from_args(train.TrainConfig, a)))

    p = sub.add_parser(
        "demo",
        help="the embedded default: SAC compresses ResNet-20 (Fashion-MNIST) to 60%% latency on this CPU",
        description="galen compress on the embedded default (experiments/configs/demo.yaml): ResNet-20 on Fashion-MNIST "
        "(trained and stored on first run), the joint pruning + int8 environment with the action wall, SAC, target local-cpu "
        "at a 60% latency budget (refused at once if this CPU cannot reach it). Prints the model's accuracy, baseline vs best "
        f"policy, fine-tunes the best policy for {DEMO_FINETUNE_STEPS} steps and prints uncompressed vs compressed test "
        "accuracy, latency and size; writes runs/demo/model.onnx, policy.json and the report with its Pareto plot. "
        "Re-running continues or re-reports the same run.",
    )
    search.build_parser(p)
    p.set_defaults(handler=_demo)

    p = sub.add_parser(
        "compress",
        help="your trained model to a faster deployable one on a target: evaluate, search, fine-tune, export",
        description=compress.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compress.build_parser(p)
    p.set_defaults(handler=compress.command)

    p = sub.add_parser("search", help="search a compression policy (RL agent or baseline) from a YAML config", description=search.__doc__)
    search.build_parser(p)
    p.set_defaults(handler=search.command)

    p = sub.add_parser("sweep", help="Ray Tune sweep of the agent's hyperparameters (ASHA + Optuna, W&B)", description=sweep.__doc__)
    sweep.build_parser(p)
    p.set_defaults(handler=lambda a: sweep.main(from_args(sweep.SweepConfig, a)))

    p = sub.add_parser(
        "study",
        help="many searches (a grid of methods, budgets, seeds, models, targets) as one Ray Tune experiment, and their report",
        description=study.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    study.build_parser(p)
    p.set_defaults(handler=study.main)

    p = sub.add_parser("report", help="Pareto plot, best policies and markdown summary of a run", description=report.__doc__)
    report.build_parser(p)
    p.set_defaults(handler=report.main)

    p = sub.add_parser("export", help="deployable ONNX + policy JSON of a run's best (or chosen) policy", description=deploy.__doc__)
    deploy.build_export_parser(p)
    p.set_defaults(handler=lambda a: deploy.export(a.run, a.episode, a.out))

    p = sub.add_parser("finetune", help="fully fine-tune a run's best (or chosen) policy", description=deploy.__doc__)
    deploy.build_finetune_parser(p)
    p.set_defaults(handler=lambda a: deploy.finetune_policy(a.run, a.episode, a.epochs, a.lr, a.out, a.steps))

    p = sub.add_parser("models", help="list the registered models", description="List the model registry.")
    p.set_defaults(handler=_list_models)
    p = sub.add_parser("datasets", help="list the registered datasets", description="List the dataset registry and system installs.")
    p.set_defaults(handler=_list_datasets)
    p = sub.add_parser("checkpoints", help="list trained base models in the store", description="List the checkpoint store.")
    p.add_argument("--store", default=None, help="checkpoint store directory (default: $GALEN_HOME/checkpoints)")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    p.set_defaults(handler=_list_checkpoints)

    p = sub.add_parser("hardware", help="hardware targets: list them, check timing on one", description=hardware.__doc__)
    hw = p.add_subparsers(dest="hardware_command", required=True, metavar="ACTION")
    q = hw.add_parser("list", help="targets and the nodes serving each", description="List the hardware targets and who serves them.")
    add_options(q, hardware.ListConfig)
    q.set_defaults(handler=lambda a: hardware.list_targets(from_args(hardware.ListConfig, a)))
    q = hw.add_parser("check", help="time a reference model on a target", description=hardware.__doc__)
    add_options(q, hardware.CheckConfig, positional=("target",))
    q.set_defaults(handler=lambda a: hardware.check(from_args(hardware.CheckConfig, a)))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.command, args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
