"""Removing residual blocks whole (N2N-style layer removal), so that per-operator overhead goes too.

Channel pruning keeps every block: on small networks on CPUs, the fixed cost of each operator dominates, and a budget
below what the narrowest network costs cannot be met by pruning channels. A block whose output is its input plus a
branch (an identity shortcut) can be removed instead: it becomes its shortcut (``skip()`` of its module, e.g.
``nn.Identity``), and the artifact holds no operator of it. A policy drops a block by keep ratio 0 for the block's own
pruning group (``BlockInfo.group``); its layers' other decisions are then void.
"""

from __future__ import annotations

import copy
import dataclasses

from torch import nn

from compression.policy import CompressionPolicy
from compression.structure import BlockInfo, ModelStructure


def dropped(structure: ModelStructure, policy: CompressionPolicy) -> list[BlockInfo]:
    """The blocks ``policy`` drops (keep ratio 0 for their group)."""
    return [b for b in structure.blocks if policy.keep.get(b.group) == 0.0]


def without_blocks(structure: ModelStructure, blocks: list[BlockInfo]) -> ModelStructure:
    """``structure`` as it is once ``blocks`` are removed: their layers gone, their layers gone from every group, groups
    left with no member gone (a group keeps its name: policies are keyed by it)."""
    if not blocks:
        return structure
    gone = {layer for b in blocks for layer in b.layers}
    groups = []
    for g in structure.groups:
        members = tuple(m for m in g.members if m not in gone)
        if members:
            groups.append(dataclasses.replace(g, members=members, consumers=tuple(c for c in g.consumers if c not in gone)))
    names = {b.name for b in blocks}
    return dataclasses.replace(
        structure,
        layers=tuple(layer for layer in structure.layers if layer.name not in gone),
        groups=tuple(groups),
        blocks=tuple(b for b in structure.blocks if b.name not in names),
    )


def without_decisions(policy: CompressionPolicy, blocks: list[BlockInfo]) -> CompressionPolicy:
    """``policy`` without the decisions of ``blocks``' layers (their groups' keep 0, their layers' precisions)."""
    if not blocks:
        return policy
    gone = {layer for b in blocks for layer in b.layers}
    groups = {b.group for b in blocks}
    return CompressionPolicy(
        {g: r for g, r in policy.keep.items() if g not in groups}, {n: p for n, p in policy.precision.items() if n not in gone}
    )


def drop_blocks(
    model: nn.Module, structure: ModelStructure, policy: CompressionPolicy
) -> tuple[nn.Module, ModelStructure, CompressionPolicy]:
    """A copy of ``model`` with the blocks ``policy`` drops replaced by their ``skip()``, the structure of that copy and
    the policy without the dropped blocks' decisions; ``model`` itself is untouched (returned as is when none drops)."""
    blocks = dropped(structure, policy)
    if not blocks:
        return model, structure, policy
    model = copy.deepcopy(model)
    for block in blocks:
        parent_name, _, child = block.name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, model.get_submodule(block.name).skip())
    return model, without_blocks(structure, blocks), without_decisions(policy, blocks)
