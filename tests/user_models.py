"""Models a user might bring, with what Torch-Pruning finds hard (imported by the tests as ``user_models:<Name>``).

Between them: a dense-style concatenation and a grouped convolution (DenseNet), a channel shuffle with grouped and
depthwise convolutions (ShuffleNet), depthwise-separable blocks with a 1x1-convolution classifier (SepNet).
"""

from __future__ import annotations

import torch
from torch import nn


class DenseNet(nn.Module):
    """A stem, a dense block (each layer's output concatenated to its input), a transition, a grouped conv."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, stride=2, padding=1, bias=False)
        self.block = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(16 * (i + 1)), nn.ReLU(), nn.Conv2d(16 * (i + 1), 16, 3, padding=1, bias=False)) for i in range(2)
        )
        self.trans = nn.Conv2d(48, 32, 1, bias=False)
        self.grouped = nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=4, bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.block:
            x = torch.cat([x, layer(x)], 1)
        x = torch.relu(self.bn(self.grouped(self.trans(x))))
        return self.fc(x.mean((2, 3)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleNet(nn.Module):
    """A ShuffleNet unit: grouped 1x1, channel shuffle, depthwise 3x3, grouped 1x1, residual; a 1x1-conv head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.g1 = nn.Sequential(nn.Conv2d(32, 32, 1, groups=4, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32))
        self.g2 = nn.Sequential(nn.Conv2d(32, 32, 1, groups=4, bias=False), nn.BatchNorm2d(32))
        self.head = nn.Conv2d(32, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.g2(self.dw(channel_shuffle(self.g1(x), 4)))
        return self.head(torch.relu(x + y)).mean((2, 3))


class SepNet(nn.Module):
    """Depthwise-separable blocks (depthwise 3x3, pointwise 1x1); the classifier a 1x1 convolution."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride=2, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            )  # fmt: skip

        self.stem = nn.Sequential(nn.Conv2d(in_channels, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.blocks = nn.Sequential(block(32, 64), block(64, 64))
        self.classifier = nn.Conv2d(64, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.classifier(nn.functional.adaptive_avg_pool2d(x, 1)).flatten(1)


class NoLayers(nn.Module):
    """Nothing to compress: no Conv2d, no Linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, : self.num_classes]
