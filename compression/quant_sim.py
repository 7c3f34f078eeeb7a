"""Simulated (fake) quantization for accuracy at any bit width from 2 to 8.

Weights: per-output-channel symmetric, integers in [-(2^(b-1)-1), 2^(b-1)-1] -- the grid ONNX
Runtime uses for its int8 weights ([-127, 127]). Because the grid is per channel, folding batch
norm into the conv (as the exported artifact does) rescales each channel and its grid together,
so simulation before folding and int8 after folding agree.

Activations: each quantized layer's input, asymmetric unsigned, range [min(lo, 0), max(hi, 0)]
calibrated by min/max over the calibration subset -- ONNX Runtime's MinMax calibration with uint8
activations.

Gradients pass straight through the rounding (STE). Weight quantization is a
``torch.nn.utils.parametrize`` parametrization: the original ``Parameter`` object stays in the
module (as ``parametrizations.weight.original``), so an optimiser built before or after
attaching updates the real weights. (Replacing the weight with a new Parameter -- a known
re-implementation pitfall -- leaves the optimiser training a tensor the model no longer uses.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from compression.policy import FLOAT_BITS, CompressionPolicy
from compression.structure import compressible_layers


def fake_quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric fake quantization of a (O, ...) weight, straight-through gradient."""
    qmax = 2 ** (bits - 1) - 1
    amax = weight.detach().abs().reshape(weight.shape[0], -1).amax(1).clamp_min(1e-12)
    scale = (amax / qmax).reshape(-1, *([1] * (weight.dim() - 1)))  # (O, 1, 1, 1)
    quantized = torch.clamp(torch.round(weight / scale), -qmax, qmax) * scale
    return weight + (quantized - weight).detach()


def activation_qparams(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """Scale and zero point of an asymmetric unsigned grid covering [min(lo, 0), max(hi, 0)]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    levels = 2**bits - 1
    scale = (hi - lo) / levels if hi > lo else 1.0
    zero_point = int(min(levels, max(0, round(-lo / scale))))
    return scale, zero_point


def fake_quantize_activation(x: torch.Tensor, scale: float, zero_point: int, bits: int) -> torch.Tensor:
    levels = 2**bits - 1
    quantized = (torch.clamp(torch.round(x / scale) + zero_point, 0, levels) - zero_point) * scale
    return x + (quantized - x).detach()


class WeightFakeQuant(nn.Module):
    """Parametrization: the weight the layer sees is the fake-quantized original."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fake_quantize_weight(weight, self.bits)


class ActivationFakeQuant(nn.Module):
    """Observes min/max while calibrating, then fake-quantizes the layer input."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.qparams: tuple[float, int] | None = None  # (scale, zero point) once calibrated; None while observing
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))

    def freeze(self) -> None:
        """End calibration: fix the grid from the observed range (computed once, not per forward pass)."""
        self.qparams = activation_qparams(self.lo.item(), self.hi.item(), self.bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qparams is None:
            self.lo = torch.minimum(self.lo, x.detach().min())
            self.hi = torch.maximum(self.hi, x.detach().max())
            return x
        return fake_quantize_activation(x, *self.qparams, self.bits)


@dataclass
class SimulatedQuantization:
    """Fake quantization attached to a model's layers; :meth:`remove` restores the float model."""

    model: nn.Module
    activation_quantizers: dict[str, ActivationFakeQuant] = field(default_factory=dict)
    weight_layers: list[nn.Module] = field(default_factory=list)
    _hooks: list = field(default_factory=list)

    def remove(self) -> None:
        """Drop the simulation, keeping the (possibly fine-tuned) float weights."""
        for module in self.weight_layers:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        for hook in self._hooks:
            hook.remove()
        self.weight_layers.clear()
        self._hooks.clear()
        self.activation_quantizers.clear()


def attach_fake_quant(
    model: nn.Module, policy: CompressionPolicy, calibration: torch.Tensor, batch_size: int = 256
) -> SimulatedQuantization:
    """Fake-quantize ``model`` in place per ``policy.precision``; activation ranges from ``calibration`` (N, C, H, W)."""
    sim = SimulatedQuantization(model)
    for module, name in compressible_layers(model).items():
        precision = policy.precision_of(name)
        if precision.weight_bits < FLOAT_BITS:
            parametrize.register_parametrization(module, "weight", WeightFakeQuant(precision.weight_bits))
            sim.weight_layers.append(module)
        if precision.activation_bits < FLOAT_BITS:
            quantizer = ActivationFakeQuant(precision.activation_bits)
            sim.activation_quantizers[name] = quantizer
            sim._hooks.append(module.register_forward_pre_hook(lambda _m, args, q=quantizer: (q(args[0]), *args[1:])))
    if sim.activation_quantizers:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for start in range(0, len(calibration), batch_size):
                model(calibration[start : start + batch_size])
        model.train(was_training)
        for quantizer in sim.activation_quantizers.values():
            quantizer.freeze()
    return sim
