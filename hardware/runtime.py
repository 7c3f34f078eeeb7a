"""Runtimes that execute a deployable ONNX artifact on the device: ONNX Runtime (x86 and aarch64) and OpenVINO.

A runtime is one class: ``name``, ``version``, ``prepare`` (load the artifact, fix an input, return
something to time by calling it) and a check of what each layer actually runs (OpenVINO: ``check``, called
by ``prepare``; ONNX Runtime's is ``compression.export.verify_artifact``, run when the artifact is built).
Adding one (TVM, LiteRT, ExecuTorch) is such a class in ``RUNTIME_CLASSES`` plus a target YAML that
names it (``docs/hardware.md``). Every runtime times the same artifact: one ONNX file with int8 layers
as QuantizeLinear/DequantizeLinear pairs (QDQ) around them, float layers without.

A device node needs only its runtime, numpy and (for OpenVINO's precision check) onnx: this module
imports no torch and no ``compression``. ONNX Runtime sessions use the same settings as the
artifact's precision check in ``compression.export``: pinned intra-op threads, one inter-op thread,
sequential execution, and ``disabled_optimizers=["WeightBiasQuantization"]`` so float layers stay
float. OpenVINO runs with its latency hint, one stream, the target's threads and float layers in f32
(its default on CPUs with bf16 would run them in bf16, a different model than the artifact).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]


@dataclass(frozen=True)
class Prepared:
    """A loaded artifact with a fixed input, ready to be timed by calling ``run()``."""

    run: Callable[[], object]
    input_name: str
    input_shape: tuple[int, ...]


class OnnxRuntime:
    """ONNX Runtime on the CPU."""

    name = "onnxruntime"

    @property
    def version(self) -> str:
        return ort.__version__

    def prepare(self, data: bytes, threads: int, batch_size: int, seed: int = 0) -> Prepared:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED_OPTIMIZERS)
        spec = session.get_inputs()[0]
        # symbolic dimensions (the dynamic batch axis) take the target's batch size
        shape = tuple(d if isinstance(d, int) else batch_size for d in spec.shape)
        feed = {spec.name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}
        return Prepared(lambda: session.run(None, feed), spec.name, shape)


class RuntimePrecisionError(RuntimeError):
    """A layer the runtime runs in another precision than the artifact asks (or that it cannot find)."""


class RuntimeMissingError(RuntimeError):
    """The target's runtime is not installed on this node; the message names the extra that installs it."""


WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def intended_precisions(data: bytes) -> dict[str, tuple[str, set[str]]]:
    """Per weighted ONNX node of the artifact: "int8" when its weight comes through a DequantizeLinear (QDQ), else
    "fp32", with the names OpenVINO may report it under (the node's name and its outputs' names)."""
    import onnx

    graph = onnx.load_from_string(data).graph
    producer = {out: node for node in graph.node for out in node.output}
    result = {}
    for node in graph.node:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1:
            source = producer.get(node.input[1])
            int8 = source is not None and source.op_type == "DequantizeLinear"
            result[node.name] = ("int8" if int8 else "fp32", {node.name, *node.output})
    return result


class OpenVinoRuntime:
    """OpenVINO on the CPU (``pip install -e '.[openvino]'``): the same QDQ artifact, read from memory."""

    name = "openvino"
    # OpenVINO's runtime precision per executed op -> what the policy calls it
    LABELS = {"u8": "int8", "i8": "int8", "f32": "fp32"}  # others (bf16, f16) keep OpenVINO's name

    def __init__(self) -> None:
        try:
            import openvino
        except ImportError as error:
            raise RuntimeMissingError(
                "runtime 'openvino' is not installed on this node; install it with: pip install -e '.[openvino]'"
            ) from error
        self._ov = openvino

    @property
    def version(self) -> str:
        return self._ov.__version__

    def compile(self, data: bytes, threads: int, batch_size: int) -> Any:
        core = self._ov.Core()
        model = core.read_model(data)
        shape = [batch_size if d.is_dynamic else d.get_length() for d in model.inputs[0].get_partial_shape()]
        model.reshape({model.inputs[0]: shape})
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
        return core.compile_model(model, "CPU", config)

    def prepare(self, data: bytes, threads: int, batch_size: int, seed: int = 0) -> Prepared:
        compiled = self.compile(data, threads, batch_size)
        self.check(compiled, data)  # what is timed is the artifact: no layer in a precision it does not ask
        port = compiled.inputs[0]
        shape = tuple(port.get_shape())
        request = compiled.create_infer_request()
        request.set_input_tensor(self._ov.Tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32)))
        return Prepared(request.infer, port.get_any_name(), shape)

    def precisions(self, compiled: Any, intended: dict[str, tuple[str, set[str]]]) -> dict[str, str]:
        """Per weighted ONNX node (``intended_precisions`` of the artifact): the precision OpenVINO's compiled model runs
        it in (its runtime model's ``runtimePrecision``), found by the node's or its outputs' names among each op's
        ``originalLayersNames``."""
        executed = []
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if info["layerType"].astype(str) in ("Convolution", "FullyConnected", "MatMul", "Deconvolution", "GroupConvolution"):
                names = info["originalLayersNames"].astype(str).split(",")
                executed.append((names, info["runtimePrecision"].astype(str)))
        result = {}
        for node, (_, aliases) in intended.items():
            found = [p for names, p in executed if any(n.split("/WithoutBiases")[0] in aliases for n in names)]
            if not found:
                raise RuntimePrecisionError(f"ONNX node {node!r}: not found among the layers OpenVINO compiled")
            result[node] = self.LABELS.get(found[0], found[0])
        return result

    def check(self, compiled: Any, data: bytes) -> dict[str, str]:
        """``precisions``, raising RuntimePrecisionError at the first layer that runs otherwise than the artifact asks."""
        intended = intended_precisions(data)  # parsed once for both the lookup and the comparison
        runs = self.precisions(compiled, intended)
        for node, (asked, _) in intended.items():
            if runs[node] != asked:
                raise RuntimePrecisionError(
                    f"ONNX node {node!r}: the artifact asks {asked} but OpenVINO runs it in {runs[node]} (a timing of "
                    "this model would not be a timing of the artifact)"
                )
        return runs


RUNTIME_CLASSES = {"onnxruntime": OnnxRuntime, "openvino": OpenVinoRuntime}


def get_runtime(name: str) -> OnnxRuntime | OpenVinoRuntime:
    if name not in RUNTIME_CLASSES:
        raise ValueError(f"unknown runtime {name!r}; available: {', '.join(RUNTIME_CLASSES)}")
    return RUNTIME_CLASSES[name]()
