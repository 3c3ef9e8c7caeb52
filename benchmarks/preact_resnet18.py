"""A PreAct ResNet-18 written the way most robustness code bases write it, for ``py:`` loading.

It stands for an outside model: its own ``forward`` code (functional ReLUs, a ``+=`` shortcut, a 4x4 average
pool and a ``view``), no normalisation inside (load it with ``--normalize dataset``), logits out. The
AutoAttack benchmark attacks it through ``py:benchmarks/preact_resnet18.py:make_w16`` (first-stage width 16:
about 0.7 M parameters, a CPU-sized model) with weights converted from one of our own checkpoints
(:func:`state_dict_from_checkpoint`; `python -m benchmarks.preact_resnet18 RUN OUT.pt`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class PreActBlock(nn.Module):
    """Pre-activation basic block; the 1x1 shortcut reads the activated input when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        out += shortcut
        return out


class PreActResNet18(nn.Module):
    def __init__(self, width: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        planes, layers = width, []
        for i, stride in enumerate((1, 2, 2, 2)):
            out = width * 2**i
            layers.append(nn.Sequential(PreActBlock(planes, out, stride), PreActBlock(out, out, 1)))
            planes = out
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        return self.linear(out)


def make_w16() -> nn.Module:
    """The benchmark's model: first-stage width 16."""
    return PreActResNet18(width=16)


def state_dict_from_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """This model's state dict from one of our ``preact-resnet18-wN`` checkpoints (the same weights, renamed):
    our backbone is one ``nn.Sequential`` (stem, 8 blocks, final BatchNorm), the head is ``fc``."""
    from agkd_bml.models.checkpoint import load_checkpoint

    ours = load_checkpoint(path).model
    names = {"backbone.0.": "conv1.", "backbone.9.": "bn.", "fc.": "linear."}
    names |= {f"backbone.{1 + i}.": f"layer{1 + i // 2}.{i % 2}." for i in range(8)}
    out: dict[str, torch.Tensor] = {}
    for key, value in ours.items():
        if key in ("mean", "std"):
            continue
        prefix = next(p for p in names if key.startswith(p))
        new = names[prefix] + key[len(prefix):]
        out[new.replace(".shortcut.", ".shortcut.0.")] = value
    return out


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description="Write the state dict of this file's model from one of our "
                                            "preact-resnet18-wN checkpoints (for --model-weights).")
    p.add_argument("checkpoint", help="a preact-resnet18-wN run directory or checkpoint of this project")
    p.add_argument("out", help="the state dict file to write")
    args = p.parse_args()
    torch.save(state_dict_from_checkpoint(args.checkpoint), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
