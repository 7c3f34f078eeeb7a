"""The core's peak multiply-accumulate throughput in ONNX Runtime, fp32 and int8, one thread.

A square matrix multiply (``MatMul`` for fp32, ``MatMulInteger`` uint8 x int8 -> int32 for int8)
large enough to be compute bound, timed like a model on the target (one thread, warm-up, median of
repeated runs). ``floor_ms`` turns a model's MACs per precision into its latency floor: the time
the arithmetic alone needs at peak, with no memory traffic, no per-operator overhead.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper


def _matmul_model(n: int, integer: bool) -> bytes:
    if integer:
        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])
        b = helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])
        y = helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    else:
        a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
        b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
    graph = helper.make_graph([node], "peak", [a, b], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def matmul_peak(n: int = 512, repeats: int = 15, warmup: int = 3) -> dict[str, Any]:
    """Median MACs per second of an n x n x n matrix multiply, fp32 and int8, ONNX Runtime on one thread."""
    rng = np.random.default_rng(0)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    result: dict[str, Any] = {"n": n, "repeats": repeats, "onnxruntime": ort.__version__, "onnx": onnx.__version__}
    for name, integer in (("fp32", False), ("int8", True)):
        session = ort.InferenceSession(_matmul_model(n, integer), options, providers=["CPUExecutionProvider"])
        if integer:
            feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
        else:
            feeds = {"a": rng.standard_normal((n, n), dtype=np.float32), "b": rng.standard_normal((n, n), dtype=np.float32)}
        for _ in range(warmup):
            session.run(None, feeds)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        result[name] = {"median_s": median, "macs_per_s": n**3 / median, "min_s": min(times), "max_s": max(times)}
    return result


def floor_ms(macs_fp32: float, macs_int8: float, peak: dict[str, Any]) -> float:
    """Latency floor in ms: the MACs at each precision divided by the core's peak for it."""
    return 1e3 * (macs_fp32 / peak["fp32"]["macs_per_s"] + macs_int8 / peak["int8"]["macs_per_s"])
