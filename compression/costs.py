"""Cost metrics of a (compressed) model under a policy: MACs, BOPs, parameters, weight bytes, artifact bytes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from compression.policy import CompressionPolicy
from compression.structure import ModelStructure


@dataclass(frozen=True)
class Costs:
    """Per-image costs at batch 1."""

    macs: int  # multiply-accumulates of the compressible layers
    bops: int  # bit operations: sum over layers of MACs x weight bits x activation bits (fp32 counts 32 x 32)
    params: int  # weights + biases of the compressible layers
    weight_bytes: float  # weights at the policy's bit widths, biases at 32 bits
    artifact_bytes: int | None = None  # size of the deployable ONNX file, when built

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def costs(structure: ModelStructure, policy: CompressionPolicy, artifact_bytes: int | None = None) -> Costs:
    """Costs of the model described by ``structure`` (already pruned) at ``policy``'s precisions."""
    macs = bops = params = 0
    weight_bytes = 0.0
    for layer in structure.layers:
        precision = policy.precision_of(layer.name)
        macs += layer.macs
        bops += layer.macs * precision.weight_bits * precision.activation_bits
        params += layer.params
        weights = layer.out_channels * (layer.in_channels // layer.groups) * layer.kernel[0] * layer.kernel[1]
        weight_bytes += weights * precision.weight_bits / 8 + (layer.params - weights) * 4
    return Costs(macs, bops, params, weight_bytes, artifact_bytes)
