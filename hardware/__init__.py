"""Hardware layer: targets (YAML), runtimes timing ONNX artifacts (ONNX Runtime, OpenVINO), the measurement protocol,
latency actors on device nodes, the latency cache and the per-layer latency predictor. No torch."""
