"""Workloads: models, datasets, base-model training and the checkpoint store (no RL, no Ray)."""
