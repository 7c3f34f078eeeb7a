"""CIFAR-style ResNets for small images (He et al., 2016, section 4.2) and ResNet-18 with a 3x3 stem.

ResNet-20/32/56 use three stages of BasicBlocks with 16/32/64 channels. Where a block changes
shape the shortcut is a 1x1 convolution + batch norm (the paper's option B). Option A
(zero-padded identity) is what the published 0.27M/0.85M parameter counts refer to; option B
adds 2,752 parameters (ResNet-20: 272,474 vs 269,722 for 3-channel input and 10 classes) and,
unlike the zero padding, keeps every residual addition a plain channel-wise coupling that the
dependency-aware pruner can follow.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 conv-bn layers with an identity or 1x1 projection shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))

    def skip(self) -> nn.Module | None:
        """What stands in for the block when it is dropped (compression.blocks): its identity shortcut, exact because
        every block's input comes out of a ReLU (the stem's or the previous block's); None with a projection shortcut."""
        return nn.Identity() if isinstance(self.shortcut, nn.Identity) else None


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: a 3x3 stem, stages of BasicBlocks, global average pooling, a linear head."""

    def __init__(
        self,
        blocks_per_stage: list[int],
        widths: list[int],
        in_channels: int = 3,
        num_classes: int = 10,
        stem_width: int | None = None,
    ) -> None:
        super().__init__()
        stem_width = stem_width or widths[0]
        self.conv1 = nn.Conv2d(in_channels, stem_width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        stages = []
        in_planes = stem_width
        for index, (count, width) in enumerate(zip(blocks_per_stage, widths, strict=True)):
            stride = 1 if index == 0 else 2
            layers = []
            for block in range(count):
                layers.append(BasicBlock(in_planes, width, stride if block == 0 else 1))
                in_planes = width
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # (B, C, H, W)
        out = self.layers(out)
        out = torch.flatten(self.pool(out), 1)  # (B, C)
        return self.fc(out)


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, as torchvision's ResNets), unit BN, zero-mean linear."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)


def _cifar_depth(depth: int, in_channels: int, num_classes: int) -> CifarResNet:
    if (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    return CifarResNet([n, n, n], [16, 32, 64], in_channels, num_classes)


def resnet20(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """ResNet-20: 3 stages x 3 BasicBlocks, 16/32/64 channels (about 0.27M parameters)."""
    return _cifar_depth(20, in_channels, num_classes)


def resnet32(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """ResNet-32: 3 stages x 5 BasicBlocks, 16/32/64 channels (about 0.46M parameters)."""
    return _cifar_depth(32, in_channels, num_classes)


def resnet56(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """ResNet-56: 3 stages x 9 BasicBlocks, 16/32/64 channels (about 0.85M parameters)."""
    return _cifar_depth(56, in_channels, num_classes)


def resnet18(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """ResNet-18 for 32x32 inputs: 3x3 stem, no max-pool, 4 stages x 2 BasicBlocks (64..512)."""
    return CifarResNet([2, 2, 2, 2], [64, 128, 256, 512], in_channels, num_classes)
