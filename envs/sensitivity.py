"""Per-layer sensitivity: how far the model's outputs move when only that layer (or group) is compressed.

For each pruning group and keep ratio 1.0, 0.9, ..., 0.1, and for each layer and each quantized
precision option, the KL divergence KL(p || q) between the softmax outputs of the uncompressed model
(p) and of the model with only that unit compressed (q), averaged over a fixed batch of training
images. Computed once per (checkpoint, dataset, precision options, images) and cached as JSON under
``$GALEN_HOME/sensitivity``, written atomically (processes that need the same key at once compute it once: a file
lock); a progress bar shows the work.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from compression.policy import CompressionPolicy, Precision
from compression.pruning import kept_channels, prune
from compression.quant_sim import attach_fake_quant
from compression.structure import ModelStructure
from envs.jsonio import write_json

KEEP_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)


def _kl(p_log: torch.Tensor, q_logits: torch.Tensor) -> float:
    q_log = torch.log_softmax(q_logits, dim=1)
    return float(torch.sum(p_log.exp() * (p_log - q_log), dim=1).mean())


def compute_sensitivity(
    model: nn.Module,
    structure: ModelStructure,
    images: torch.Tensor,
    precisions: list[Precision],
    round_to: int = 8,
    progress: bool | None = None,
) -> dict[str, dict[str, list[float]]]:
    """``{"prune": {group: [KL at each of KEEP_RATIOS]}, "quantize": {layer: [KL at each precision]}}``."""
    model = model.eval()
    x = images[:1]
    with torch.no_grad():
        p_log = torch.log_softmax(model(images), dim=1)
    work = len(structure.groups) * (len(KEEP_RATIOS) - 1) + len(structure.layers) * len(precisions)
    bar = tqdm(total=work, desc="sensitivity", unit="model", disable=None if progress is None else not progress)
    result: dict[str, dict[str, list[float]]] = {"prune": {}, "quantize": {}}
    for group in structure.groups:
        values = [0.0]
        by_width = {group.channels: 0.0}  # ratios that round to the same width prune the same channels: one model each
        for ratio in KEEP_RATIOS[1:]:
            width = kept_channels(group.channels, ratio, round_to)
            if width not in by_width:
                pruned = prune(model, x, CompressionPolicy(keep={group.name: ratio}), round_to, structure=structure)  # traces with autograd
                with torch.no_grad():
                    by_width[width] = _kl(p_log, pruned(images))
            values.append(by_width[width])
            bar.update()
        result["prune"][group.name] = values
    for layer in structure.layers:
        values = []
        for precision in precisions:
            sim = attach_fake_quant(model, CompressionPolicy(precision={layer.name: precision}), images)
            with torch.no_grad():
                values.append(_kl(p_log, model(images)))
            sim.remove()
            bar.update()
        result["quantize"][layer.name] = values
    bar.close()
    return result


def cached_sensitivity(
    cache_dir: Path,
    identity: dict,
    model: nn.Module,
    structure: ModelStructure,
    images: torch.Tensor,
    precisions: list[Precision],
    round_to: int = 8,
) -> dict[str, dict[str, list[float]]]:
    """``compute_sensitivity`` cached on disk under a key made of ``identity`` (checkpoint, dataset, ...) and the settings."""
    key_data = {  # as JSON gives it back (tuples become lists), so a stored key compares equal
        **identity,
        "precisions": [[p.weight_bits, p.activation_bits] for p in precisions],
        "images": len(images),
        "round_to": round_to,
        "keep_ratios": KEEP_RATIOS,
    }
    key_data = json.loads(json.dumps(key_data, sort_keys=True))
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"{key}.json"
    cache_dir.mkdir(parents=True, exist_ok=True)
    # One process computes a key, the others wait for its file (a study's cells on one machine start together: two
    # trials of the benchmark's test each spent 36 s of the same 2 cores on the same analysis).
    with open(cache_dir / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored.get("key") == key_data:
                return stored["sensitivity"]
        result = compute_sensitivity(model, structure, images, precisions, round_to)
        write_json(path, {"key": key_data, "sensitivity": result}, indent=None)
        return result
