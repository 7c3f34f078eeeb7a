"""Ray actors of the hardware layer: one latency actor per device node, and the single cache owner.

A latency actor is pinned to one node with ``label_selector={"hardware": <target>, "ray.io/node-id":
<node>}`` and named after both (namespace ``galen``), so every client in the cluster (env runners,
Tune trials, the driver) shares the one actor of a device node; an actor runs one method call at a
time, so a device never times two artifacts at once. Actors restart after a crash
(``max_restarts``) and an interrupted call is re-run on the restarted actor (``max_task_retries``).
Under Ray a ``local: true`` target (``local-cpu``) is measured by an actor on the head node, where
the driver and ``ray job submit`` entrypoints run.

The latency cache has one owner: a named actor on the head node holding the SQLite file.
Both kinds are detached: whichever process creates one first (an env runner, a Tune trial, a
driver), it serves the whole cluster until the cluster stops.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray

from hardware.cache import CacheKey, LatencyCache, default_cache_path
from hardware.protocol import device_lock, measure
from hardware.runtime import get_runtime
from hardware.targets import LABEL_KEY, HardwareTarget, parse_target

NAMESPACE = "galen"
NODE_ID_LABEL = "ray.io/node-id"
CACHE_ACTOR_NAME = "galen-latency-cache"
HEAD_RESOURCE = "node:__internal_head__"


@ray.remote(num_cpus=0, max_restarts=3, max_task_retries=3)
class LatencyActor:
    """Times ONNX artifacts on the node it is pinned to, one at a time."""

    def __init__(self) -> None:
        self.timings = 0

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        return os.getpid()

    def runtime(self, name: str) -> str:
        """``<runtime>==<version>`` as installed on this node."""
        runtime = get_runtime(name)
        return f"{runtime.name}=={runtime.version}"

    def count(self) -> int:
        """Timings done by this actor process (since its last restart)."""
        return self.timings

    def measure(self, candidate: bytes, reference: bytes | None, target: dict[str, Any]) -> dict:
        self.timings += 1
        spec = parse_target(target)
        with device_lock(spec.name):
            return measure(candidate, spec, reference).to_dict()


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3)
class LatencyCacheActor:
    """The one owner of the SQLite latency cache in a cluster."""

    def __init__(self, path: str) -> None:
        self.cache = LatencyCache(path)

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def path(self) -> str:
        return str(self.cache.path)

    def get(self, key: tuple[str, str, str]) -> dict | None:
        return self.cache.get(CacheKey(*key))

    def put(self, key: tuple[str, str, str], result: dict) -> None:
        self.cache.put(CacheKey(*key), result)

    def stats(self) -> dict[str, int]:
        return self.cache.stats()


def alive_nodes() -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n.get("Alive")]


def head_node_id() -> str:
    for node in alive_nodes():
        if HEAD_RESOURCE in node.get("Resources", {}):
            return node["NodeID"]
    return ray.get_runtime_context().get_node_id()  # a cluster without the head marker: this process's node


def serving_nodes(target: HardwareTarget) -> list[str]:
    """Ids of the alive nodes that serve ``target``: labelled ``hardware=<target>``, or the head node for a local target."""
    if target.local:
        return [head_node_id()]
    return [n["NodeID"] for n in alive_nodes() if n.get("Labels", {}).get(LABEL_KEY) == target.name]


def latency_actor(target: HardwareTarget, node_id: str) -> ray.actor.ActorHandle:
    """The (shared, named) latency actor of ``target`` on ``node_id``, created if it does not exist."""
    selector = {NODE_ID_LABEL: node_id} if target.local else {LABEL_KEY: target.name, NODE_ID_LABEL: node_id}
    return LatencyActor.options(
        name=f"galen-latency:{target.name}:{node_id}",
        namespace=NAMESPACE,
        get_if_exists=True,
        label_selector=selector,
        lifetime="detached",  # shared by every job and trial; must not die with the env runner that created it
        # an explicit strategy: created from inside a Tune trial it would otherwise join the trial's placement group
        # (Tune captures child tasks) and die when that trial ends, under every other trial that uses it
        scheduling_strategy="DEFAULT",
    ).remote()


def cache_actor(path: str | Path | None = None) -> ray.actor.ActorHandle:
    """The cluster's cache owner on the head node, created with ``path`` (default under ``$GALEN_HOME``) if absent."""
    return LatencyCacheActor.options(
        name=CACHE_ACTOR_NAME,
        namespace=NAMESPACE,
        get_if_exists=True,
        label_selector={NODE_ID_LABEL: head_node_id()},
        lifetime="detached",  # outlives the env runner or trial that happened to create it
        scheduling_strategy="DEFAULT",  # never inside the creating trial's placement group (see latency_actor)
    ).remote(str(path or default_cache_path()))
