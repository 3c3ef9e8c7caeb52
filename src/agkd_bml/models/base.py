"""The model contract shared by every architecture.

Every model takes images in [0, 1] (normalisation is a buffer inside it, so attacks work in pixel space) and
one forward returns all that any method needs: logits, the last conv feature map after the final BN-ReLU (for
attention maps) and the penultimate embedding, its global average pool (for metric learning). """

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class ModelOutput(NamedTuple):
    """What one forward pass returns."""

    logits: torch.Tensor  #: (N, K)
    features: torch.Tensor  #: (N, C, H, W), last conv feature map after the final BN-ReLU
    embedding: torch.Tensor  #: (N, C), global average pool of ``features``


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is a 4-d batch stored channels-last (and not also plain
    contiguous, as with 1 channel)."""
    return x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` for per-channel ``mean``/``std`` of shape (1, C, 1, 1), in ``x``'s own layout.

    Against a channels-last batch (the layout attacks and training use), broadcasting the (1, C, 1, 1) buffers
    makes every element-wise loop run over the C = 3 innermost values, forward and backward: about 15x slower
    than matched layouts here, a few percent of each AutoAttack pass. Expanding the buffers to one
    channels-last image first keeps the loops flat; the values are bit-identical. """
    if is_channels_last(x):
        shape = (1, *x.shape[1:])
        mean = mean.expand(shape).contiguous(memory_format=torch.channels_last)
        std = std.expand(shape).contiguous(memory_format=torch.channels_last)
    return (x - mean) / std


class Classifier(nn.Module):
    """Normalisation, a convolutional backbone, global average pooling and a linear head.

    ``backbone`` maps normalised images to the last feature map (already through its final BN-ReLU) and has
    ``out_channels``; the head is shared so every architecture honours :class:`ModelOutput` alike. """

    def __init__(
        self,
        backbone: nn.Module,
        out_channels: int,
        num_classes: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        super().__init__()
        self.mean: torch.Tensor  # buffers, registered below
        self.std: torch.Tensor
        self.backbone = backbone
        self.fc = nn.Linear(out_channels, num_classes)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> ModelOutput:
        features = self.backbone(normalise(x, self.mean, self.std))
        # sum / area rather than mean: mean's backward materialises an NCHW gradient, and against a
        # channels-last feature map the last ReLU's backward then takes a strided path (about 10x slower,
        # ~10% of a whole input-gradient pass of the small CNN); sum's backward is a lazy expand
        embedding = features.sum(dim=(2, 3)) / (features.shape[2] * features.shape[3])
        return ModelOutput(self.fc(embedding), features, embedding)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (the model itself otherwise).

    Attacks run on the bare network: DDP would otherwise expect every forward with grad enabled to be followed
    by a backward that reaches all parameters, which an input-gradient attack never is. """
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, BatchNorm, ReLU: the building block of the small CNN."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )
