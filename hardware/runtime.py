"""Runtimes that execute a deployable ONNX artifact on the device: ONNX Runtime (x86 and aarch64).

A device node needs only ONNX Runtime and numpy: this module imports no torch and no
``compression``. Sessions use the same settings as the artifact's precision check in
``compression.export``: pinned intra-op threads, one inter-op thread, sequential execution, and
``disabled_optimizers=["WeightBiasQuantization"]`` so float layers stay float.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


RUNTIME_CLASSES = {"onnxruntime": OnnxRuntime}


def get_runtime(name: str) -> OnnxRuntime:
    if name not in RUNTIME_CLASSES:
        raise ValueError(f"unknown runtime {name!r}; available: {', '.join(RUNTIME_CLASSES)}")
    return RUNTIME_CLASSES[name]()
