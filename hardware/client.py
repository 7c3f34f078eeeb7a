"""The one way to get a latency: ``LatencyClient(target).measure(candidate, reference)``.

The client looks in the latency cache first (the cluster's cache actor under Ray, the SQLite file
directly without Ray) and times only on a miss:

- a remote target (``local: false``): on the latency actors of every node labelled
  ``hardware=<target>``, in turn; a call that times out or whose actor died moves on to the next
  node's actor (the actor itself restarts and re-runs an interrupted call);
- a local target (``local-cpu``): under Ray, on the latency actor of the head node, where the driver
  runs; without Ray, in this process. Either way an exclusive lock file per target keeps two
  timings from running at once on the machine.

The cache key is (target and its threads/batch, runtime==version on the device, sha256 of the
candidate and of the reference), so a new runtime version or a new reference is a new measurement.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError

from hardware.actors import cache_actor, latency_actor, serving_nodes
from hardware.cache import CacheKey, LatencyCache, default_cache_path
from hardware.protocol import Measurement, device_lock, fingerprint, measure
from hardware.runtime import get_runtime
from hardware.targets import LABEL_KEY, HardwareTarget

log = logging.getLogger(__name__)

# The reference artifact is the same object on every call of a search: hash it once (bytes cache their own hash).
_digest = functools.lru_cache(maxsize=16)(fingerprint)


def fastest_reference(measurements: list[Measurement]) -> Measurement:
    """The measurement whose interleaved reference ran fastest: in this VM's slow state the reference runs up to 1.6x
    slower and int8 ratios rise (ResNet-20's int8 floor 0.44 -> 0.53) while float ratios stay; the interleaving cannot
    see it, the reference's own time can."""
    return min(measurements, key=lambda m: m.reference.median_ms if m.reference is not None else float("inf"))


def lowest_ratio(measurements: list[Measurement]) -> Measurement:
    """The measurement with the lowest ratio to its reference (the candidate's own median without one): the reading
    least disturbed, as every disturbance seen on the shared machines slows a timing and none speeds it up."""
    return min(measurements, key=lambda m: m.ratio if m.ratio is not None else m.candidate.median_ms)


class TargetUnavailableError(RuntimeError):
    """No node of the cluster serves the target (after a bounded wait), or every actor failed."""


def _join_hint(target: HardwareTarget) -> str:
    return f"ray start --address=<head> --num-cpus=0 --labels={LABEL_KEY}={target.name} --resources='{{\"{target.resource}\": 1}}'"


def ray_session() -> tuple[str, str] | None:
    """This process's Ray connection (node and job id: a new ``ray.init`` is another job, a new local cluster another
    node), or None without Ray. Actor handles of an earlier connection are dead in a later one."""
    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    return context.get_node_id(), context.get_job_id()


class LatencyClient:
    """Latency of ONNX artifacts on one target: cache first, then the target's device.

    ``cache``: ``"auto"`` (the cluster's cache actor, or ``$GALEN_HOME/latency-cache.sqlite`` without
    Ray), a path (the same, at that file), a ``LatencyCache``, or ``None`` (always time).
    """

    def __init__(
        self,
        target: HardwareTarget,
        *,
        cache: str | Path | LatencyCache | None = "auto",
        wait_s: float = 30.0,
        call_timeout_s: float = 300.0,
    ) -> None:
        self.target, self.call_timeout_s = target, call_timeout_s
        self.ray_session = ray_session()
        self.actors: list = []
        self.timings = self.hits = self.misses = 0
        self.slow_retries = 0  # timings taken again because the reference ran slow (the machine in a slow state)
        self._fastest_reference: dict[str, float] = {}  # reference digest -> its fastest median seen (ms)
        if self.use_ray:
            self._nodes = self._wait_for_nodes(wait_s)
            self.actors = [latency_actor(target, node) for node in self._nodes]
            self.runtime = ray.get(self.actors[0].runtime.remote(target.runtime), timeout=call_timeout_s)
        elif target.local:
            runtime = get_runtime(target.runtime)
            self.runtime = f"{runtime.name}=={runtime.version}"
        else:
            raise TargetUnavailableError(
                f"hardware target {target.name!r} is served by Ray nodes labelled {LABEL_KEY}={target.name}; connect to the "
                f"cluster first (ray.init(address=...) or RAY_ADDRESS); a device joins with: {_join_hint(target)}"
            )
        self._next = itertools.cycle(range(len(self.actors) or 1))
        self._cache_actor = None
        self._cache: LatencyCache | None = None
        if isinstance(cache, LatencyCache):
            self._cache = cache
        elif cache is not None:
            path = None if cache == "auto" else cache
            if self.use_ray:
                self._cache_path = path
                self._cache_actor = cache_actor(path)
            else:
                self._cache = LatencyCache(path or default_cache_path())

    @property
    def use_ray(self) -> bool:
        """Timed on Ray actors (Ray was on when the client was made), else in this process."""
        return self.ray_session is not None

    @property
    def current(self) -> bool:
        """Made in this process's present Ray connection (or without Ray, and Ray is still off): its actors answer."""
        return self.ray_session == ray_session()

    def _wait_for_nodes(self, wait_s: float) -> list[str]:
        deadline = time.monotonic() + wait_s
        nodes = serving_nodes(self.target)
        while not nodes and time.monotonic() < deadline:
            time.sleep(0.5)
            nodes = serving_nodes(self.target)
        if not nodes:
            raise TargetUnavailableError(
                f"no node serves hardware target {self.target.name!r} (waited {wait_s:.0f} s); join one with: {_join_hint(self.target)}"
            )
        return nodes

    def key(self, candidate: bytes, reference: bytes | None = None) -> CacheKey:
        digest = fingerprint(candidate) + (f"/{_digest(reference)}" if reference is not None else "")
        return CacheKey(self.target.cache_id, self.runtime, digest)

    def _named_key(self, name: str, reference: bytes) -> CacheKey:
        return CacheKey(self.target.cache_id, self.runtime, f"named:{name}/{_digest(reference)}")

    def remembered(self, name: str, reference: bytes) -> Measurement | None:
        """A measurement stored under ``name`` (against ``reference``) by ``remember``, from the same cache; None if absent.

        For timings whose artifact is costly to build only to find its fingerprint in the cache: the predictor's 14
        calibration models cost every process that prepares an env (each search, resume, sweep trial, read-out) a
        ResNet-20 build each before the cache could answer."""
        found = self._cache_get(self._named_key(name, reference))
        return None if found is None else dataclasses.replace(Measurement.from_dict(found), cached=True)

    def remember(self, name: str, reference: bytes, measurement: Measurement) -> None:
        """Store ``measurement`` under ``name`` (against ``reference``) in the cache, for ``remembered``."""
        self._cache_put(self._named_key(name, reference), measurement.to_dict())

    def measure(self, candidate: bytes, reference: bytes | None = None) -> Measurement:
        """The latency of ``candidate`` (and its ratio to ``reference``): from the cache, else timed on the target."""
        key = self.key(candidate, reference)
        found = self._cache_get(key)
        if found is not None:
            self.hits += 1
            return dataclasses.replace(Measurement.from_dict(found), cached=True)
        self.misses += 1
        result = self._time(candidate, reference)
        self.timings += 1
        self._cache_put(key, result.to_dict())
        return result

    def confirm(
        self,
        candidate: bytes,
        reference: bytes | None = None,
        times: int = 3,
        until: Callable[[Measurement], bool] | None = None,
        rounds: int = 1,
        pause_s: float | None = None,
    ) -> Measurement:
        """Time ``candidate`` ``times`` times afresh; the lowest ratio (``lowest_ratio``) replaces what the cache held.
        With ``until``: up to ``rounds`` such rounds, ``pause_s`` apart (default: the target's ``measurement.pause_s``),
        until the lowest reading so far satisfies it.

        For a measurement that decides something (a policy over budget): on a shared machine timings are disturbed
        by 10-30%, and a cached disturbed timing would otherwise stay wrong for the whole search. Disturbances only
        ever slow a timing, and on the AMD EPYC VM they come in a second mode: consecutive confirmations of ResNet-20's
        full-width int8 network read 0.589, 0.589, 0.452, 0.453 of the fp32 reference (four confirmations, each the
        median of three), the fp32 first and last layer variant 0.557, 0.439, 0.443, 0.561, with the reference's own
        time the same in both modes. The median of three in a row sat in the slow mode about half the time, and the
        mode can last longer than three timings (an int8 policy predicted at 0.378 read 0.512 as the lowest of three).
        """
        results = []
        for round_ in range(max(rounds, 1)):
            if round_:
                time.sleep(self.target.measurement.pause_s if pause_s is None else pause_s)
            for _ in range(times):
                self.misses += 1
                results.append(self._time(candidate, reference))
                self.timings += 1
            if until is None or until(lowest_ratio(results)):
                break
        best = lowest_ratio(results)
        self._cache_put(self.key(candidate, reference), best.to_dict())
        return best

    def retime(self, candidate: bytes, reference: bytes, previous: Measurement, times: int = 2) -> Measurement:
        """``previous`` (a cached timing whose reference ran slow) against ``times`` fresh timings: the one whose
        reference ran fastest is kept and replaces what the cache held, so no later process inherits a slow-state
        timing (a ResNet-56 calibration anchor cached at 0.48 of the reference measures 0.36)."""
        results = [previous]
        for _ in range(times):
            self.misses += 1
            results.append(self._time_once(candidate, reference))
            self.timings += 1
        best = dataclasses.replace(fastest_reference(results), cached=False)
        self._cache_put(self.key(candidate, reference), best.to_dict())
        return best

    def stats(self) -> dict[str, int]:
        """This client's cache hits and misses and the timings it caused."""
        return {"hits": self.hits, "misses": self.misses, "timings": self.timings}

    def cache_stats(self) -> dict[str, int] | None:
        """The shared cache's own counts (every client of the cluster), or None without a cache."""
        if self._cache_actor is not None:
            return ray.get(self._cache_actor.stats.remote(), timeout=self.call_timeout_s)
        return self._cache.stats() if self._cache is not None else None

    def _cache_get(self, key: CacheKey) -> dict | None:
        if self._cache_actor is not None:
            return self._cache_call("get", dataclasses.astuple(key))
        return self._cache.get(key) if self._cache is not None else None

    def _cache_put(self, key: CacheKey, result: dict) -> None:
        if self._cache_actor is not None:
            self._cache_call("put", dataclasses.astuple(key), result)
        elif self._cache is not None:
            self._cache.put(key, result)

    def _cache_call(self, method: str, *args: Any) -> Any:
        """A call to the cache actor; an actor that died for good or cannot be scheduled is re-created once."""
        for attempt in range(2):
            try:
                return ray.get(getattr(self._cache_actor, method).remote(*args), timeout=self.call_timeout_s)
            except RayTaskError:
                raise  # the actor is alive and the call itself failed: not the actor's death
            except RayError as error:
                if attempt:
                    raise TargetUnavailableError(
                        f"the latency cache actor failed twice: {type(error).__name__}: {_first_line(error)}"
                    ) from None
                log.warning("latency cache actor lost (%s); re-creating it", type(error).__name__)
                self._cache_actor = cache_actor(self._cache_path)
        raise AssertionError("unreachable")

    SLOW_REFERENCE = 1.15  # a reference median this much above its fastest seen: the machine is in a slow state

    @classmethod
    def ran_slow(cls, measurement: Measurement, fastest_reference_ms: float) -> bool:
        """Whether ``measurement``'s interleaved reference ran slow against the fastest seen (the VM's slow state)."""
        reference = measurement.reference
        return reference is not None and reference.median_ms > fastest_reference_ms * cls.SLOW_REFERENCE

    def fastest_reference_ms(self, reference: bytes) -> float | None:
        """The fastest median of ``reference`` timed interleaved by this client so far (None before its first timing)."""
        return self._fastest_reference.get(_digest(reference))

    SLOW_RETRIES = 1  # at most one more timing: a busy machine (a test suite, neighbours) must not multiply every measurement

    def _time(self, candidate: bytes, reference: bytes | None) -> Measurement:
        """One timing; taken again (up to ``SLOW_RETRIES`` times) while the reference runs slow.

        On this project's shared 2-core VM the machine drifts for seconds at a time into a state where everything
        runs about 35% slower and the ratios move too (ResNet-20: the reference 0.64 -> 0.87 ms, int8 full width
        0.54 -> 0.67, 10% keep fp32 0.40 -> 0.48); the interleaving cannot see that. The reference's own median is
        the witness: the timing with the fastest reference is kept.
        """
        result = self._time_once(candidate, reference)
        if reference is None or result.reference is None:
            return result
        key = _digest(reference)
        for _ in range(self.SLOW_RETRIES):
            fastest = self._fastest_reference.get(key)
            if fastest is None or not self.ran_slow(result, fastest):
                break
            time.sleep(self.target.measurement.pause_s / 8)
            self.slow_retries += 1
            again = self._time_once(candidate, reference)
            if again.reference is not None and again.reference.median_ms < result.reference.median_ms:
                result = again
        self._fastest_reference[key] = min(self._fastest_reference.get(key, float("inf")), result.reference.median_ms)
        return result

    def _time_once(self, candidate: bytes, reference: bytes | None) -> Measurement:
        if not self.use_ray:
            with device_lock(self.target.name):
                return measure(candidate, self.target, reference)
        spec, errors = self.target.to_dict(), []
        for _ in range(2 * len(self.actors)):  # each actor, then each re-created one
            index = next(self._next)
            try:
                ref = self.actors[index].measure.remote(candidate, reference, spec)
                return Measurement.from_dict(ray.get(ref, timeout=self.call_timeout_s))
            except RayTaskError as error:  # the actor is alive; the timing itself failed: the same on every actor
                cause = error.as_instanceof_cause()  # the device's own error (a RuntimePrecisionError: its message)
                raise cause.with_traceback(None) from None
            except RayError as error:  # died for good, unschedulable (its node or placement group gone), timed out
                errors.append(f"{type(error).__name__}: {_first_line(error)}")
                log.warning(
                    "latency actor of %r on node %s lost (%s); re-creating it", self.target.name, self._nodes[index][:8], errors[-1]
                )
                self.actors[index] = latency_actor(self.target, self._nodes[index])
        raise TargetUnavailableError(f"every latency actor of {self.target.name!r} failed: {'; '.join(errors)}")


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0]
