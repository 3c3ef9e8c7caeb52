"""PreAct ResNet-18 (He et al. 2016) for 32x32 inputs and ResNet-50 adapted to 64x64 (Tiny ImageNet)."""

from __future__ import annotations

from torch import nn

from agkd_bml.models.wrn import PreActBlock


def preact_resnet18(in_channels: int, width: int = 64) -> tuple[nn.Module, int]:
    """PreAct ResNet-18 with stage widths ``width`` x (1, 2, 4, 8) (64: the usual one); the pre-activation
    design needs one final BN-ReLU, which ends the backbone."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)]
    cin = width
    for cout, stride in ((width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)):
        layers += [PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers), cin


def resnet50_64(in_channels: int) -> tuple[nn.Module, int]:
    """torchvision's ResNet-50 with a 3x3 stride-1 stem and no max-pool: 64x64 inputs give 8x8 maps."""
    from torchvision.models import resnet50

    net = resnet50()
    net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    backbone = nn.Sequential(net.conv1, net.bn1, net.relu, net.layer1, net.layer2, net.layer3, net.layer4)
    return backbone, 2048
