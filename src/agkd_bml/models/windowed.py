"""Forward passes of images that differ from cached ones in one window: Square's L-inf queries, cheaper.

Each L-inf Square query changes one square of the best point so far, at one position for the whole
batch, and from query 500 of 5,000 on the square is at most 5 pixels wide on a 32x32 image. Through a
chain of convolutions only the outputs whose kernels reach the window change; the changed window grows
by each kernel and shrinks by each stride, so on the small CNN a 5,000-query search recomputes about a
fifth of the multiply-adds of full passes. :class:`WindowedForward` keeps every layer's input for the current best
points, recomputes only the changed windows (each on a crop of its layer's input that carries the image
border's zero padding explicitly) and runs the model's head (global pooling and the linear layer) on
the whole feature map, as the model's own forward does. Its logits are the full pass's bit for bit
wherever :meth:`WindowedForward.matches_full_passes` says so (it checks each window size a search will
use; Square falls back to full passes otherwise), so a search takes the same path either way.

It applies only where the model's computation is known to be such a chain: a :class:`Classifier` (exact
type, after :func:`~agkd_bml.models.inference.inference_copy`) whose backbone is a nest of ``nn.Sequential``
holding only convolutions (zeros padding, no dilation, stride at most the kernel), ReLUs and identities:
the small CNN and VGG-style networks. Residual networks and models from outside the project get
``None`` from :meth:`WindowedForward.of` and full passes. Square uses it on the CPU only, where it was
measured: on the small CNN a query takes about half the time of a full pass on 2 cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from agkd_bml.models.base import Classifier, normalise
from agkd_bml.models.inference import ConvReLU

#: A window of a feature map: rows [top, bottom), columns [left, right).
Window = tuple[int, int, int, int]


@dataclass(frozen=True)
class _Layer:
    module: nn.Module
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    @property
    def pointwise(self) -> bool:
        """Whether each output pixel reads only the same input pixel (a ReLU, a 1x1 convolution of stride 1):
        the changed window stays as it is and needs no crop."""
        return self.kernel == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)

    def unpadded(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on a crop that already holds its zero padding."""
        m = self.module
        if isinstance(m, ConvReLU):
            return m.unpadded(x)
        return F.conv2d(x, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)  # a bare nn.Conv2d

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # never a ReLU in place: ``x`` may be a cached layer input
        return torch.relu(x) if type(self.module) is nn.ReLU else self.module(x)


def _chain(module: nn.Module) -> list[_Layer] | None:
    """``module``'s layers in order, or None if it is not a plain chain of supported layers."""
    if type(module) is nn.Sequential:
        layers: list[_Layer] = []
        for child in module:
            sub = _chain(child)
            if sub is None:
                return None
            layers += sub
        return layers
    conv = module.conv if type(module) is ConvReLU else module if type(module) is nn.Conv2d else None
    if conv is not None:
        if (conv.padding_mode != "zeros" or isinstance(conv.padding, str) or conv.dilation != (1, 1)
                or any(s > k for s, k in zip(conv.stride, conv.kernel_size, strict=True))):
            return None
        return [_Layer(module, conv.kernel_size, conv.stride, conv.padding)]  # type: ignore[arg-type]
    if type(module) is nn.Identity:  # BatchNorms folded away, ReLUs fused: nothing to compute
        return []
    if type(module) is nn.ReLU:
        return [_Layer(module, (1, 1), (1, 1), (0, 0))]
    return None


def _reach(lo: int, hi: int, kernel: int, stride: int, padding: int, size: int) -> tuple[int, int]:
    """The outputs [a, b) of a convolution along one axis (input ``size``) whose kernels read inputs [lo, hi)."""
    out = (size + 2 * padding - kernel) // stride + 1
    return max(0, math.ceil((lo + padding - kernel + 1) / stride)), min(out, (hi - 1 + padding) // stride + 1)


class WindowedForward:
    """Logits of a batch whose images differ from the cached best points in one window only.

    ``start(best)`` runs a full pass and caches each layer's input; ``logits(candidate, window)`` gives the
    logits of ``candidate`` (equal to the best points outside ``window``); ``accept(better)`` makes the
    last candidate the best point of the rows in ``better``; ``keep(rows)`` drops the other rows.
    """

    def __init__(self, model: Classifier, layers: list[_Layer]) -> None:
        self.model, self.layers = model, layers
        self.inputs: list[torch.Tensor] = []  # layer i's input for the best points; the last: the features
        self.best_logits = torch.empty(0)
        self._pending: list[tuple[int, Window, torch.Tensor]] = []

    @classmethod
    def of(cls, model: nn.Module) -> WindowedForward | None:
        """A windowed forward for ``model``, or None when its computation is not a known chain."""
        if type(model) is not Classifier:
            return None
        layers = _chain(model.backbone)
        return None if not layers else cls(model, layers)

    def matches_full_passes(self, x: torch.Tensor, sides: tuple[int, ...]) -> bool:
        """Whether windowed logits equal full passes bit for bit on images ``x`` (a few are enough) for windows
        of each of ``sides`` at the corners, next to them and in the middle.

        Call it in the precision the queries will run in. A convolution on a crop may be computed by
        another kernel than on the whole image (oneDNN chooses by shape) and round differently: a
        1-channel float32 first layer does here, by one unit in the last place. A search that then
        drifts from the full passes' one would no longer be the reference algorithm's, so such a
        model gets full passes.
        """
        height, width = x.shape[-2:]
        self.start(x)
        full = self.model(x).logits
        for side in sides:
            rows, cols = min(side, height), min(side, width)
            for top, left in {(0, 0), (1, 1), ((height - rows) // 2, (width - cols) // 2),
                              (height - rows - 1, width - cols - 1), (height - rows, width - cols)}:
                if top < 0 or left < 0:
                    continue
                candidate = x.clone()
                candidate[:, :, top : top + rows, left : left + cols] = 1 - candidate[:, :, top : top + rows,
                                                                                      left : left + cols]
                if not torch.equal(self.logits(candidate, (top, top + rows, left, left + cols)),
                                   self.model(candidate).logits):
                    return False
        self._pending = []
        return torch.equal(self.best_logits, full)

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        # Classifier.forward's head, on the whole feature map
        return self.model.fc(features.sum(dim=(2, 3)) / (features.shape[2] * features.shape[3]))

    def start(self, best: torch.Tensor) -> torch.Tensor:
        """The logits of ``best``, whose layer inputs are cached."""
        h = normalise(best, self.model.mean, self.model.std)
        self.inputs = [h]
        for layer in self.layers:
            h = layer(h)
            self.inputs.append(h)
        self.best_logits = self._head(h)
        self._pending = []
        return self.best_logits

    def logits(self, candidate: torch.Tensor, window: Window) -> torch.Tensor:
        """The logits of ``candidate``, equal to the best points outside ``window`` (rows, then columns)."""
        top, bottom, left, right = window
        new = normalise(candidate[:, :, top:bottom, left:right], self.model.mean, self.model.std)
        self._pending = [(0, window, new)]
        for i, layer in enumerate(self.layers):
            inp = self.inputs[i]
            if not layer.pointwise:
                new, window = self._convolve(layer, inp, new, window)
                if new is None:  # the window reaches no output of this layer: nothing downstream changes
                    self._pending = []
                    return self.best_logits
            else:
                new = layer(new)
            self._pending.append((i + 1, window, new))
        top, bottom, left, right = window
        features = self.inputs[-1].clone()
        features[:, :, top:bottom, left:right] = new
        self._pending.append((-1, window, self._head(features)))
        return self._pending[-1][2]

    @staticmethod
    def _convolve(layer: _Layer, inp: torch.Tensor, new: torch.Tensor, window: Window
                  ) -> tuple[torch.Tensor | None, Window]:
        """(the layer's output on its changed window, that window), given its input's changed window ``new``."""
        (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
        height, width = inp.shape[-2:]
        top, bottom, left, right = window
        o_top, o_bottom = _reach(top, bottom, kh, sh, ph, height)
        o_left, o_right = _reach(left, right, kw, sw, pw, width)
        if o_top >= o_bottom or o_left >= o_right:
            return None, window
        # the input rows/columns these outputs read, in padded coordinates, and their part inside the image
        r0, r1 = o_top * sh - ph, (o_bottom - 1) * sh - ph + kh
        c0, c1 = o_left * sw - pw, (o_right - 1) * sw - pw + kw
        i0, i1, j0, j1 = max(r0, 0), min(r1, height), max(c0, 0), min(c1, width)
        crop = inp[:, :, i0:i1, j0:j1].clone()
        a0, a1, b0, b1 = max(top, i0), min(bottom, i1), max(left, j0), min(right, j1)
        crop[:, :, a0 - i0 : a1 - i0, b0 - j0 : b1 - j0] = new[:, :, a0 - top : a1 - top, b0 - left : b1 - left]
        if (i0, i1, j0, j1) != (r0, r1, c0, c1):
            crop = F.pad(crop, (j0 - c0, c1 - j1, i0 - r0, r1 - i1))
        return layer.unpadded(crop), (o_top, o_bottom, o_left, o_right)

    def accept(self, better: torch.Tensor) -> None:
        """Make the last :meth:`logits` candidate the best point of the rows where ``better`` is true."""
        mask = better.view(-1, 1, 1, 1)
        for i, (top, bottom, left, right), new in self._pending:
            if i < 0:
                self.best_logits = torch.where(better[:, None], new, self.best_logits)
                continue
            view = self.inputs[i][:, :, top:bottom, left:right]
            view.copy_(torch.where(mask, new, view))
        self._pending = []

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the rows in ``rows`` (a boolean mask or indices) of the cache."""
        self.inputs = [t[rows] for t in self.inputs]
        self.best_logits = self.best_logits[rows]
        self._pending = []
