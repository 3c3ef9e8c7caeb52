"""Wide ResNet-d-k (Zagoruyko & Komodakis 2016) as used by Madry et al., TRADES, MART and AGKD-BML."""

from __future__ import annotations

import torch
from torch import nn


class PreActBlock(nn.Module):
    """Pre-activation basic block (WRN and PreAct ResNet); the shortcut takes the
    activated input when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        same = cin == cout and stride == 1
        self.shortcut = None if same else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = torch.relu(self.bn1(x))
        y = self.conv2(torch.relu(self.bn2(self.conv1(o))))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNetBackbone(nn.Module):
    """Conv stem, three stages of (depth-4)/6 blocks with widths 16k, 32k, 64k, final BN-ReLU."""

    def __init__(self, depth: int, widen: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 (e.g. 16, 28, 34); got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)]
        for stage, stride in enumerate((1, 2, 2)):
            for i in range(n):
                cin = widths[stage] if i == 0 else widths[stage + 1]
                layers.append(PreActBlock(cin, widths[stage + 1], stride if i == 0 else 1))
        layers += [nn.BatchNorm2d(widths[3]), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)
        self.out_channels = widths[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def wide_resnet(in_channels: int, depth: int, widen: int) -> tuple[nn.Module, int]:
    backbone = WideResNetBackbone(depth, widen, in_channels)
    return backbone, backbone.out_channels
