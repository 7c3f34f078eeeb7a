"""Latency actors on a real local Ray cluster: placement by label, concurrency, crash recovery, bounded waits.

The cluster has its own temp dir and is shut down by the fixture; no test runs `ray stop`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import yaml

from agents.recorder import read_episodes
from compression.pipeline import compress
from compression.policy import CompressionPolicy
from hardware.actors import NAMESPACE
from hardware.client import LatencyClient, TargetUnavailableError
from hardware.targets import BUILTIN_DIR, parse_target
from tests.ray_env import ray_temp_dir
from tests.test_search_runs import REPO, write_config
from workloads.models import build_model

pytestmark = pytest.mark.own_process  # a Ray driver in the test process: a fresh interpreter (tests/conftest.py)

FAST = {"warmup": 2, "rounds": 3, "runs_per_round": 10}


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    with ray_temp_dir("galen-ray-") as tmp:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": tmp})
        nodes = {
            "dev-a": cluster.add_node(num_cpus=1, labels={"hardware": "dev-a"}, resources={"dev-a": 1}),
            "dev-b": cluster.add_node(num_cpus=1, labels={"hardware": "dev-b"}, resources={"dev-b": 1}),
        }
        ray.init(address=cluster.address, logging_level="ERROR")
        try:
            yield cluster, nodes
        finally:
            ray.shutdown()
            cluster.shutdown()


@pytest.fixture(scope="module")
def reference() -> bytes:
    model, x = build_model("resnet20", 1, 10).eval(), torch.randn(1, 1, 32, 32)
    return compress(model, CompressionPolicy(), x, torch.randn(8, 1, 32, 32)).artifact.data


def test_each_target_runs_on_its_labelled_node_and_both_measure_concurrently(cluster, reference) -> None:
    import ray

    _, nodes = cluster
    clients = {name: LatencyClient(parse_target({"name": name, "measurement": FAST}), cache=None) for name in nodes}
    for name, client in clients.items():
        assert len(client.actors) == 1
        assert ray.get(client.actors[0].node_id.remote()) == nodes[name].node_id
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(client.measure, reference, reference) for name, client in clients.items()}
        results = {name: future.result(timeout=120) for name, future in futures.items()}
    for name, result in results.items():
        # both "devices" share this 2-core box and time at the same moment, so only sanity is asserted here;
        # the ratio's accuracy is asserted single-process in test_hardware_local.py
        assert result.target == name and 0.5 < result.ratio < 2.0 and result.candidate.median_ms > 0


def test_actor_killed_mid_measurement_is_retried(cluster, reference) -> None:
    import ray

    slow = parse_target({"name": "dev-a", "measurement": {"warmup": 2, "rounds": 4, "runs_per_round": 400}})
    client = LatencyClient(slow, cache=None)
    actor = client.actors[0]
    pid_before = ray.get(actor.pid.remote())
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("m", client.measure(reference, reference)))
    thread.start()
    time.sleep(1.0)  # the measurement takes several seconds; kill it in flight
    ray.kill(actor, no_restart=False)
    thread.join(180)
    assert not thread.is_alive()
    measurement = result["m"]
    assert measurement.candidate.samples == 4 * 400  # a whole measurement (its final attempt), not a partial one
    assert ray.get(actor.pid.remote()) != pid_before  # it ran again on the restarted actor


def test_actors_created_inside_a_trials_placement_group_outlive_it(cluster, reference) -> None:
    # Tune runs a trial in a placement group that captures its children; the shared, detached actors a trial happens
    # to create first must not join it, or they die when that trial ends, under every other trial
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from hardware.actors import CACHE_ACTOR_NAME, NAMESPACE

    with contextlib.suppress(ValueError):  # a cache actor an earlier test created from the driver
        ray.kill(ray.get_actor(CACHE_ACTOR_NAME, namespace=NAMESPACE), no_restart=True)
    spec = {"name": "local-pg", "local": True, "measurement": FAST}  # a target no earlier test created an actor for

    @ray.remote(num_cpus=1)
    def trial() -> tuple[int, int]:
        client = LatencyClient(parse_target(spec))
        client.measure(reference, reference)
        return ray.get(client.actors[0].pid.remote()), ray.get(client._cache_actor.pid.remote())

    group = placement_group([{"CPU": 1}])
    ray.get(group.ready(), timeout=60)
    strategy = PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
    pids = ray.get(trial.options(scheduling_strategy=strategy).remote(), timeout=180)
    remove_placement_group(group)
    time.sleep(2.0)
    client = LatencyClient(parse_target(spec))  # the next trial: the same actors, alive
    assert (ray.get(client.actors[0].pid.remote()), ray.get(client._cache_actor.pid.remote())) == pids
    assert client.measure(reference, reference).cached


def test_actors_that_died_for_good_are_re_created(cluster, reference) -> None:
    import ray

    client = LatencyClient(parse_target({"name": "dev-b", "measurement": FAST}))
    dead, dead_cache = client.actors[0], client._cache_actor
    ray.kill(dead, no_restart=True)
    ray.kill(dead_cache, no_restart=True)
    time.sleep(1.0)
    fresh = compress(build_model("resnet20", 1, 10).eval(), CompressionPolicy(), torch.randn(1, 1, 32, 32), torch.randn(8, 1, 32, 32))
    measurement = client.measure(fresh.artifact.data, reference)  # cache and device actor both re-created on the way
    assert not measurement.cached and measurement.ratio is not None
    assert client.actors[0] is not dead and client._cache_actor is not dead_cache
    assert client.measure(fresh.artifact.data, reference).cached


def test_target_no_node_serves_fails_after_a_bounded_wait(cluster) -> None:
    start = time.monotonic()
    with pytest.raises(
        TargetUnavailableError,
        match=r"^no node serves hardware target 'dev-c' \(waited 2 s\); join one with: ray start --address=<head> "
        r"--num-cpus=0 --labels=hardware=dev-c --resources='\{\"dev-c\": 1\}'$",
    ):
        LatencyClient(parse_target({"name": "dev-c"}), wait_s=2)
    assert time.monotonic() - start < 10


def test_cache_actor_on_the_head_node_serves_hits_without_a_new_timing(cluster, reference) -> None:
    import ray

    from hardware.actors import cache_actor, head_node_id

    cluster_, _ = cluster
    target = parse_target({"name": "dev-b", "measurement": FAST})
    first = LatencyClient(target)
    owner = cache_actor()
    assert ray.get(owner.node_id.remote()) == head_node_id() == cluster_.head_node.node_id
    before = ray.get(first.actors[0].count.remote())
    cold = first.measure(reference, reference)
    assert not cold.cached and first.stats() == {"hits": 0, "misses": 1, "timings": 1}
    assert ray.get(first.actors[0].count.remote()) == before + 1
    second = LatencyClient(target)  # another env runner or trial: same cache actor, same device actor
    warm = second.measure(reference, reference)
    assert warm.cached and second.stats() == {"hits": 1, "misses": 0, "timings": 0}
    assert ray.get(first.actors[0].count.remote()) == before + 1  # no new timing on the device
    assert warm.ratio == cold.ratio and warm.candidate == cold.candidate
    shared = second.cache_stats()
    assert shared["hits"] >= 1 and shared["entries"] >= 1
    assert ray.get(owner.path.remote()).startswith(os.environ["GALEN_HOME"])


def test_local_target_under_ray_is_measured_on_the_head_node(cluster, reference) -> None:
    import ray

    cluster_, _ = cluster
    client = LatencyClient(parse_target({"name": "local-test", "local": True, "measurement": FAST}), cache=None)
    assert [ray.get(a.node_id.remote()) for a in client.actors] == [cluster_.head_node.node_id]
    assert 0.8 < client.measure(reference, reference).ratio < 1.25


def test_galen_hardware_list_shows_the_serving_nodes(cluster, capsys, tmp_path) -> None:
    from experiments import cli

    cluster_, nodes = cluster
    for name in nodes:
        (tmp_path / f"{name}.yaml").write_text(f"name: {name}\n")
    assert cli.main(["hardware", "list", "--address", cluster_.address, "--targets-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"({nodes['dev-a'].node_id[:12]})" in out and f"({nodes['dev-b'].node_id[:12]})" in out
    assert f"({cluster_.head_node.node_id[:12]})" in out  # local-cpu: the head node
    assert "served by: no node (join one with --labels=hardware=arm-board)" in out


def test_one_search_per_target_measures_every_timing_on_its_targets_node(cluster, tmp_path, trained_resnet20) -> None:
    # issue 23: two nodes labelled with the two real runtimes' targets (ONNX Runtime, OpenVINO; made remote here:
    # local: false), one search for each; each search's timings run on the latency actor of its target's node only
    import ray
    from ray.util.state import list_actors

    pytest.importorskip("openvino")
    cluster_, _ = cluster
    names = ("local-cpu", "openvino-cpu")
    nodes = {name: cluster_.add_node(num_cpus=0, labels={"hardware": name}, resources={name: 1}) for name in names}
    targets = tmp_path / "targets"
    targets.mkdir()
    for name in names:  # a later file of the same name wins over the built-in one; its own protocol: no cached timing
        data = yaml.safe_load((BUILTIN_DIR / f"{name}.yaml").read_text())
        data.update(local=False, measurement={"warmup": 2, "rounds": 3, "runs_per_round": 7})
        (targets / f"{name}.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "RAY_ADDRESS": cluster_.address, "GALEN_TARGETS": str(targets), "RAY_AUTH_MODE": "disabled"}
    env["PYTHONPATH"] = str(REPO)

    def actors() -> dict[str, list]:  # target -> node ids of its alive latency actors
        found: dict[str, list] = {name: [] for name in names}
        for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=1000):
            parts = (actor.name or "").split(":")
            if parts[0] == "galen-latency" and parts[1] in found:
                found[parts[1]].append(actor.node_id)
        return found

    def count(name: str) -> int:
        actor = ray.get_actor(f"galen-latency:{name}:{nodes[name].node_id}", namespace=NAMESPACE)
        return ray.get(actor.count.remote())

    try:
        searched: list[str] = []
        for name in names:
            path = write_config(tmp_path, trained_resnet20.path, f"search-{name}", {"algo": "random"}, episodes=2)
            config = yaml.safe_load(path.read_text())
            # a MACs budget: every episode is still timed on the target, without the latency predictor's calibration
            config["env"].update(target=name, objective="macs", target_ratio=0.9)
            path.write_text(yaml.safe_dump(config))
            before = {other: count(other) for other in searched}
            command = [sys.executable, "-m", "experiments.search", "--config", str(path), "--no-progress"]
            done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            assert len([r for r in read_episodes(config["run_dir"]) if r["source"] == "random"]) == 2
            assert count(name) > 0  # the search timed on its node
            assert {other: count(other) for other in before} == before  # and not on the other target's
            searched.append(name)
        assert actors() == {name: [nodes[name].node_id] for name in names}  # no latency actor of either anywhere else
    finally:
        for node in nodes.values():
            cluster_.remove_node(node)


def test_a_client_of_an_earlier_ray_connection_is_not_current(cluster, reference) -> None:
    """An env context keeps its LatencyClient for the process (``EnvContext.client``); a second search in the process
    starts Ray again, where the first one's actor handles are dead ("Can't find actor ..." in the two-stage test). The
    client says so (``current``), and the context makes a new one."""
    import ray

    target = parse_target({"name": "dev-a", "measurement": FAST})
    client = LatencyClient(target, cache=None)
    assert client.current
    ray.shutdown()
    try:
        assert not client.current  # Ray went
        ray.init(address=cluster[0].address, logging_level="ERROR")
        assert not client.current  # another connection (another job)
        again = LatencyClient(target, cache=None)
        assert again.current and again.measure(reference, reference).ratio > 0
    finally:
        if not ray.is_initialized():
            ray.init(address=cluster[0].address, logging_level="ERROR")
