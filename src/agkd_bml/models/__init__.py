"""Model registry: ``build_model(arch, spec)`` for ``small-cnn`` (``small-cnn-wN``: base
width N instead of 32), ``wrn-D-K``,
``preact-resnet18`` (``preact-resnet18-wN``: first-stage width N instead of 64), ``resnet50``."""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from agkd_bml.data import DataSpec
from agkd_bml.errors import UserError
from agkd_bml.models.base import Classifier, ModelOutput, unwrap
from agkd_bml.models.resnet import preact_resnet18, resnet50_64
from agkd_bml.models.small_cnn import small_cnn
from agkd_bml.models.wrn import wide_resnet

#: Backbone builders by name: each takes the number of input channels, returns (backbone, out_channels).
MODELS: dict[str, Callable[[int], tuple[nn.Module, int]]] = {
    "small-cnn": small_cnn,
    "preact-resnet18": preact_resnet18,
    "resnet50": resnet50_64,
}
_WRN = re.compile(r"^wrn-(\d+)-(\d+)$")
#: the small CNN with base width N (32 is ``small-cnn``; parameters grow as N
#: squared): the capacity study's models
_WIDE_CNN = re.compile(r"^small-cnn-w(\d+)$")
#: PreAct ResNet-18 with first-stage width N (64 is ``preact-resnet18``): a
#: residual model that fits a CPU at N = 16
_WIDE_RESNET18 = re.compile(r"^preact-resnet18-w(\d+)$")
#: width-parameterised families: pattern -> backbone builder taking (input channels, width)
_WIDTHS: dict[re.Pattern[str], Callable[..., tuple[nn.Module, int]]] = {_WIDE_CNN: small_cnn,
                                                                      _WIDE_RESNET18: preact_resnet18}
ARCH_CHOICES = (*MODELS, "small-cnn-wN (base width N; small-cnn is w32, e.g. small-cnn-w64)",
                "preact-resnet18-wN (first-stage width N; preact-resnet18 is w64, e.g. preact-resnet18-w16)",
                "wrn-D-K (e.g. wrn-16-4, wrn-28-10, wrn-34-10)")


def check_arch(arch: str) -> None:
    """Raise :class:`UserError` unless ``arch`` names a buildable architecture."""
    if arch in MODELS:
        return
    for pattern in _WIDTHS:
        wide = pattern.match(arch)
        if wide:
            if int(wide.group(1)) < 1:
                family = arch[: arch.rindex("-w")]
                raise UserError(f"architecture {arch!r}: the "
                                f"{'base' if family == 'small-cnn' else 'first-stage'} "
                                f"width N of {family}-wN must be >= 1")
            return
    m = _WRN.match(arch)
    if not m:
        raise UserError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCH_CHOICES)}")
    if (int(m.group(1)) - 4) % 6 != 0 or int(m.group(2)) < 1:
        raise UserError(f"architecture {arch!r}: WideResNet depth must be 6n+4 (16, 22, 28, 34, ...) and "
                        "width >= 1")


def build_model(arch: str, spec: DataSpec) -> Classifier:
    """Build ``arch`` for a dataset: input channels, classes and normalisation come from ``spec``."""
    check_arch(arch)
    if arch in MODELS:
        backbone, out_channels = MODELS[arch](spec.channels)
    elif wrn := _WRN.match(arch):
        depth, widen = (int(v) for v in wrn.groups())
        backbone, out_channels = wide_resnet(spec.channels, depth, widen)
    else:  # check_arch accepted it: one of the width patterns matches
        for pattern, build in _WIDTHS.items():
            if width := pattern.match(arch):
                backbone, out_channels = build(spec.channels, width=int(width.group(1)))
                break
    return Classifier(backbone, out_channels, spec.num_classes, spec.mean, spec.std)


__all__ = ["ARCH_CHOICES", "MODELS", "Classifier", "ModelOutput", "build_model", "check_arch", "unwrap"]
