"""oneDNN's fused convolution + ReLU: the package's one private PyTorch call, behind a probe and a switch.

``torch.ops.mkldnn._convolution_pointwise`` is the op PyTorch's inductor emits for a convolution followed by a
ReLU on CPU. It saves the ReLU's own pass over the activation (Square's queries run about 1.06-1.1x faster on
the small CNN), but it is not a public API: a PyTorch release may change its signature or drop it. So it is
used only where a probe, run once on first use, found it present and equal to ``relu(conv2d(x))`` on a small
input; anything else (no oneDNN, a missing op, another signature, another result) leaves it off, and every
pass takes the public ``F.conv2d`` path, which computes the same function.

The switch: ``AGKD_BML_FUSED_CONV=0`` in the environment, or :func:`set_enabled` from Python (the test of both
paths uses it), turns the fused call off. """

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch.nn import functional as F

#: the environment variable that turns the fused call off (``0``)
ENV_SWITCH = "AGKD_BML_FUSED_CONV"

FusedConvReLU = Callable[..., torch.Tensor]

_state: dict[str, FusedConvReLU | None | bool] = {"probed": False, "op": None, "enabled": True}


def _probe() -> FusedConvReLU | None:
    """The op if it exists here and computes ``relu(conv2d(x))`` (checked once
    on a 2x3x6x6 input), else None."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        op = torch.ops.mkldnn._convolution_pointwise.default
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, 6, 6, generator=g).contiguous(memory_format=torch.channels_last)
        w = torch.randn(4, 3, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
        b = torch.randn(4, generator=g)
        with torch.no_grad():
            got = op(x, w, b, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")
            want = torch.relu(F.conv2d(x, w, b, 1, 1))
    except (AttributeError, RuntimeError, TypeError):  # absent, or another signature in this release
        return None
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
        return None
    return op


def fused_conv_relu() -> FusedConvReLU | None:
    """The fused op, called as ``op(x, w, b, padding, stride, dilation, groups, "relu", [], "")``, or None
    where it is switched off or the probe failed (then use ``relu(conv2d(...))``)."""
    if not _state["enabled"] or os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    if not _state["probed"]:
        _state["op"], _state["probed"] = _probe(), True
    op = _state["op"]
    return op if callable(op) else None


def set_enabled(enabled: bool) -> None:
    """Turn the fused call on or off for this process (off: every pass takes the public path)."""
    _state["enabled"] = enabled
