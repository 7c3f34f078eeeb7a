"""VGG-11/16 with batch norm for 32x32 inputs (Simonyan & Zisserman, 2015; the CIFAR variant with one linear head)."""

from __future__ import annotations

import torch
from torch import nn

# "M" is a 2x2 max-pool; five of them take 32x32 to 1x1.
_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """Conv3x3-BN-ReLU stacks with max-pools, global average pooling and a linear classifier."""

    def __init__(self, config: list[int | str], in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [
                    nn.Conv2d(channels, int(item), 3, padding=1, bias=False),
                    nn.BatchNorm2d(int(item)),
                    nn.ReLU(inplace=True),
                ]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.features(x))  # (B, 512, 1, 1)
        return self.classifier(torch.flatten(out, 1))


def vgg11_bn(in_channels: int = 3, num_classes: int = 10) -> VGG:
    """VGG-11 with batch norm (8 convs)."""
    return VGG(_CONFIGS["vgg11"], in_channels, num_classes)


def vgg16_bn(in_channels: int = 3, num_classes: int = 10) -> VGG:
    """VGG-16 with batch norm (13 convs)."""
    return VGG(_CONFIGS["vgg16"], in_channels, num_classes)
