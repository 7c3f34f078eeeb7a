"""What a policy will produce, computed from the structure alone (no pruning, no export).

``planned_structure`` gives the layer shapes, MACs and parameters the pruned model will have, so
analytic costs (``planned_costs``) and the latency predictor's layer specs (``layer_specs``) are
available in microseconds, before anything is built: the environments' budget guard and the
predictor use them. Tests check them against the real pruned model for every registered model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from compression.costs import Costs, costs
from compression.policy import CompressionPolicy
from compression.pruning import kept_channels
from compression.structure import LayerInfo, ModelStructure


def _planned_layer(layer: LayerInfo, out_channels: int, in_channels: int) -> LayerInfo:
    if layer.kind == "depthwise":
        in_channels = groups = out_channels
    elif layer.kind == "grouped":
        groups = layer.groups
    else:
        groups = 1
    per_group_in = in_channels // groups
    kh, kw = layer.kernel
    if layer.kind == "linear":
        macs = in_channels * out_channels
        weights = macs
    else:
        weights = out_channels * per_group_in * kh * kw
        macs = weights * layer.output_hw[0] * layer.output_hw[1]
    original_weights = layer.out_channels * (layer.in_channels // layer.groups) * kh * kw
    bias = out_channels if layer.params > original_weights else 0
    return dataclasses.replace(layer, in_channels=in_channels, out_channels=out_channels, groups=groups, macs=macs, params=weights + bias)


def planned_structure(structure: ModelStructure, policy: CompressionPolicy, round_to: int = 8) -> ModelStructure:
    """The structure of ``prune(model, x, policy, round_to)`` without pruning (the policy is validated first)."""
    from compression.blocks import dropped, without_blocks, without_decisions

    policy.validate(structure)
    blocks = dropped(structure, policy)
    structure, policy = without_blocks(structure, blocks), without_decisions(policy, blocks)
    kept = {g.name: kept_channels(g.channels, policy.keep_ratio(g.name), round_to) for g in structure.groups}
    out_of: dict[str, int] = {}  # layer -> kept output channels
    feeds: dict[str, list[tuple[int, int]]] = {}  # consumer layer -> (original, kept) channels of each group it reads
    for group in structure.groups:
        for member in group.members:
            out_of[member] = kept[group.name]
        for consumer in group.consumers:
            feeds.setdefault(consumer, []).append((group.channels, kept[group.name]))
    layers = []
    for layer in structure.layers:
        out_channels = out_of.get(layer.name, layer.out_channels)
        in_channels = layer.in_channels
        if layer.name in feeds:
            # a concatenation feeds a layer from several groups (and from frozen ones); a Linear after flatten sees
            # channels x spatial positions
            total = sum(original for original, _ in feeds[layer.name])
            removed = sum(original - new for original, new in feeds[layer.name])
            positions = layer.in_channels // total if layer.kind == "linear" and layer.in_channels % total == 0 else 1
            in_channels = layer.in_channels - removed * positions
        layers.append(_planned_layer(layer, out_channels, in_channels))
    groups = tuple(dataclasses.replace(g, channels=kept[g.name]) for g in structure.groups)
    return dataclasses.replace(structure, layers=tuple(layers), groups=groups)


def planned_costs(structure: ModelStructure, policy: CompressionPolicy, round_to: int = 8) -> Costs:
    """MACs, BOPs, parameters and weight bytes the compressed model will have (no artifact size)."""
    return costs(planned_structure(structure, policy, round_to), policy)


def layer_specs(structure: ModelStructure, policy: CompressionPolicy, round_to: int = 8) -> list[dict[str, Any]]:
    """Per compressible layer of the compressed model, the plain description the latency predictor takes.

    Keys: kind, in_channels, out_channels, kernel, stride, groups, input_hw, output_hw, int8 (whether the
    layer runs int8 kernels). This is the contract with ``hardware.predictor``, which sees no torch.
    """
    return [
        {
            "kind": "linear" if layer.kind == "linear" else "conv",
            "in_channels": layer.in_channels,
            "out_channels": layer.out_channels,
            "kernel": list(layer.kernel),
            "stride": list(layer.stride),
            "groups": layer.groups,
            "input_hw": list(layer.input_hw),
            "output_hw": list(layer.output_hw),
            "int8": policy.precision_of(layer.name).runs_int8,
        }
        for layer in planned_structure(structure, policy, round_to).layers
    ]
