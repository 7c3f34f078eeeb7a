"""The latency predictor: one-layer artifacts run the model's kernels, the table is cached, calibration predicts."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from compression.pipeline import compress
from compression.plan import layer_specs
from compression.policy import CompressionPolicy, Precision, uniform_policy
from compression.structure import discover
from hardware.client import LatencyClient
from hardware.layers import LayerShape, LayerSpecError, layer_artifact
from hardware.predictor import LatencyPredictor, mape
from hardware.targets import parse_target
from workloads.models import build_model

CONV = {
    "kind": "conv",
    "in_channels": 32,
    "out_channels": 64,
    "kernel": [3, 3],
    "stride": [2, 2],
    "input_hw": [16, 16],
    "output_hw": [8, 8],
}

QDQ_CONV = ["QuantizeLinear", "DequantizeLinear", "QLinearConv", "DequantizeLinear"]


def _optimised_ops(data: bytes) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"], disabled_optimizers=["WeightBiasQuantization"])
        return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


@pytest.mark.parametrize(
    ("spec", "ops", "out_shape"),
    [
        (CONV, ["Conv"], (1, 64, 8, 8)),
        ({**CONV, "int8": True}, ["QuantizeLinear", "QLinearConv", "DequantizeLinear"], (1, 64, 8, 8)),
        ({**CONV, "in_channels": 64, "groups": 64, "int8": True}, ["QuantizeLinear", "QLinearConv", "DequantizeLinear"], (1, 64, 8, 8)),
        ({"kind": "linear", "in_channels": 64, "out_channels": 10, "int8": True}, ["QuantizeLinear", "QGemm", "DequantizeLinear"], (1, 10)),
        # a downsampling shortcut: its input also feeds a one-element slice (OpenVINO's second consumer, below)
        ({**CONV, "kernel": [1, 1], "int8": True}, ["QuantizeLinear", "Slice", *QDQ_CONV[1:]], (1, 64, 8, 8)),
    ],
)
def test_layer_artifacts_run_the_kernels_of_the_compressed_model(spec: dict, ops: list[str], out_shape: tuple) -> None:
    shape = LayerShape.from_spec(spec)
    data = layer_artifact(shape)
    assert data == layer_artifact(shape)  # deterministic bytes: the latency cache recognises the layer
    assert _optimised_ops(data) == ops
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = np.zeros((1, shape.in_channels, *shape.input_hw) if shape.kind == "conv" else (1, shape.in_channels), np.float32)
    assert session.run(None, {"x": x})[0].shape == out_shape


def test_openvino_runs_every_int8_layer_artifact_of_a_resnet_in_int8() -> None:
    """The lookup table of the openvino-cpu target times one-layer artifacts through the same precision check as the
    models: every int8 layer of ResNet-20 (3x3 convs, strided 1x1 shortcuts, the classifier) must run u8/i8 there."""
    pytest.importorskip("openvino")
    from hardware.runtime import OpenVinoRuntime

    model, x = build_model("resnet20", 1, 10).eval(), torch.randn(1, 1, 32, 32)
    structure = discover(model, x)
    shapes = set()
    for keep in (1.0, 0.5):
        specs = layer_specs(structure, uniform_policy(structure, keep, 8), round_to=16)
        shapes |= {LayerShape.from_spec(spec) for spec in specs}
    assert any(s.kernel == (1, 1) and s.stride == (2, 2) for s in shapes) and all(s.int8 for s in shapes)
    runtime = OpenVinoRuntime()
    for shape in shapes:
        data = layer_artifact(shape)
        assert runtime.check(runtime.compile(data, 1, 1), data) == {"layer": "int8"}, shape


def test_bad_layer_specs() -> None:
    with pytest.raises(LayerSpecError, match=r"^layer spec: field 'kind' is 'lstm'; allowed: conv, linear$"):
        LayerShape.from_spec({**CONV, "kind": "lstm"})
    with pytest.raises(LayerSpecError, match=r"^layer spec: unknown key 'dilation'; allowed: groups, in_channels, input_hw, int8, "):
        LayerShape.from_spec({**CONV, "dilation": 2})
    with pytest.raises(LayerSpecError, match=r"^layer spec: channels 30->64 do not fit groups=4$"):
        LayerShape.from_spec({**CONV, "in_channels": 30, "groups": 4})


def test_predictor_calibrates_on_measured_models_and_predicts_unseen_policies(tmp_path: Path) -> None:
    model, x = build_model("resnet20", 1, 10).eval(), torch.randn(1, 1, 32, 32)
    calib, structure = torch.randn(16, 1, 32, 32), discover(model, x)
    target = parse_target({"name": "local-pred", "local": True, "measurement": {"warmup": 5, "rounds": 5, "runs_per_round": 30}})
    client = LatencyClient(target, cache=tmp_path / "latency.sqlite")
    rng = random.Random(0)

    def random_policy() -> CompressionPolicy:
        keep = {g.name: rng.uniform(0.2, 1.0) for g in structure.groups}
        return CompressionPolicy(keep, {layer.name: Precision(8, 8) if rng.random() < 0.5 else Precision() for layer in structure.layers})

    policies = [CompressionPolicy(), CompressionPolicy(precision={n: Precision(8, 8) for n in structure.layer_names})]
    policies += [random_policy() for _ in range(20)]
    predictor = LatencyPredictor(client, progress=False)
    new = predictor.fill(layer_specs(structure, p) for p in policies)
    # each distinct layer timed once (interleaved with the table's reference layer, itself timed once)
    assert new == len(predictor.table) > 20 and client.stats()["timings"] == new + 1
    assert predictor.fill(layer_specs(structure, p) for p in policies) == 0
    # as the environment does: each model timed interleaved with the uncompressed one, ratio x the reference's time
    # (a model's own median drifts between runs on a shared machine; the CI's run gave a fit MAPE of 20% without it)
    reference = compress(model, policies[0], x, calib, structure=structure).artifact.data
    reference_ms = client.measure(reference, reference).candidate.median_ms
    measured = [reference_ms] + [
        client.measure(compress(model, p, x, calib, structure=structure).artifact.data, reference).ratio * reference_ms
        for p in policies[1:]
    ]
    specs = [layer_specs(structure, p) for p in policies]
    calibration = predictor.calibrate(list(zip(specs[:14], measured[:14], strict=True)), anchor=(0, 1))
    assert calibration.samples == 14 and min(calibration.fp32_scale, calibration.int8_scale, calibration.switch_scale) >= 0
    error = mape([predictor.predict(s) for s in specs[14:]], measured[14:])
    assert error < 20, (error, calibration)  # bench/hardware.py measures it on 50 policies (aim <= 10%)
    # a fresh predictor over the same cache needs no new timing for the table
    timings = client.stats()["timings"]
    LatencyPredictor(client, calibration).predict(specs[7])
    assert client.stats()["timings"] == timings
