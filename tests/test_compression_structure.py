"""Layer discovery, pruning groups, policies and physical pruning."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compression.policy import CompressionPolicy, PolicyError, Precision, reference_policy, uniform_policy
from compression.pruning import kept_channels, prune
from compression.structure import discover
from workloads.models import MODELS, build_model

X1 = torch.randn(1, 1, 32, 32)


class TinyResidual(nn.Module):
    """a -> (a + b(a)) -> c -> fc: a and b are coupled by the addition, b also consumes a."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.b, self.bn_b = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn_a(self.a(x)))
        h = torch.relu(h + self.bn_b(self.b(h)))
        return self.fc(torch.relu(self.c(h)).mean((2, 3)))


def test_user_model_discovery() -> None:
    structure = discover(TinyResidual(), X1)
    assert structure.layer_names == ["a", "b", "c", "fc"]
    assert structure.output_layers == ("fc",)
    assert [(g.name, g.channels, g.members, g.consumers) for g in structure.groups] == [
        ("a", 8, ("a", "b"), ("c",)),  # b's input channels are the group's own channels
        ("c", 6, ("c",), ("fc",)),
    ]
    a = structure.layer("a")
    assert (a.kind, a.in_channels, a.out_channels, a.kernel, a.output_hw, a.macs, a.params) == (
        "conv",
        1,
        8,
        (3, 3),
        (32, 32),
        32 * 32 * 8 * 9,
        72,
    )
    assert structure.layer("fc").macs == 18


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registry_model_discovers_and_prunes(name: str) -> None:
    model = build_model(name, 1, 10).eval()
    structure = discover(model, X1)
    non_output = [n for n in structure.layer_names if n not in structure.output_layers]
    members = [m for g in structure.groups for m in g.members]
    assert sorted(members) == sorted(non_output)  # every prunable layer in exactly one group
    assert structure.output_layers == (("fc",) if name.startswith("resnet") else ("classifier",))
    pruned = prune(model, X1, uniform_policy(structure, keep=0.5))
    after = discover(pruned, X1)
    assert pruned(X1).shape == (1, 10)
    assert after.total_macs < 0.35 * structure.total_macs
    assert sum(p.numel() for p in pruned.parameters()) < 0.35 * sum(p.numel() for p in model.parameters())
    for group in after.groups:  # rounded to multiples of 8
        assert group.channels % 8 == 0, (group.name, group.channels)
    assert after.layer(structure.layer_names[0]).in_channels == 1  # the input is never pruned
    assert after.layer(structure.output_layers[0]).out_channels == 10  # nor the classes
    assert structure.layers[0].input_hw == (32, 32)


@pytest.mark.parametrize("name", list(MODELS))
def test_planned_structure_equals_the_pruned_model(name: str) -> None:
    import random

    from compression.costs import costs
    from compression.plan import layer_specs, planned_costs, planned_structure

    model = build_model(name, 3, 10).eval()
    x = torch.randn(1, 3, 32, 32)
    structure = discover(model, x)
    rng = random.Random(name)
    for _ in range(2):
        keep = {g.name: rng.uniform(0.1, 1.0) for g in structure.groups}
        policy = CompressionPolicy(keep, {n: Precision(8, 8) for n in structure.layer_names[::2]})
        real = discover(prune(model, x, policy, structure=structure), x)
        assert planned_structure(structure, policy) == real  # every shape, MACs, parameters and group width
        assert planned_costs(structure, policy) == costs(real, policy)
    specs = layer_specs(structure, policy)
    assert [s["int8"] for s in specs] == [i % 2 == 0 for i in range(len(specs))]
    assert specs[0]["input_hw"] == [32, 32] and specs[0]["in_channels"] == 3


def test_depthwise_groups_in_mobilenetv2() -> None:
    structure = discover(build_model("mobilenetv2", 3, 10), torch.randn(1, 3, 32, 32))
    dw = structure.layer("features.2.block.1.0")
    assert (dw.kind, dw.groups, dw.in_channels) == ("depthwise", 96, 96)
    group = structure.group_of("features.2.block.1.0")
    assert group.members == ("features.2.block.0.0", "features.2.block.1.0")  # expansion + depthwise: one decision


def _kept_rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Indices of the original output channels that survive, found by matching weights."""
    flat_o, flat_p = original.reshape(len(original), -1), pruned.reshape(len(pruned), -1)
    return [int(torch.where((flat_o == row).all(1))[0][0]) for row in flat_p]


def test_residual_members_keep_the_same_channels() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", 1, 10).eval()
    structure = discover(model, X1)
    pruned = prune(model, X1, CompressionPolicy({"conv1": 0.5}))
    kept = {
        m: _kept_rows(dict(model.named_modules())[m].weight, dict(pruned.named_modules())[m].weight)
        for m in structure.group_of("conv1").members
    }
    assert len(set(map(tuple, kept.values()))) == 1, kept  # conv1 and every stage-1 conv2 keep identical indices
    assert len(kept["conv1"]) == 8
    # consumers lose exactly those input channels
    idx = kept["conv1"]
    torch.testing.assert_close(pruned.layers[0][1].conv1.weight, model.layers[0][1].conv1.weight[:, idx])


def test_pruned_tiny_net_equals_hand_pruned_reference() -> None:
    torch.manual_seed(0)
    model = TinyResidual()
    for bn in (model.bn_a, model.bn_b):  # non-trivial running statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    weak = [1, 4, 6, 7]
    with torch.no_grad():  # make four channels clearly the weakest across the whole group
        for tensor in (model.a.weight, model.b.weight, model.bn_a.weight, model.bn_b.weight):
            tensor[weak] *= 1e-3
        model.b.weight[:, weak] *= 1e-3
        model.c.weight[:, weak] *= 1e-3
    model.eval()
    pruned = prune(model, X1, CompressionPolicy({"a": 0.5}), round_to=1)
    keep = [0, 2, 3, 5]
    reference = TinyResidual().eval()
    reference.a = nn.Conv2d(1, 4, 3, padding=1, bias=False)
    reference.b = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    reference.bn_a, reference.bn_b = nn.BatchNorm2d(4).eval(), nn.BatchNorm2d(4).eval()
    reference.c = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    with torch.no_grad():
        reference.a.weight.copy_(model.a.weight[keep])
        reference.b.weight.copy_(model.b.weight[keep][:, keep])
        reference.c.weight.copy_(model.c.weight[:, keep])
        for ref_bn, bn in ((reference.bn_a, model.bn_a), (reference.bn_b, model.bn_b)):
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(ref_bn, attr).copy_(getattr(bn, attr)[keep])
        reference.fc.load_state_dict(model.fc.state_dict())
    x = torch.randn(5, 1, 32, 32)
    torch.testing.assert_close(pruned(x), reference(x))
    assert pruned.a.out_channels == 4 and pruned.b.in_channels == 4 and pruned.c.in_channels == 4


@pytest.mark.parametrize(
    ("channels", "ratio", "round_to", "expected"),
    [(16, 0.5, 8, 8), (16, 0.3, 8, 8), (64, 0.3, 8, 16), (64, 0.01, 8, 8), (64, 1.0, 8, 64), (6, 0.5, 8, 3), (12, 0.5, 8, 6)],
)
def test_kept_channels_rounding(channels: int, ratio: float, round_to: int, expected: int) -> None:
    assert kept_channels(channels, ratio, round_to) == expected


def test_policy_json_round_trip_and_builders() -> None:
    structure = discover(TinyResidual(), X1)
    policy = CompressionPolicy({"a": 0.5}, {"b": Precision(4, 8), "fc": Precision(8, 8)}).validate(structure)
    text = policy.to_json()
    assert json.loads(text)["schema_version"] == 1
    assert CompressionPolicy.from_json(text) == policy
    assert reference_policy() == CompressionPolicy() and not reference_policy().quantized_layers()
    uniform = uniform_policy(structure, keep=0.75, weight_bits=8)
    assert uniform.keep == {"a": 0.75, "c": 0.75} and uniform.precision_of("fc") == Precision(8, 8)


@pytest.mark.parametrize(
    ("policy", "supported", "message"),
    [
        (CompressionPolicy({"layer9": 0.5}), None, "unknown pruning group 'layer9' in field 'keep'; groups: a, c"),
        (CompressionPolicy({"a": 0.0}), None, r"group 'a': field 'keep' is 0.0; allowed: a keep ratio in \(0, 1\]"),
        (CompressionPolicy({"c": 1.5}), None, r"group 'c': field 'keep' is 1.5; allowed: a keep ratio in \(0, 1\]"),
        (CompressionPolicy({}, {"conv9": Precision(8, 8)}), None, "unknown layer 'conv9' in field 'precision'; layers: a, b, c, fc"),
        (CompressionPolicy({}, {"b": Precision(4, 8)}), {8, 32}, r"layer 'b': field 'weight_bits' is 4; the target can run \[8, 32\]"),
        (
            CompressionPolicy({}, {"b": Precision(8, 16)}),
            None,
            r"layer 'b': field 'activation_bits' is 16; galen can run \[2, 3, 4, 5, 6, 7, 8, 32\]",
        ),
    ],
)
def test_bad_policies_are_rejected_with_exact_messages(policy: CompressionPolicy, supported, message: str) -> None:
    with pytest.raises(PolicyError, match=f"^{message}$"):
        policy.validate(discover(TinyResidual(), X1), supported)


def test_policy_schema_version_is_checked() -> None:
    with pytest.raises(PolicyError, match=r"^policy field 'schema_version' is 2; this version of galen reads schema 1$"):
        CompressionPolicy.from_dict({"schema_version": 2, "keep": {}})


def test_pruned_model_trains() -> None:
    model = build_model("resnet20", 1, 10)
    pruned = prune(model, X1, uniform_policy(discover(model, X1), keep=0.5)).train()
    optimizer = torch.optim.SGD(pruned.parameters(), lr=0.1)
    before = [p.detach().clone() for p in pruned.parameters()]
    loss = nn.functional.cross_entropy(pruned(torch.randn(4, 1, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, pruned.parameters(), strict=True))
    assert sum(p.numel() for p in model.parameters()) == 272_186  # the original is untouched (1-channel input)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_a_dropped_block_is_gone_from_the_model_the_plan_and_the_artifact(name: str) -> None:
    import copy

    import onnx

    from compression.pipeline import compress
    from compression.plan import planned_costs, planned_structure

    model = build_model(name, 3, 10).eval()
    x = torch.randn(2, 3, 32, 32)
    structure = discover(model, x)
    names = [b.name for b in structure.blocks]
    if name == "resnet20":  # the blocks with an identity shortcut: 3 in the first stage, 2 in each later one
        assert names == ["layers.0.0", "layers.0.1", "layers.0.2", "layers.1.1", "layers.1.2", "layers.2.1", "layers.2.2"]
        assert structure.blocks[0].group == "layers.0.0.conv1" and structure.blocks[0].layers == ("layers.0.0.conv1", "layers.0.0.conv2")
    block = structure.blocks[1]
    other = next(g.name for g in structure.groups if not g.name.startswith(block.name + ".") and g.name != block.group)
    policy = CompressionPolicy({block.group: 0.0}, {n: Precision(8, 8) for n in structure.layer_names})
    dropped = prune(model, x, policy, structure=structure).eval()
    reference = copy.deepcopy(model)
    parent, _, child = block.name.rpartition(".")
    setattr(reference.get_submodule(parent), child, nn.Identity())  # the block as its shortcut, by hand
    with torch.no_grad():
        torch.testing.assert_close(dropped(x), reference(x))
    both = CompressionPolicy({block.group: 0.0, other: 0.5}, policy.precision)
    real = discover(prune(model, x, both, structure=structure), x)
    assert not any(layer.startswith(block.name + ".") for layer in real.layer_names)
    planned = planned_structure(structure, both)
    assert planned.layers == real.layers and planned.groups == real.groups and planned_costs(structure, both).macs == real.total_macs
    compressed = compress(model, both, x[:1], x)
    graph = onnx.load_from_string(compressed.artifact.data).graph
    assert graph.node and not any(block.name in node.name for node in graph.node)  # no operator of the block ships
    assert {layer.layer for layer in compressed.artifact.layers} == set(real.layer_names)
    with pytest.raises(PolicyError, match=r"field 'keep' is 0.0; allowed: a keep ratio in \(0, 1\] \(0: drop the block"):
        CompressionPolicy({other: 0.0}).validate(structure)
