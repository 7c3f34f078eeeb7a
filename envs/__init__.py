"""Gymnasium environments (later issue): pruning, quantization and joint compression, features, sensitivity, rewards."""
