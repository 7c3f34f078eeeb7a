"""The core's peak multiply-accumulate throughput in ONNX Runtime, fp32 and int8, one thread.

Square matrix multiplies (``MatMul`` for fp32, ``MatMulInteger`` uint8 x int8 -> int32 for int8)
of several sizes, large enough to be compute bound, the second operand a constant as a layer's weights
are, timed like a model on the target (one thread, warm-up, median of repeated runs); the fastest size
is the peak. ``floor_ms`` turns a model's MACs per precision into its latency floor: the time
the arithmetic alone needs at peak, with no memory traffic, no per-operator overhead.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

# How the peak is measured; a stored peak measured another way is re-measured on its own CPU (older ones are kept).
METHOD = "fastest of n x n x n for n in sizes; B a constant initializer (prepacked, like a layer's weights)"


def _matmul_model(n: int, integer: bool, b: np.ndarray) -> bytes:
    """``a @ B`` with B stored in the graph, so that ONNX Runtime prepacks it as it does a layer's weights."""
    if integer:
        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])
        y = helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    else:
        a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
    graph = helper.make_graph([node], "peak", [a], [y], initializer=[numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _rate(n: int, integer: bool, options: ort.SessionOptions, repeats: int, warmup: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    if integer:
        a = rng.integers(0, 255, (n, n), dtype=np.uint8)
        b = rng.integers(-127, 127, (n, n), dtype=np.int8)
    else:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
    session = ort.InferenceSession(_matmul_model(n, integer, b), options, providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        session.run(None, {"a": a})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"a": a})
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"n": n, "median_s": median, "macs_per_s": n**3 / median, "min_s": min(times), "max_s": max(times)}


def matmul_peak(sizes: tuple[int, ...] = (256, 512, 1024), repeats: int = 15, warmup: int = 3) -> dict[str, Any]:
    """MACs per second of the fastest size (median of ``repeats``), fp32 and int8, ONNX Runtime on one thread.

    Several sizes because no single one is the fastest on every core (cache sizes, kernel blocking): with
    512 alone an AMD EPYC core ran the uncompressed ResNet-56 above the matrix multiply's rate.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    result: dict[str, Any] = {"method": METHOD, "sizes": list(sizes), "repeats": repeats}
    result |= {"onnxruntime": ort.__version__, "onnx": onnx.__version__}
    for name, integer in (("fp32", False), ("int8", True)):
        by_size = [_rate(n, integer, options, repeats, warmup) for n in sizes]
        best = max(by_size, key=lambda r: r["macs_per_s"])
        result[name] = {**best, "by_size": {str(r["n"]): r["macs_per_s"] for r in by_size}}
    return result


def floor_ms(macs_fp32: float, macs_int8: float, peak: dict[str, Any]) -> float:
    """Latency floor in ms: the MACs at each precision divided by the core's peak for it."""
    return 1e3 * (macs_fp32 / peak["fp32"]["macs_per_s"] + macs_int8 / peak["int8"]["macs_per_s"])
