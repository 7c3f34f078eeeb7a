"""Benchmarks: speed, memory and quality targets measured on this machine, with written results."""
