"""Single-layer ONNX artifacts for the latency lookup table, built with ``onnx.helper`` (no torch).

A layer is described by a plain mapping (``compression.plan.layer_specs`` writes them): kind
("conv" or "linear"), channels, kernel, stride, groups, input and output size, and whether it runs
int8. The fp32 artifact is one Conv (or Gemm); the int8 artifact is the QDQ pattern ONNX Runtime's
static quantizer writes for the full model (uint8 activations, per-channel int8 weights, int32
bias), which ONNX Runtime fuses into QLinearConv (QGemm for linear layers), so the table times the
same kernels the compressed model runs. A strided 1x1 int8 conv (a downsampling shortcut) also hands its
quantized input to a one-element slice, as the block's first conv shares it in the model: alone, OpenVINO
rewrites it into pooling + conv and runs it in f32. Weights are drawn from a seed derived from the shape, so
the same shape always serialises to the same bytes and hits the latency cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
KINDS = ("conv", "linear")


class LayerSpecError(ValueError):
    """A layer description the lookup table cannot build."""


@dataclass(frozen=True)
class LayerShape:
    """One layer as the latency table sees it: shapes and precision, nothing else."""

    kind: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    groups: int = 1
    input_hw: tuple[int, int] = (1, 1)
    output_hw: tuple[int, int] = (1, 1)
    int8: bool = False

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> LayerShape:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(spec) - known)
        if unknown:
            raise LayerSpecError(f"layer spec: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(known))}")
        if spec.get("kind") not in KINDS:
            raise LayerSpecError(f"layer spec: field 'kind' is {spec.get('kind')!r}; allowed: {', '.join(KINDS)}")
        values = {k: tuple(int(v) for v in spec[k]) if k in ("kernel", "stride", "input_hw", "output_hw") else spec[k] for k in spec}
        shape = cls(**values)
        if shape.in_channels < 1 or shape.out_channels < 1 or shape.in_channels % shape.groups or shape.out_channels % shape.groups:
            raise LayerSpecError(f"layer spec: channels {shape.in_channels}->{shape.out_channels} do not fit groups={shape.groups}")
        return shape

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def padding(self) -> list[int]:
        """Symmetric padding that maps input_hw to output_hw (as the model's convs do)."""
        pads = []
        for size_in, size_out, k, s in zip(self.input_hw, self.output_hw, self.kernel, self.stride, strict=True):
            total = max(0, (size_out - 1) * s + k - size_in)
            pads.append((total + 1) // 2)
        return pads + pads


def _seed(shape: LayerShape) -> int:
    return int.from_bytes(hashlib.sha256(shape.key.encode()).digest()[:4], "little")


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def layer_artifact(shape: LayerShape) -> bytes:
    """Serialised ONNX model of one layer (batch axis symbolic), fp32 or int8 QDQ."""
    rng = np.random.default_rng(_seed(shape))
    if shape.kind == "linear":
        w_shape = (shape.out_channels, shape.in_channels)
        x_shape: list[Any] = ["N", shape.in_channels]
        y_shape: list[Any] = ["N", shape.out_channels]
    else:
        w_shape = (shape.out_channels, shape.in_channels // shape.groups, *shape.kernel)
        x_shape = ["N", shape.in_channels, *shape.input_hw]
        y_shape = ["N", shape.out_channels, *shape.output_hw]
    weight = (rng.standard_normal(w_shape) * 0.1).astype(np.float32)
    bias = (rng.standard_normal(shape.out_channels) * 0.01).astype(np.float32)
    nodes, inits = [], []
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)]

    def op(inputs: list[str], output: str) -> onnx.NodeProto:
        if shape.kind == "linear":
            return helper.make_node("Gemm", inputs, [output], name="layer", transB=1)
        return helper.make_node(
            "Conv", inputs, [output], name="layer", kernel_shape=list(shape.kernel), strides=list(shape.stride),
            pads=shape.padding(), group=shape.groups,
        )  # fmt: skip

    if not shape.int8:
        inits += [_init("w", weight), _init("b", bias)]
        nodes.append(op(["x", "w", "b"], "y"))
    else:
        x_scale, y_scale = np.float32(4.0 / 255), np.float32(8.0 / 255)
        w_scale = (np.abs(weight).reshape(shape.out_channels, -1).max(axis=1) / 127).astype(np.float32)
        w_int8 = np.clip(np.round(weight / w_scale.reshape(-1, *[1] * (weight.ndim - 1))), -127, 127).astype(np.int8)
        b_scale = (x_scale * w_scale).astype(np.float32)
        b_int32 = np.round(bias / b_scale).astype(np.int32)
        inits += [
            _init("x_scale", np.array(x_scale)), _init("x_zp", np.array(128, np.uint8)),
            _init("y_scale", np.array(y_scale)), _init("y_zp", np.array(128, np.uint8)),
            _init("w_q", w_int8), _init("w_scale", w_scale), _init("w_zp", np.zeros(shape.out_channels, np.int8)),
            _init("b_q", b_int32), _init("b_scale", b_scale), _init("b_zp", np.zeros(shape.out_channels, np.int32)),
        ]  # fmt: skip
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"]),
            helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]),
            helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], axis=0),
            helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b_dq"], axis=0),
            op(["x_dq", "w_dq", "b_dq"], "y_f"),
            helper.make_node("QuantizeLinear", ["y_f", "y_scale", "y_zp"], ["y_q"]),
            helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zp"], ["y"]),
        ]
        if shape.kind == "conv" and shape.kernel == (1, 1) and shape.stride != (1, 1):
            # A strided 1x1 conv (a ResNet's downsampling shortcut) whose quantized input has no other consumer,
            # OpenVINO rewrites into pooling + conv and runs in f32; in the model the block's input also feeds its
            # first conv, and it runs u8. A one-element slice of the input is that second consumer (ONNX Runtime
            # still fuses the conv into QLinearConv; the slice costs next to nothing).
            inits += [_init("tap_start", np.zeros(4, np.int64)), _init("tap_end", np.ones(4, np.int64))]
            nodes.append(helper.make_node("Slice", ["x_dq", "tap_start", "tap_end"], ["tap"]))
            outputs.append(helper.make_tensor_value_info("tap", TensorProto.FLOAT, ["N", 1, 1, 1]))
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="galen-latency-table")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
