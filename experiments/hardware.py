"""``galen hardware list`` and ``galen hardware check <target>``: which targets exist, who serves them, does timing work.

``check`` builds a reference model (fp32 and int8 ONNX artifacts, random weights: only the shapes
matter for latency), times both on the target through the same client the search uses (local:
this machine; otherwise the latency actors of the nodes labelled ``hardware=<target>``), and prints
the medians with p10/p90, the int8/fp32 ratio, stability, and what it ran on. It always times
(the cache is bypassed), so it is a live check of the device.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from experiments.options import option


@dataclass
class ListConfig:
    address: str | None = option(None, "Ray cluster to ask for serving nodes (default: $RAY_ADDRESS; none: targets only)")
    targets_dir: str | None = option(None, "extra directory of target YAML files (besides built-ins and $GALEN_TARGETS)")


@dataclass
class CheckConfig:
    target: str = option("local-cpu", "hardware target to time on", metavar="TARGET")
    model: str = option("resnet20", "reference model (random weights; its shapes set the latency)")
    in_channels: int = option(3, "input channels of the reference model")
    image_size: int = option(32, "input height and width")
    address: str | None = option(None, "Ray cluster the target's nodes belong to (default: $RAY_ADDRESS; local targets need none)")
    targets_dir: str | None = option(None, "extra directory of target YAML files")
    wait_s: float = option(30.0, "how long to wait for a node serving the target")
    json: bool = option(False, "print the measurements as JSON")


def _connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (or $RAY_ADDRESS); False when there is none to join."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        return False
    import ray

    if not ray.is_initialized():
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    return True


def list_targets(config: ListConfig) -> None:
    from hardware.protocol import cpu_model
    from hardware.targets import load_targets

    targets = load_targets(*filter(None, [config.targets_dir]))
    connected = _connect(config.address)
    nodes: dict[str, list[str]] = {}
    if connected:
        from hardware.actors import alive_nodes, serving_nodes

        address_of = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in alive_nodes()}
        nodes = {name: [f"{address_of.get(n, '?')} ({n[:12]})" for n in serving_nodes(t)] for name, t in targets.items()}
    for name, target in sorted(targets.items()):
        bits = f"w{'/'.join(map(str, target.weight_bits))} a{'/'.join(map(str, target.activation_bits))}"
        print(f"{name:<14} {target.runtime}, {target.threads} thread(s), batch {target.batch_size}, {bits}  {target.description}")
        print(f"{'':<14} runtime here: {_runtime_here(target.runtime)}")
        if connected:
            served = nodes[name]
            print(f"{'':<14} served by: {', '.join(served) if served else 'no node (join one with --labels=hardware=' + name + ')'}")
        elif target.local:
            print(f"{'':<14} served by: this machine ({cpu_model()})")
        else:
            print(f"{'':<14} served by: nodes labelled hardware={name} (connect with --address or RAY_ADDRESS to list them)")


def _runtime_here(name: str) -> str:
    """The runtime's version on this machine, or how to install it (a device node may have it where this one does not)."""
    from hardware.runtime import RuntimeMissingError, get_runtime

    try:
        return f"{name} {get_runtime(name).version}"
    except RuntimeMissingError as error:
        return f"not installed ({str(error).split('; ')[-1]})"


def check(config: CheckConfig) -> dict:
    import torch

    from compression.pipeline import compress
    from compression.policy import CompressionPolicy, Precision
    from compression.structure import discover
    from hardware.client import LatencyClient
    from hardware.targets import get_target
    from workloads.models import build_model

    target = get_target(config.target, *filter(None, [config.targets_dir]))
    _connect(config.address)
    torch.manual_seed(0)
    model = build_model(config.model, config.in_channels, 10).eval()
    x = torch.randn(1, config.in_channels, config.image_size, config.image_size)
    calibration = torch.randn(16, config.in_channels, config.image_size, config.image_size)
    structure = discover(model, x)
    fp32 = compress(model, CompressionPolicy(), x, calibration, structure=structure).artifact.data
    int8_policy = CompressionPolicy(precision={name: Precision(8, 8) for name in structure.layer_names})
    int8 = compress(model, int8_policy, x, calibration, structure=structure).artifact.data
    client = LatencyClient(target, cache=None, wait_s=config.wait_s)
    results = {"fp32": client.measure(fp32, fp32), "int8": client.measure(int8, fp32)}
    report = {name: m.to_dict() for name, m in results.items()}
    if config.json:
        print(json.dumps(report, indent=2))
        return report
    first = results["fp32"]
    where = f"{first.runtime} {first.runtime_version} on {first.cpu} ({first.machine})"
    print(f"target {target.name}: {where}, {target.threads} thread(s), batch {target.batch_size}")
    print(f"model {config.model} {config.in_channels}x{config.image_size}x{config.image_size}")
    print(f"{'artifact':<8} {'median ms':>10} {'p10':>8} {'p90':>8} {'samples':>8} {'ratio to fp32':>14}  stable (attempts)")
    for name, m in results.items():
        c = m.candidate
        print(
            f"{name:<8} {c.median_ms:>10.3f} {c.p10_ms:>8.3f} {c.p90_ms:>8.3f} {c.samples:>8} {m.ratio:>14.3f}  {m.stable} ({m.attempts})"
        )
    return report
