"""Applying a policy end to end: prune, recalibrate, (simulate quantization), export, quantize for real."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compression.blocks import dropped, without_decisions
from compression.costs import Costs, costs
from compression.export import Artifact, build_artifact, export_onnx
from compression.policy import CompressionPolicy
from compression.pruning import prune
from compression.quant_sim import SimulatedQuantization, attach_fake_quant
from compression.structure import ModelStructure, discover


@dataclass
class Compressed:
    """A compressed model: the pruned float module, its structure and costs, and the deployable artifact."""

    model: nn.Module  # pruned, float (fine-tune it with ``simulate()`` attached)
    structure: ModelStructure  # of the pruned model
    policy: CompressionPolicy
    artifact: Artifact | None
    costs: Costs
    seconds: dict[str, float] = field(default_factory=dict)  # time per stage

    def simulate(self, calibration: torch.Tensor) -> SimulatedQuantization:
        """Attach fake quantization per the policy (remove it with ``.remove()``)."""
        return attach_fake_quant(self.model, self.policy, calibration)


def compress(
    model: nn.Module,
    policy: CompressionPolicy,
    example_input: torch.Tensor,
    calibration: torch.Tensor,
    *,
    round_to: int = 8,
    build: bool = True,
    structure: ModelStructure | None = None,
) -> Compressed:
    """Prune a copy of ``model`` per ``policy`` and build its int8/fp32 ONNX artifact (``build=False`` skips it).

    ``calibration`` (N, C, H, W), normalised like the model's inputs, calibrates the int8 activation ranges.
    ``structure`` is ``discover(model, example_input)``; a caller compressing the same model many times (a
    search) passes it once instead of re-tracing every call.
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    base = structure or discover(model, example_input)
    policy.validate(base)
    pruned = prune(model, example_input, policy, round_to, structure=base).eval()
    pruned_structure = discover(pruned, example_input) if any(r < 1.0 for r in policy.keep.values()) else base
    policy = without_decisions(policy, dropped(base, policy))  # a dropped block's layers are gone from the artifact
    seconds["prune"] = time.perf_counter() - start
    artifact = None
    if build:
        start = time.perf_counter()
        exported = export_onnx(pruned, example_input, layer_names=pruned_structure.layer_names)
        seconds["export"] = time.perf_counter() - start
        start = time.perf_counter()
        artifact = build_artifact(exported, policy, calibration.numpy())
        seconds["quantize"] = time.perf_counter() - start
    size = artifact.size_bytes if artifact else None
    return Compressed(pruned, pruned_structure, policy, artifact, costs(pruned_structure, policy, size), seconds)


def build(compressed: Compressed, example_input: torch.Tensor, calibration: torch.Tensor) -> Compressed:
    """Export and quantize ``compressed.model`` as it is now (after batch-norm recalibration or fine-tuning)."""
    start = time.perf_counter()
    exported = export_onnx(compressed.model.eval(), example_input, layer_names=compressed.structure.layer_names)
    compressed.seconds["export"] = time.perf_counter() - start
    start = time.perf_counter()
    compressed.artifact = build_artifact(exported, compressed.policy, calibration.numpy())
    compressed.seconds["quantize"] = time.perf_counter() - start
    compressed.costs = costs(compressed.structure, compressed.policy, compressed.artifact.size_bytes)
    return compressed


def policy_accuracy(compressed: Compressed, batches: Any, calibration: torch.Tensor, threads: int = 1) -> float:
    """Top-1 accuracy of ``compressed`` at the precisions its policy asks for, over (images, labels) batches.

    The artifact's (ONNX Runtime, the real int8 kernels) when it runs every layer as asked; otherwise the pruned model
    with the policy's bits simulated in torch: CPU kernels run 2..7 bits as int8, and a layer quantized on one side only
    in float, so the artifact would score a 4-bit policy (the size objectives') as if it were int8.
    """
    from compression.export import evaluate_onnx
    from workloads.training import evaluate

    if not compressed.policy.simulated_layers():
        if compressed.artifact is None:
            raise ValueError("the compressed model has no artifact to score; build it first")
        return evaluate_onnx(compressed.artifact.data, batches, threads=threads)
    simulation = compressed.simulate(calibration)
    try:
        with torch.no_grad():
            return evaluate(compressed.model, batches)[1]
    finally:
        simulation.remove()


def finetune_and_build(compressed: Compressed, data: Any, example_input: torch.Tensor, calibration: torch.Tensor, **options: Any) -> Any:
    """The recovery every caller runs the same way: fine-tune ``compressed.model`` with the policy's quantization
    simulated (``compression.finetune.finetune``'s ``options``: steps or epochs, lr, batch_size, teacher, seed,
    progress), take the simulation off and build the artifact again; returns the training history."""
    from compression.finetune import finetune

    simulation = compressed.simulate(calibration)
    try:
        history = finetune(compressed.model, data, **options)
    finally:
        simulation.remove()
    build(compressed, example_input, calibration)
    return history
