"""Hardware layer (later issue): targets, runtimes timing ONNX artifacts, latency actors on
device nodes, the latency cache and predictor."""
