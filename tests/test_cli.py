from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import cli
from experiments.train import TrainConfig, main

GALEN = shutil.which("galen", path=str(Path(sys.executable).parent))
SUBCOMMANDS = [
    *("train", "demo", "compress", "search", "sweep", "report", "export", "finetune"),
    *("models", "datasets", "checkpoints", "hardware"),
]


def test_the_console_script_is_installed_and_prints_its_help() -> None:
    assert GALEN, "the galen console script is not installed in this environment"
    result = subprocess.run([GALEN, "search", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: galen search")


@pytest.mark.parametrize("command", [[], *([c] for c in SUBCOMMANDS)])
def test_help_of_every_subcommand(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # in this process (the console script's own start is the test above; 13 of them took 33 s of the suite)
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: galen {' '.join(command)}".rstrip())


def test_help_shows_each_config_field_with_its_default() -> None:
    text = cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--epochs EPOCHS       training epochs (default: 5)" in text
    assert "--progress, --no-progress" in text
    demo = cli.build_parser()._subparsers._group_actions[0].choices["demo"].format_help()
    assert "60% latency budget" in " ".join(demo.split())
    sweep = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["sweep"].format_help().split())
    assert "--trials TRIALS trials (hyperparameter samples) (default: 8)" in sweep


def test_train_command_trains_then_reuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "train",
        "--epochs",
        "1",
        "--train-limit",
        "256",
        "--batch-size",
        "64",
        "--val-size",
        "500",
        "--store",
        str(tmp_path),
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert "test accuracy" in first and "(reused from the store)" not in first
    assert cli.main(argv) == 0
    assert "(reused from the store)" in capsys.readouterr().out
    assert cli.main(["checkpoints", "--store", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("resnet20     fashion-mnist  epochs=1   seed=0")


def test_train_main_returns_summary(tmp_path: Path) -> None:
    summary = main(TrainConfig(epochs=1, train_limit=256, batch_size=64, val_size=500, store=str(tmp_path), progress=False, threads=2))
    assert summary["reused"] is False and 0.1 < summary["test_acc"] <= 1
    assert summary["data_source"] == "system install /usr/share/datasets/fashion-mnist"


def test_bad_model_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--model", "resnet99", "--store", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        "galen train: error: unknown model 'resnet99'; registered models: resnet20, resnet32, resnet56, resnet18, vgg11_bn, "
        "vgg16_bn, mobilenetv2; or 'tv:<torchvision name>' (e.g. tv:resnet18), or 'package.module:factory'\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--val-size", "70000"], "galen train: error: --val-size is 70000; allowed: an integer in [0, 60000) for fashion-mnist"),
        (["train", "--epochs", "0"], "galen train: error: --epochs is 0; allowed: an integer >= 1"),
        (["train", "--train-limit", "0"], "galen train: error: --train-limit is 0; allowed: an integer >= 1, or none for all images"),
        (["sweep", "--trials", "0"], "galen sweep: error: --trials is 0; allowed: an integer >= 1"),
        (["sweep", "--params", "lr,nope"], "galen sweep: error: --params names 'nope'; allowed: comma-separated fields among lr, "),
    ],
)
def test_flag_errors_name_the_flag_the_user_wrote(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ["--store", str(tmp_path)] if argv[0] == "train" else ["--storage", str(tmp_path)]
    assert cli.main([*argv, *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1, err


def test_bad_dataset_choice_is_rejected_by_the_parser() -> None:
    result = subprocess.run([GALEN, "train", "--dataset", "svhn"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "argument --dataset: invalid choice: 'svhn' (choose from 'fashion-mnist', 'mnist', 'cifar10', 'imagefolder')" in result.stderr


def test_hardware_list_and_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["hardware", "list"]) == 0
    out = capsys.readouterr().out
    assert "local-cpu      onnxruntime, 1 thread(s), batch 1, w8/32 a8/32" in out
    assert "served by: nodes labelled hardware=arm-board (connect with --address or RAY_ADDRESS to list them)" in out
    assert cli.main(["hardware", "check", "local-cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("target local-cpu: onnxruntime ")
    rows = {line.split()[0]: line.split() for line in lines[3:5]}
    assert set(rows) == {"fp32", "int8"}
    assert 0.85 < float(rows["fp32"][5]) < 1.15 and float(rows["int8"][5]) < 0.8  # int8 kernels really run faster


def test_openvino_and_two_thread_targets_are_listed_and_time_the_same_artifact(capsys: pytest.CaptureFixture[str]) -> None:
    import openvino

    assert cli.main(["hardware", "list"]) == 0
    out = capsys.readouterr().out
    assert "openvino-cpu   openvino, 1 thread(s), batch 1, w8/32 a8/32" in out
    assert f"runtime here: openvino {openvino.__version__}" in out
    assert "local-cpu-2t   onnxruntime, 2 thread(s), batch 1" in out
    assert cli.main(["hardware", "check", "openvino-cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"target openvino-cpu: openvino {openvino.__version__} ")
    rows = {line.split()[0]: line.split() for line in lines[3:5]}
    assert 0.85 < float(rows["fp32"][5]) < 1.15 and float(rows["int8"][5]) < 1.0  # its int8 kernels run (checked per layer)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["hardware", "check", "tpu"],
            "galen hardware: error: unknown hardware target 'tpu'; known targets: arm-board, local-cpu, local-cpu-2t, openvino-cpu\n",
        ),
        (
            ["hardware", "check", "arm-board"],
            "galen hardware: error: hardware target 'arm-board' is served by Ray nodes labelled hardware=arm-board; "
            "connect to the cluster first",
        ),
    ],
)
def test_hardware_check_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 1
    assert capsys.readouterr().err.startswith(message)
