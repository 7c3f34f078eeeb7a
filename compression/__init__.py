"""Compression engine: policies, layer discovery, physical pruning (Torch-Pruning), simulated and real int8
quantization, ONNX export and its precision check, costs (MACs, BOPs, bytes) and the recovery fine-tune."""
