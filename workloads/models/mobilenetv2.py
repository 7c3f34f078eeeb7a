"""MobileNetV2 (Sandler et al., 2018) adapted to 32x32 inputs.

The ImageNet network downsamples 32x; on 32x32 images that leaves 1x1 maps after stage 4.
As in the common CIFAR adaptation, the stem and the second stage use stride 1, so the
network downsamples 8x (32 -> 4) before global pooling.
"""

from __future__ import annotations

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s), the paper's Table 2 with the
# CIFAR strides.
_CIFAR_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, 1x1 linear projection; identity shortcut when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn(in_ch, hidden, 1, 1))
        layers.append(_conv_bn(hidden, hidden, 3, stride, groups=hidden))
        layers.append(_conv_bn(hidden, out_ch, 1, 1, act=False))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out

    def skip(self) -> nn.Module | None:
        """What stands in for the block when it is dropped (compression.blocks): the identity shortcut, if it has one."""
        return nn.Identity() if self.use_residual else None


class MobileNetV2(nn.Module):
    """MobileNetV2 for small images; `width_mult` scales every layer's channels."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width_mult: float = 1.0) -> None:
        super().__init__()
        stem = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn(in_channels, stem, 3, 1)]
        channels = stem
        for t, c, n, s in _CIFAR_SETTINGS:
            out = _make_divisible(c * width_mult)
            for index in range(n):
                layers.append(InvertedResidual(channels, out, s if index == 0 else 1, t))
                channels = out
        layers.append(_conv_bn(channels, last, 1, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.features(x))  # (B, 1280, 1, 1)
        return self.classifier(torch.flatten(out, 1))


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of 8 without dropping more than 10% (the reference implementation's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def mobilenetv2(in_channels: int = 3, num_classes: int = 10) -> MobileNetV2:
    """MobileNetV2 (width 1.0) for 32x32 inputs."""
    return MobileNetV2(in_channels, num_classes)
