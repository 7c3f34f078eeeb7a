"""Hardware targets: declared in YAML, validated, looked up by name.

A target says where it is measured (``local: true``: in the driver's process; otherwise on Ray
nodes labelled ``hardware=<name>`` that also carry a custom resource ``<name>``, which RLlib
and Tune placement understands), with which runtime, threads and batch size, which precisions
it runs with real kernels, and how to measure. Built-in targets live in ``hardware/targets/``;
more are read from ``$GALEN_TARGETS`` (a directory of ``*.yaml``) or a directory passed in.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BUILTIN_DIR = Path(__file__).parent / "targets"
LABEL_KEY = "hardware"
RUNTIMES = ("onnxruntime", "openvino")


class TargetError(ValueError):
    """A target file or name that is not valid; the message names the field and the allowed values."""


@dataclass(frozen=True)
class MeasurementSettings:
    """The measurement protocol's knobs."""

    warmup: int = 20  # untimed runs per artifact before the first round
    rounds: int = 7  # interleaved rounds (candidate, reference, candidate, ...)
    runs_per_round: int = 50  # timed runs per artifact per round
    max_round_spread: float = 0.05  # re-measure when per-round ratios spread more than this (relative)
    max_remeasures: int = 2  # re-measurements before the result is returned flagged unstable
    # seconds between rounds of fresh timings of a decisive measurement that looked disturbed (a policy measured over
    # its budget, a final re-measurement taken while the reference ran slow), so that a stretch of load can pass; a
    # single timing whose reference ran slow is taken again after an eighth of it. Not part of the cache key.
    pause_s: float = 2.0


@dataclass(frozen=True)
class HardwareTarget:
    """One target device kind."""

    name: str
    description: str = ""
    local: bool = False
    runtime: str = "onnxruntime"
    threads: int = 1
    batch_size: int = 1
    weight_bits: tuple[int, ...] = (8, 32)
    activation_bits: tuple[int, ...] = (8, 32)
    measurement: MeasurementSettings = field(default_factory=MeasurementSettings)

    @property
    def label_selector(self) -> dict[str, str]:
        """What a latency actor's ``label_selector`` asks of its node."""
        return {LABEL_KEY: self.name}

    @property
    def resource(self) -> str:
        """The custom resource a device node of this target carries (for RLlib/Tune placement)."""
        return self.name

    @property
    def cache_id(self) -> str:
        """What makes two measurements comparable: the device kind, threads, batch size and the measurement protocol.

        ``slowguard``: timings taken while the reference ran slow are taken again (``LatencyClient._time``); entries
        cached before that guard existed are not comparable and are not used.
        """
        m = self.measurement
        return f"{self.name}:threads={self.threads}:batch={self.batch_size}:rounds={m.rounds}x{m.runs_per_round}:slowguard"

    def to_dict(self) -> dict[str, Any]:
        """The mapping ``parse_target`` reads (what a latency actor receives)."""
        data = dataclasses.asdict(self)
        return {**data, "weight_bits": list(self.weight_bits), "activation_bits": list(self.activation_bits)}


def _check(name: str, field_name: str, ok: bool, value: Any, allowed: str) -> None:
    if not ok:
        raise TargetError(f"target {name!r}: field '{field_name}' is {value!r}; allowed: {allowed}")


def parse_target(data: dict[str, Any], source: str = "<dict>") -> HardwareTarget:
    """Validate a target mapping (as read from YAML)."""
    if not isinstance(data, dict) or "name" not in data:
        raise TargetError(f"{source}: a target needs at least a 'name' field")
    name = str(data["name"])
    allowed = {f.name for f in dataclasses.fields(HardwareTarget)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise TargetError(f"target {name!r}: unknown field {unknown[0]!r}; allowed fields: {', '.join(sorted(allowed))}")
    settings = data.get("measurement", {}) or {}
    allowed_settings = {f.name for f in dataclasses.fields(MeasurementSettings)}
    unknown = sorted(set(settings) - allowed_settings)
    if unknown:
        raise TargetError(f"target {name!r}: unknown field 'measurement.{unknown[0]}'; allowed: {', '.join(sorted(allowed_settings))}")
    target = HardwareTarget(
        name=name,
        description=str(data.get("description", "")),
        local=bool(data.get("local", False)),
        runtime=data.get("runtime", "onnxruntime"),
        threads=data.get("threads", 1),
        batch_size=data.get("batch_size", 1),
        weight_bits=tuple(data.get("weight_bits", (8, 32))),
        activation_bits=tuple(data.get("activation_bits", (8, 32))),
        measurement=MeasurementSettings(**settings),
    )
    _check(name, "runtime", target.runtime in RUNTIMES, target.runtime, ", ".join(RUNTIMES))
    for attr in ("threads", "batch_size"):
        value = getattr(target, attr)
        _check(name, attr, isinstance(value, int) and value >= 1, value, "an integer >= 1")
    for attr in ("weight_bits", "activation_bits"):
        bits = getattr(target, attr)
        _check(name, attr, bool(bits) and all(b in (2, 3, 4, 5, 6, 7, 8, 16, 32) for b in bits), list(bits), "a list of 2..8, 16, 32")
    m = target.measurement
    for attr, low in (("warmup", 0), ("rounds", 1), ("runs_per_round", 1), ("max_remeasures", 0)):
        value = getattr(m, attr)
        _check(name, f"measurement.{attr}", isinstance(value, int) and value >= low, value, f"an integer >= {low}")
    _check(name, "measurement.max_round_spread", 0 < m.max_round_spread < 1, m.max_round_spread, "a number in (0, 1)")
    pause_ok = isinstance(m.pause_s, (int, float)) and not isinstance(m.pause_s, bool) and 0 <= m.pause_s <= 60
    _check(name, "measurement.pause_s", pause_ok, m.pause_s, "a number of seconds in [0, 60]")
    return target


def load_targets(*extra_dirs: str | Path) -> dict[str, HardwareTarget]:
    """Built-in targets, then ``$GALEN_TARGETS``, then ``extra_dirs``; a later file of the same name wins."""
    dirs = [BUILTIN_DIR, *([Path(os.environ["GALEN_TARGETS"])] if os.environ.get("GALEN_TARGETS") else []), *map(Path, extra_dirs)]
    targets: dict[str, HardwareTarget] = {}
    for directory in dirs:
        for path in sorted(Path(directory).glob("*.yaml")):
            try:
                data = yaml.safe_load(path.read_text())
            except yaml.YAMLError as error:
                raise TargetError(f"{path}: not valid YAML ({error})") from error
            target = parse_target(data, str(path))
            targets[target.name] = target
    return targets


def get_target(name: str, *extra_dirs: str | Path) -> HardwareTarget:
    targets = load_targets(*extra_dirs)
    if name not in targets:
        raise TargetError(f"unknown hardware target {name!r}; known targets: {', '.join(sorted(targets))}")
    return targets[name]
