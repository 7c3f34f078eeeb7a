"""Compression engine (later issue): policies, layer discovery, physical pruning, quantization,
ONNX export, costs and fine-tuning."""
