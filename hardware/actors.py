"""Latency actors on Ray: one per node serving a target, placed by node label, and a client that uses them.

Each actor is pinned to one node with ``label_selector={"hardware": <target>, "ray.io/node-id": <node>}``.
A Ray actor runs one method call at a time, so a device never times two artifacts at once. Actors
restart after a crash (``max_restarts``) and an interrupted call is re-run on the restarted actor
(``max_task_retries``); the client also bounds every call with a timeout and moves to another
node's actor when one keeps failing.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import asdict

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from hardware.protocol import Measurement, measure
from hardware.targets import LABEL_KEY, HardwareTarget, parse_target

NODE_ID_LABEL = "ray.io/node-id"


class TargetUnavailableError(RuntimeError):
    """No node of the cluster serves the target (after a bounded wait), or every actor failed."""


@ray.remote(num_cpus=0, max_restarts=3, max_task_retries=3)
class LatencyActor:
    """Times ONNX artifacts on the node it is pinned to."""

    def __init__(self, target: dict) -> None:
        self.target = parse_target(target)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        return os.getpid()

    def measure(self, candidate: bytes, reference: bytes | None = None) -> dict:
        return measure(candidate, self.target, reference).to_dict()


def serving_nodes(target: HardwareTarget) -> list[str]:
    """Ids of the alive nodes labelled ``hardware=<target>``."""
    return [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Labels", {}).get(LABEL_KEY) == target.name]


class LatencyClient:
    """Spreads measurements for one target over the actors of every node serving it."""

    def __init__(self, target: HardwareTarget, wait_s: float = 30.0, call_timeout_s: float = 300.0) -> None:
        self.target, self.call_timeout_s = target, call_timeout_s
        deadline = time.monotonic() + wait_s
        nodes = serving_nodes(target)
        while not nodes and time.monotonic() < deadline:
            time.sleep(0.5)
            nodes = serving_nodes(target)
        if not nodes:
            raise TargetUnavailableError(
                f"no node serves hardware target {target.name!r} (waited {wait_s:.0f} s); join one with: ray start "
                f"--address=<head> --labels={LABEL_KEY}={target.name} --resources='{{\"{target.resource}\": 1}}'"
            )
        spec = {**asdict(target), "measurement": asdict(target.measurement)}
        self.actors = [LatencyActor.options(label_selector={LABEL_KEY: target.name, NODE_ID_LABEL: node}).remote(spec) for node in nodes]
        self._next = itertools.cycle(range(len(self.actors)))

    def measure(self, candidate: bytes, reference: bytes | None = None) -> Measurement:
        """Measure on the next actor; on a timeout or a dead actor, try the others once each."""
        errors = []
        for _ in range(len(self.actors)):
            actor = self.actors[next(self._next)]
            try:
                return Measurement.from_dict(ray.get(actor.measure.remote(candidate, reference), timeout=self.call_timeout_s))
            except (GetTimeoutError, RayActorError, RayTaskError) as error:
                errors.append(f"{type(error).__name__}: {str(error).splitlines()[0]}")
        raise TargetUnavailableError(f"every latency actor of {self.target.name!r} failed: {'; '.join(errors)}")
