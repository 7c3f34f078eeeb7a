"""A user's own model and weights: layer discovery that freezes what Torch-Pruning gets wrong, a short search and the
export on each of the odd models (tests/user_models.py), ``galen compress`` end to end, and the errors a user sees."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import user_models
import yaml

from compression.policy import CompressionPolicy
from compression.pruning import freeze_unprunable, prune
from compression.structure import StructureError, discover
from envs import EnvConfigError, JointEnv, PruneEnv
from experiments.cli import main as cli_main
from workloads.checkpoints import CheckpointError, load_weights

SMALL = {"val_size": 200, "sensitivity_images": 16, "calibration_images": 32, "bn_batches": 2}


def _weights(tmp_path: Path, name: str) -> Path:
    torch.manual_seed(0)
    path = tmp_path / f"{name}.pt"
    torch.save(getattr(user_models, name)(in_channels=1, num_classes=10).state_dict(), path)
    return path


def test_discovery_freezes_the_groups_torch_pruning_gets_wrong_and_prunes_the_rest() -> None:
    x = torch.randn(2, 1, 32, 32)
    expected_frozen = {"DenseNet": {"trans", "grouped"}, "ShuffleNet": {"g1.0", "stem.0"}, "SepNet": set()}
    for name, frozen in expected_frozen.items():
        model = getattr(user_models, name)().eval()
        structure = freeze_unprunable(model, x, discover(model, x))
        assert {g for g, _ in structure.frozen} == frozen, name
        # the channel shuffle: pruning its group crashed inside Torch-Pruning (the traceback) or removed the
        # wrong channels; frozen, it is named with the reason
        reasons = dict(structure.frozen)
        if name == "ShuffleNet":
            assert "mixes channels" in reasons["g1.0"] and "grouped convolution g2.0 (groups=4)" in reasons["stem.0"]
        if name == "DenseNet":  # the concatenations prune; the grouped conv's input and output do not
            assert reasons["trans"] == "its channels pass the grouped convolution grouped (groups=4)"
            assert len(structure.groups) == 3
        # every group left prunes, alone and all at once, into a model that runs and has the planned layers
        policy = CompressionPolicy(keep={g.name: 0.5 for g in structure.groups})
        pruned = prune(model, x, policy, 8, structure)
        assert pruned(x).shape == (2, 10)
        smaller = sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
        assert smaller == bool(structure.groups), name
    with pytest.raises(StructureError, match="has no Conv2d or Linear layer to compress"):
        discover(user_models.NoLayers(), x)


# MACs where groups prune; ShuffleNet, whose groups are all frozen, reaches its budget by int8 alone (bit-operations)
@pytest.mark.parametrize(("name", "objective"), [("DenseNet", "macs"), ("ShuffleNet", "bops"), ("SepNet", "macs")])
def test_each_odd_model_with_its_weights_searches_two_episodes_and_exports(name: str, objective: str, tmp_path: Path, fmnist) -> None:
    weights = _weights(tmp_path, name)
    env = JointEnv({"model": f"user_models:{name}", "weights": str(weights), "objective": objective, "target_ratio": 0.6, **SMALL})
    assert env.ctx.meta["sha256"] and env.ctx.meta["weights"] == str(weights)
    rng = np.random.default_rng(0)
    frozen = {g for g, _ in env.ctx.structure.frozen}
    for _ in range(2):  # two episodes of random actions, as a random search plays them
        obs, _ = env.reset(seed=0)
        done = False
        while not done:
            obs, _, done, _, info = env.step(rng.uniform(0, 1, 2).astype(np.float32))
        assert info["within_budget"] and info["cost_over_target"] <= 1.0
        assert not frozen & set(info["policy"]["keep"])
    policy = CompressionPolicy.from_dict(info["policy"])
    compressed = env.build_compressed(policy)
    assert any(k < 1.0 for k in policy.keep.values()) == (objective == "macs")
    # the export's precision check: every layer runs (in ONNX Runtime's optimised graph) at the policy's precision
    assert {r.layer: r.runs == "int8" for r in compressed.artifact.layers} == {
        n: policy.precision_of(n).runs_int8 for n in env.ctx.structure.layer_names
    }
    if name == "DenseNet":  # a prune env has units only for the groups it can prune
        prune_env = PruneEnv({"model": "user_models:DenseNet", "weights": str(weights), "objective": "macs", **SMALL})
        assert prune_env.units == ["stem", "block.0.2", "block.1.2"]


def test_weights_that_do_not_fit_or_hold_pickled_code_are_refused_with_one_line(tmp_path: Path) -> None:
    model = user_models.SepNet()
    wrong = tmp_path / "wrong.pt"
    state = user_models.SepNet(num_classes=5).state_dict()
    torch.save(state, wrong)
    with pytest.raises(CheckpointError, match=r"^--weights \(workload.weights\): .*wrong.pt does not fit model SepNet: tensor "
                       r"'classifier.weight' has shape \(5, 64, 1, 1\) in the file but \(10, 64, 1, 1\) in the model$"):  # fmt: skip
        load_weights(wrong, model)
    missing = tmp_path / "missing.pt"
    torch.save({k: v for k, v in model.state_dict().items() if k != "stem.1.running_var"}, missing)
    with pytest.raises(CheckpointError, match=r"tensor 'stem.1.running_var' \(shape \(32,\)\) is missing from the file"):
        load_weights(missing, model)

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'executed'}",))

    evil = tmp_path / "evil.pt"
    torch.save({"stem.0.weight": Payload()}, evil)
    with pytest.raises(CheckpointError, match=r"holds pickled Python objects besides tensors; such files are never loaded") as error:
        load_weights(evil, model)
    assert not (tmp_path / "executed").exists()
    assert "weights_only=False" not in str(error.value)
    # wrapped the usual ways: {"state_dict": ...} and nn.DataParallel's "module." prefix
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": torch.tensor(3)}, wrapped)
    meta = load_weights(wrapped, user_models.SepNet())
    assert len(meta["sha256"]) == 64 and meta["tensors"] == len(model.state_dict())
    with pytest.raises(EnvConfigError, match="field 'weights' is .*; allowed: a state-dict file, or the checkpoint field, not both"):
        JointEnv({"model": "user_models:SepNet", "weights": str(wrapped), "checkpoint": str(tmp_path)})
    shuffle = _weights(tmp_path, "ShuffleNet")
    with pytest.raises(EnvConfigError, match=r"'user_models:ShuffleNet' has no pruning group this platform can prune \(stem.0: its chan"):
        PruneEnv({"model": "user_models:ShuffleNet", "weights": str(shuffle), "objective": "macs", **SMALL})
    empty = tmp_path / "empty.pt"
    torch.save({}, empty)
    with pytest.raises(StructureError, match="NoLayers has no Conv2d or Linear layer to compress"):
        JointEnv({"model": "user_models:NoLayers", "weights": str(empty), "objective": "macs", **SMALL})


def test_the_users_preprocessing_is_what_the_model_is_scored_with(tmp_path: Path, trained_resnet20) -> None:
    # weights trained (by us) on Fashion-MNIST padded to 32x32 and normalised with its mean/std: the same preprocessing
    # spelled out scores the same, none at all (pixels in [0, 1]) or no padding (28x28) scores lower
    weights = tmp_path / "resnet20.pt"
    torch.save(trained_resnet20.model.state_dict(), weights)
    common = {"model": "resnet20", "weights": str(weights), "objective": "macs", **SMALL, "val_size": 1000}
    own = JointEnv(common).ctx
    spelled = JointEnv({**common, "mean": [0.2860], "std": [0.3530], "pad": 2, "input_size": 32}).ctx
    raw = JointEnv({**common, "normalize": False}).ctx
    unpadded = JointEnv({**common, "pad": 0}).ctx
    assert spelled.reference_accuracy == own.reference_accuracy > 0.7
    assert raw.reference_accuracy < own.reference_accuracy - 0.1, (raw.reference_accuracy, own.reference_accuracy)
    assert tuple(unpadded.example.shape) == (1, 1, 28, 28) and tuple(unpadded.structure.input_shape) == (1, 1, 28, 28)
    assert unpadded.reference_accuracy != own.reference_accuracy


@pytest.mark.own_process  # starts Ray: a fresh interpreter (tests/conftest.py)
def test_galen_compress_from_user_weights_to_an_artifact_and_a_rerun_continues(tmp_path: Path, fmnist, capsys) -> None:
    weights = _weights(tmp_path, "ShuffleNet")
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({"env": {"objective": "bops", **SMALL}, "agent": {"algo": "random"}}))
    out = tmp_path / "out"
    argv = ["compress", "--model", "user_models:ShuffleNet", "--weights", str(weights), "--config", str(config), "--budget", "0.7",
            "--episodes", "3", "--finetune-steps", "2", "--out", str(out), "--no-progress",
            "--pad", "0", "--no-normalize"]  # fmt: skip  # a model trained elsewhere on raw 28x28 pixels
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    assert "given model user_models:ShuffleNet: test accuracy" in text and "(sha256 " in text
    assert "inputs 1x28x28 (pad=0, normalize=False)" in text and "the artifact's input: a batch of 1x28x28" in text
    import onnx

    dims = onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1:] == [1, 28, 28]
    for row in ("test accuracy", "latency on local-cpu", "size", "artifact:", "frozen (not pruned, still quantizable): stem.0, g1.0"):
        assert row in text, row
    state = json.loads((out / "compress.json").read_text())
    assert state["status"] == "finished" and state["weights_sha256"] and "g1.0" in state["frozen"]
    assert state["compressed"]["artifact_bytes"] == (out / "model.onnx").stat().st_size
    assert (out / "policy.json").is_file()
    report = (out / "report" / "report.md").read_text()
    assert "## Frozen pruning groups" in report and "- `g1.0`: a reshape or view between its layers mixes channels" in report
    assert len([line for line in (out / "episodes.jsonl").read_text().splitlines() if line]) >= 3
    finetuned = (out / "finetune" / "finetune.json").stat().st_mtime_ns
    assert cli_main(argv) == 0  # the same command again: nothing re-run, the table again
    assert "size" in capsys.readouterr().out
    assert (out / "finetune" / "finetune.json").stat().st_mtime_ns == finetuned


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--budget", "fast"],
            r"--budget is 'fast'; allowed: a fraction of the uncompressed latency in \(0, 1\] \(0.5\) or a latency in ms",
        ),
        (["--budget", "1.5"], r"--budget is '1.5'; allowed"),
        (["--episodes", "0"], r"--episodes is 0; allowed: an integer >= 1"),
        (["--weights", "/nonexistent/model.pt", "--model", "user_models:SepNet"], r"--weights /nonexistent/model.pt: no such file"),
        (["--target", "tpu-v9"], r"unknown hardware target 'tpu-v9'"),
        (["--dataset", "/nonexistent/images"], r"--dataset /nonexistent/images: no such directory"),
        (["--pad", "0"], r"--pad \(workload.pad\) is 0; allowed: the dataset's own \(null\) unless the model is your own"),
        (["--mean", "0.5,x"], r"--mean is '0.5,x'; allowed: numbers separated by commas"),
        (["--weights", "{w}", "--mean", "0.5"], r"--std \(workload.std\) is None; allowed: given with the other of mean and std"),
    ],
)
def test_compress_errors_name_the_flag(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    argv = [str(_weights(tmp_path, "SepNet")) if a == "{w}" else a for a in argv]
    assert cli_main(["compress", "--out", str(tmp_path / "out"), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("galen compress: error: ") and len(err.strip().splitlines()) == 1, err
    assert __import__("re").search(message, err), err
