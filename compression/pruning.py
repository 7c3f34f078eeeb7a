"""Physical channel pruning with Torch-Pruning: a genuinely smaller ``nn.Module``.

Per group, channels are ranked by group-norm importance (the L2 norm of each channel's weights
across every coupled layer, Torch-Pruning's ``GroupMagnitudeImportance(p=2)``) and the weakest
are removed from every member and consumer. Kept channel counts are rounded to ``round_to``
(default 8): odd channel counts were measured to lose most of the speed-up in ONNX Runtime, and
MobileNetV2 at 30% without rounding ran slower than unpruned.
"""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import nn

from compression.policy import CompressionPolicy
from compression.structure import ModelStructure, compressible_layers, dependency_graph, discover, pruning_groups


def kept_channels(channels: int, keep_ratio: float, round_to: int = 8) -> int:
    """Channels kept for ``keep_ratio``, rounded to a multiple of ``round_to`` (at least one multiple).

    Groups narrower than ``round_to``, or not a multiple of it, round to single channels instead.
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep ratio must be in (0, 1], got {keep_ratio}")
    step = round_to if round_to > 1 and channels % round_to == 0 and channels >= round_to else 1
    kept = int(round(keep_ratio * channels / step)) * step
    return min(channels, max(step, kept))


def prune(
    model: nn.Module, example_input: torch.Tensor, policy: CompressionPolicy, round_to: int = 8, structure: ModelStructure | None = None
) -> nn.Module:
    """Return a pruned copy of ``model`` following ``policy.keep``; ``model`` itself is untouched.

    ``structure`` is ``discover(model, example_input)``; pass it when pruning the same model repeatedly.
    """
    structure = structure or discover(model, example_input)
    policy.validate(structure)
    if all(ratio >= 1.0 for ratio in policy.keep.values()):
        return copy.deepcopy(model)
    pruned = copy.deepcopy(model).eval()
    names = compressible_layers(pruned)
    by_name = {name: module for module, name in names.items()}
    graph = dependency_graph(pruned, example_input)
    ignored = [by_name[name] for name in structure.output_layers]
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    roots = {by_name[group.name]: group for group in structure.groups}
    for root, group in pruning_groups(graph, ignored):
        # Torch-Pruning roots a group at any member; map it back to our group by membership.
        info = roots.get(root) or next(g for m, g in roots.items() if names[root] in g.members)
        channels = len(group[0].idxs)
        keep = kept_channels(channels, policy.keep_ratio(info.name), round_to)
        if keep == channels:
            continue
        scores = importance(group)  # (channels,)
        drop = torch.argsort(scores)[: channels - keep].tolist()
        graph.get_pruning_group(root, group[0].dep.handler, idxs=sorted(drop)).prune()
    return pruned
