"""PreAct ResNet-18 (He et al. 2016) for 32x32 inputs and ResNet-50 adapted to 64x64 (Tiny ImageNet)."""

from __future__ import annotations

from torch import nn

from agkd_bml.models.wrn import PreActBlock


def preact_resnet18(in_channels: int) -> tuple[nn.Module, int]:
    """PreAct ResNet-18; the pre-activation design needs one final BN-ReLU, which ends the backbone."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.BatchNorm2d(512), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers), 512


def resnet50_64(in_channels: int) -> tuple[nn.Module, int]:
    """torchvision's ResNet-50 with a 3x3 stride-1 stem and no max-pool: 64x64 inputs give 8x8 maps."""
    from torchvision.models import resnet50

    net = resnet50()
    net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    backbone = nn.Sequential(net.conv1, net.bn1, net.relu, net.layer1, net.layer2, net.layer3, net.layer4)
    return backbone, 2048
