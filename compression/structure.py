"""Layer discovery and pruning groups, from a model and an example input.

Compressible layers are Conv2d (plain, depthwise, grouped) and Linear, listed in execution
order with their shapes and costs at batch 1. Pruning groups come from Torch-Pruning's
dependency graph: output channels coupled by a residual addition or a depthwise convolution
form one group and get one decision. Each group is named after its first member in execution
order (``conv1``, ``layers.1.0.conv2``), so names are stable and readable. The layers whose
outputs are the model's outputs (the classifier) are never pruned, and the input channels of
the first layer are fixed by the data, which Torch-Pruning never prunes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

COMPRESSIBLE = (nn.Conv2d, nn.Linear)


class StructureError(ValueError):
    """A model whose layers cannot be discovered or compressed as asked."""


@dataclass(frozen=True)
class LayerInfo:
    """One compressible layer, measured at batch 1."""

    name: str
    kind: str  # "conv", "depthwise", "grouped" or "linear"
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    output_hw: tuple[int, int]  # spatial size of the output ((1, 1) for linear layers)
    macs: int  # multiply-accumulates per image
    params: int  # weights + bias
    input_hw: tuple[int, int] = (1, 1)  # spatial size of the input ((1, 1) for linear layers)


@dataclass(frozen=True)
class PruningGroup:
    """Output channels that must be pruned together (one decision)."""

    name: str
    channels: int
    members: tuple[str, ...]  # layers whose output channels this group removes (execution order)
    consumers: tuple[str, ...]  # layers whose input channels shrink with it


@dataclass(frozen=True)
class BlockInfo:
    """A residual block that can be removed whole (N2N): its output is its input plus a branch, so without the branch it
    is its shortcut. Its module says so by a ``skip()`` method returning what stands in for it (``nn.Identity()``);
    dropping it is keep ratio 0 for ``group``, the pruning group inside it (every member and consumer in the block)."""

    name: str  # the block's module name
    layers: tuple[str, ...]  # its compressible layers, in execution order
    group: str  # the pruning group whose keep ratio 0 drops the block


@dataclass(frozen=True)
class ModelStructure:
    """What can be compressed in a model: its layers and its pruning groups, in execution order."""

    layers: tuple[LayerInfo, ...]
    groups: tuple[PruningGroup, ...]
    output_layers: tuple[str, ...]
    input_shape: tuple[int, ...]  # (1, C, H, W)
    # (group name, reason): groups Torch-Pruning cannot prune correctly here (compression.pruning.freeze_unprunable);
    # not pruned, their layers still quantizable
    frozen: tuple[tuple[str, str], ...] = ()
    blocks: tuple[BlockInfo, ...] = ()  # residual blocks that can be dropped whole (compression.blocks)

    def layer(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"unknown layer {name!r}; layers: {', '.join(self.layer_names)}")

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def group_names(self) -> list[str]:
        return [group.name for group in self.groups]

    def group_of(self, layer: str) -> PruningGroup | None:
        """The group whose channels ``layer`` produces (None for output layers)."""
        return next((g for g in self.groups if layer in g.members), None)

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)


def compressible_layers(model: nn.Module) -> dict[nn.Module, str]:
    return {module: name for name, module in model.named_modules() if isinstance(module, COMPRESSIBLE)}


def trace_layers(model: nn.Module, example_input: torch.Tensor) -> tuple[list[tuple[str, nn.Module, torch.Size, torch.Size]], list[str]]:
    """One batch-1 forward pass: (name, module, output shape, input shape) per compressible layer in execution order, and the
    output layers (those whose output tensor is the model's output; else the last layer executed)."""
    names = compressible_layers(model)
    calls: list[tuple[str, nn.Module, torch.Size, torch.Size]] = []
    outputs: dict[str, torch.Tensor] = {}

    def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
        name = names[module]
        if name in outputs:
            raise StructureError(f"layer {name!r} runs more than once per forward pass; shared layers cannot be compressed per call")
        calls.append((name, module, output.shape, inputs[0].shape))
        outputs[name] = output

    handles = [module.register_forward_hook(hook) for module in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            result = model(example_input[:1])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if not calls:
        raise StructureError(f"{type(model).__name__} has no Conv2d or Linear layer to compress")
    return calls, [name for name, out in outputs.items() if out is result] or [calls[-1][0]]


def _layer_info(name: str, module: nn.Module, out_shape: torch.Size, in_shape: torch.Size) -> LayerInfo:
    params = sum(p.numel() for p in module.parameters(recurse=False))
    if isinstance(module, nn.Linear):
        return LayerInfo(
            name,
            "linear",
            module.in_features,
            module.out_features,
            (1, 1),
            (1, 1),
            1,
            (1, 1),
            module.in_features * module.out_features,
            params,
        )
    assert isinstance(module, nn.Conv2d)
    h, w = int(out_shape[-2]), int(out_shape[-1])
    kh, kw = module.kernel_size
    if module.groups == 1:
        kind = "conv"
    elif module.groups == module.in_channels == module.out_channels:
        kind = "depthwise"
    else:
        kind = "grouped"
    macs = h * w * module.out_channels * (module.in_channels // module.groups) * kh * kw
    in_hw = (int(in_shape[-2]), int(in_shape[-1]))
    return LayerInfo(
        name, kind, module.in_channels, module.out_channels, (kh, kw), tuple(module.stride), module.groups, (h, w), macs, params, in_hw
    )


def dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(model, example_inputs=example_input[:1])


def pruning_groups(graph: tp.DependencyGraph, ignored: list[nn.Module]) -> list[tuple[nn.Module, tp.Group]]:
    """Torch-Pruning's groups rooted at compressible layers, as (root module, full-channel group)."""
    return [(group[0].dep.target.module, group) for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=COMPRESSIBLE)]


def _is_grouped(module: nn.Module) -> bool:
    """A grouped convolution that is not depthwise (depthwise ones Torch-Pruning prunes with their input)."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 and not module.groups == module.in_channels == module.out_channels


def discover(model: nn.Module, example_input: torch.Tensor) -> ModelStructure:
    """List the compressible layers and pruning groups of ``model`` for inputs like ``example_input``."""
    calls, outputs = trace_layers(model, example_input)
    order = {name: index for index, (name, *_) in enumerate(calls)}
    names = compressible_layers(model)
    by_name = {name: module for module, name in names.items()}
    try:
        graph = dependency_graph(model, example_input)
        found = pruning_groups(graph, [module for module, name in names.items() if name in outputs])
    except Exception as error:  # noqa: BLE001 - Torch-Pruning cannot trace it: nothing is pruned, everything quantizable
        reason = f"Torch-Pruning cannot trace the model ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        layers = tuple(_layer_info(name, module, out, inp) for name, module, out, inp in calls)
        return ModelStructure(layers, (), tuple(outputs), tuple(example_input[:1].shape), (("*", reason),))
    groups, frozen = [], []
    for _, group in found:
        members, consumers, mixing = set(), set(), False
        for dep, _ in group:
            target = dep.target.module
            # a reshape that feeds anything but a Linear (a flatten does) moves channels around, as a channel shuffle
            # does: Torch-Pruning cannot follow which channel is which (it removes the wrong ones, or crashes)
            if type(target).__name__ == "_ReshapeOp" and any(not isinstance(n.module, nn.Linear) for n in dep.target.outputs):
                mixing = True
            if target not in names:
                continue
            if graph.is_out_channel_pruning_fn(dep.handler):
                members.add(names[target])
            elif graph.is_in_channel_pruning_fn(dep.handler):
                consumers.add(names[target])
        members_sorted = tuple(sorted(members, key=order.__getitem__))
        consumers_sorted = tuple(sorted(consumers - members, key=order.__getitem__))
        found_group = PruningGroup(members_sorted[0], len(group[0].idxs), members_sorted, consumers_sorted)
        grouped = [n for n in (*members_sorted, *consumers_sorted) if _is_grouped(by_name[n])]
        if mixing:
            frozen.append((found_group.name, "a reshape or view between its layers mixes channels (a channel shuffle?)"))
        elif grouped:
            # Torch-Pruning removes a grouped convolution's channels without keeping its groups apart: a crash
            # (INDICES element is out of DATA bounds) or, worse, a model that runs and computes something else
            layer = by_name[grouped[0]]
            frozen.append((found_group.name, f"its channels pass the grouped convolution {grouped[0]} (groups={layer.groups})"))
        else:
            groups.append(found_group)
    groups.sort(key=lambda g: order[g.name])
    layers = tuple(_layer_info(name, module, out, inp) for name, module, out, inp in calls)
    blocks = droppable_blocks(model, [name for name, *_ in calls], groups)
    return ModelStructure(layers, tuple(groups), tuple(outputs), tuple(example_input[:1].shape), tuple(frozen), blocks)


def droppable_blocks(model: nn.Module, layers: list[str], groups: list[PruningGroup]) -> tuple[BlockInfo, ...]:
    """The blocks of ``model`` whose module has a ``skip()`` that returns a stand-in (an identity shortcut) and that hold
    a pruning group entirely inside them (its keep ratio 0 is the drop decision)."""
    blocks = []
    for name, module in model.named_modules():
        skip = getattr(module, "skip", None)
        if not name or not callable(skip) or skip() is None:
            continue
        inside = tuple(layer for layer in layers if layer.startswith(name + "."))
        group = next((g for g in groups if set(g.members) | set(g.consumers) <= set(inside)), None)
        if inside and group is not None:
            blocks.append(BlockInfo(name, inside, group.name))
    return tuple(blocks)
