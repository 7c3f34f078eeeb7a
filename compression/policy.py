"""The compression policy: per pruning group a keep ratio, per quantizable layer weight and activation bits.

A policy is plain data, JSON round-trips with a schema version, and is validated against a
model's :class:`~compression.structure.ModelStructure` and, optionally, against the precisions a
target can run. ``32`` bits means floating point (no quantization).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from compression.structure import ModelStructure

SCHEMA_VERSION = 1
FLOAT_BITS = 32
SIMULATED_BITS = (2, 3, 4, 5, 6, 7, 8)  # what the fake quantizer can simulate
ALLOWED_BITS = (*SIMULATED_BITS, FLOAT_BITS)


class PolicyError(ValueError):
    """A policy that does not fit the model or the target; the message names unit, field, value and what is allowed."""


@dataclass(frozen=True)
class Precision:
    """Bit widths of one layer's weights and input activations (32: floating point)."""

    weight_bits: int = FLOAT_BITS
    activation_bits: int = FLOAT_BITS

    @property
    def quantized(self) -> bool:
        return self.weight_bits < FLOAT_BITS or self.activation_bits < FLOAT_BITS

    @property
    def runs_int8(self) -> bool:
        """Both weights and activations quantized: int8 kernels on CPUs; otherwise the layer runs in float."""
        return self.weight_bits <= 8 and self.activation_bits <= 8

    @property
    def runs_as_asked(self) -> bool:
        """What the CPU artifact runs is this precision: float, or 8-bit weights and activations (int8 kernels). Fewer
        bits run as int8, one quantized side runs in float: their accuracy is the simulation's, not the artifact's."""
        return not self.quantized or (self.weight_bits == 8 and self.activation_bits == 8)


@dataclass(frozen=True)
class CompressionPolicy:
    """Keep ratio per pruning group (missing: 1.0) and precision per layer (missing: fp32)."""

    keep: dict[str, float] = field(default_factory=dict)
    precision: dict[str, Precision] = field(default_factory=dict)

    def keep_ratio(self, group: str) -> float:
        return self.keep.get(group, 1.0)

    def precision_of(self, layer: str) -> Precision:
        return self.precision.get(layer, Precision())

    def quantized_layers(self) -> list[str]:
        return [name for name, p in self.precision.items() if p.quantized]

    def simulated_layers(self) -> list[str]:
        """Layers whose precision the CPU artifact does not run as asked (``Precision.runs_as_asked``)."""
        return [name for name, p in self.precision.items() if not p.runs_as_asked]

    # --- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "keep": dict(self.keep),
            "precision": {name: {"weight_bits": p.weight_bits, "activation_bits": p.activation_bits} for name, p in self.precision.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionPolicy:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise PolicyError(f"policy field 'schema_version' is {version!r}; this version of galen reads schema {SCHEMA_VERSION}")
        unknown = set(data) - {"schema_version", "keep", "precision"}
        if unknown:
            raise PolicyError(f"policy has unknown fields {sorted(unknown)}; allowed: schema_version, keep, precision")
        try:
            keep = {str(k): float(v) for k, v in data.get("keep", {}).items()}
            precision = {str(k): Precision(int(v["weight_bits"]), int(v["activation_bits"])) for k, v in data.get("precision", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise PolicyError(
                f"malformed policy: {error!r}; expected keep: {{group: ratio}}, precision: {{layer: {{weight_bits, activation_bits}}}}"
            ) from error
        return cls(keep, precision)

    @classmethod
    def from_json(cls, text: str) -> CompressionPolicy:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as error:
            raise PolicyError(f"policy is not valid JSON: {error}") from error

    # --- validation ---------------------------------------------------------------------------
    def validate(self, structure: ModelStructure, supported_bits: Iterable[int] | None = None) -> CompressionPolicy:
        """Check every unit exists and every value is allowed; returns self for chaining."""
        groups, layers = set(structure.group_names), set(structure.layer_names)
        droppable = {b.group for b in structure.blocks}  # keep 0 drops the block (compression.blocks)
        for name, ratio in self.keep.items():
            if name not in groups:
                raise PolicyError(f"unknown pruning group {name!r} in field 'keep'; groups: {', '.join(structure.group_names)}")
            if ratio == 0.0 and name in droppable:
                continue
            if not 0.0 < ratio <= 1.0:
                also = " (0: drop the block, for the groups inside droppable residual blocks)" if droppable else ""
                raise PolicyError(f"group {name!r}: field 'keep' is {ratio}; allowed: a keep ratio in (0, 1]{also}")
        allowed = sorted(set(ALLOWED_BITS) if supported_bits is None else set(supported_bits))
        for name, precision in self.precision.items():
            if name not in layers:
                raise PolicyError(f"unknown layer {name!r} in field 'precision'; layers: {', '.join(structure.layer_names)}")
            for field_name in ("weight_bits", "activation_bits"):
                bits = getattr(precision, field_name)
                if bits not in allowed:
                    where = "the target" if supported_bits is not None else "galen"
                    raise PolicyError(f"layer {name!r}: field '{field_name}' is {bits}; {where} can run {allowed}")
        return self


def reference_policy() -> CompressionPolicy:
    """No compression: every group kept whole, every layer in floating point."""
    return CompressionPolicy()


def uniform_policy(
    structure: ModelStructure,
    keep: float = 1.0,
    weight_bits: int = FLOAT_BITS,
    activation_bits: int | None = None,
    *,
    skip_output_layers: bool = False,
) -> CompressionPolicy:
    """The same keep ratio for every group and the same precision for every layer."""
    activation_bits = weight_bits if activation_bits is None else activation_bits
    layers = [n for n in structure.layer_names if not (skip_output_layers and n in structure.output_layers)]
    precision = Precision(weight_bits, activation_bits)
    policy = CompressionPolicy(
        keep={g: keep for g in structure.group_names} if keep < 1.0 else {},
        precision={n: precision for n in layers} if precision.quantized else {},
    )
    return policy.validate(structure)
