"""Forward passes of images that differ from cached ones in one window: Square's L-inf queries, cheaper.

Each L-inf Square query changes one square of the best point so far, at one position for the whole
batch, and from query 500 of 5,000 on the square is at most 5 pixels wide on a 32x32 image. Through
convolutions and element-wise layers only the outputs whose inputs reach the window change: the changed
window grows by each kernel and shrinks by each stride. :class:`WindowedForward` keeps every intermediate
value of the model's ``torch.fx`` graph (:func:`~agkd_bml.models.inference.trace`) for the current best
points and recomputes, for a query, only the changed window of each value, as far as the graph lets it:

- a convolution (zeros padding, no dilation) runs on a crop of its cached input
  that carries the image border's zero padding explicitly;
- an element-wise layer (ReLU, an eval-mode BatchNorm: affine per channel, the normalisation, the sum of a
  residual block and its shortcut) runs on the union of its inputs' windows, the cached values filling in
  where one input did not change;
- anything else (the pooling and linear head, a ``view``, an operation it does not know) runs on the whole
  value, the cached one with the window written in, as the model's own forward does; from there on the
  rest of the graph runs on whole values.

So on a plain chain (the small CNN) a 5,000-query search recomputes about a fifth of the multiply-adds of
full passes; on a PreAct ResNet-18 the window covers a 32x32 stage in part, a 16x16 one mostly and the later
ones whole. Its logits are the full pass's bit for bit wherever :meth:`WindowedForward.matches_full_passes`
says so (it checks each window size a search will use; Square falls back to full passes otherwise), so a
float32 search takes the same path either way; in bf16 oneDNN's AMX kernels may round a crop of a batch size
the probe did not try one bf16 unit away, so Square confirms each success with a full pass. Square uses it
on the CPU only, where it was measured.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import fx, nn
from torch.nn import functional as F

from agkd_bml.models.base import normalise
from agkd_bml.models.external import output_logits
from agkd_bml.models.inference import ConvReLU, trace

#: A window of a feature map: rows [top, bottom), columns [left, right).
Window = tuple[int, int, int, int]

#: Functions whose output pixel depends on the same pixel of each input (and on per-channel constants).
_ELEMENTWISE_FUNCTIONS: set[Callable[..., Any]] = {
    torch.relu, F.relu, torch.sigmoid, torch.tanh, F.silu, F.gelu, F.leaky_relu, F.hardtanh, F.relu6,
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg,
    torch.add, torch.sub, torch.mul, torch.div, normalise,
}
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "add", "sub", "mul", "div", "neg"}
_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Hardtanh,
                        nn.Identity, nn.Dropout)
#: Calls whose result depends on a tensor's shape or type, never on its values.
_SHAPE_METHODS = {"size", "dim"}
_SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}

#: How a node is recomputed for a query.
CONV, ELEMENTWISE, WHOLE, SHAPE = "conv", "elementwise", "whole", "shape"


def _reach(lo: int, hi: int, kernel: int, stride: int, padding: int, size: int) -> tuple[int, int]:
    """The outputs [a, b) of a convolution along one axis (input ``size``)
    whose kernels read inputs [lo, hi)."""
    out = (size + 2 * padding - kernel) // stride + 1
    return max(0, math.ceil((lo + padding - kernel + 1) / stride)), min(out, (hi - 1 + padding) // stride + 1)


def _windowable_conv(module: nn.Module) -> nn.Conv2d | None:
    conv = module.conv if type(module) is ConvReLU else module if type(module) is nn.Conv2d else None
    if (conv is None or conv.padding_mode != "zeros" or isinstance(conv.padding, str) or conv.dilation
        != (1, 1)):
        return None
    return conv


def _unpadded(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The convolution ``module`` on a crop that already holds its zero padding."""
    if type(module) is ConvReLU:
        return module.unpadded(x)
    conv = cast(nn.Conv2d, module)
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


def _spatial(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim == 4


def _batch_rows(value: Any, rows: int) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == rows


class WindowedForward:
    """Logits of a batch whose images differ from the cached best points in one window only.

    ``start(best)`` runs a full pass and caches each node's value; ``logits(candidate, window)`` gives the
    logits of ``candidate`` (equal to the best points outside ``window``); ``accept(better)`` makes the last
    candidate the best point of the rows in ``better``; ``keep(rows)`` drops the other rows. """

    def __init__(self, graph: fx.GraphModule) -> None:
        self.graph = graph
        self.modules = dict(graph.named_modules())
        self.nodes = [n for n in graph.graph.nodes if n.op != "output"]
        (self.output,) = (n for n in graph.graph.nodes if n.op == "output")
        (self.input,) = (n for n in self.nodes if n.op == "placeholder")
        self.varying = self._varying()
        #: each node's inputs that depend on the images
        self.inputs = {n: tuple(a for a in n.all_input_nodes if a in self.varying) for n
                       in [*self.nodes, self.output]}
        self.kinds: dict[fx.Node, str] = {}
        #: the nodes whose cached values a query reads (the others need no update)
        self.read: set[fx.Node] = set()
        self.cache: dict[fx.Node, Any] = {}
        self.best_logits = torch.empty(0)
        self._pending: dict[fx.Node, tuple[Window | None, Any]] = {}

    @classmethod
    def of(cls, model: nn.Module, example: torch.Tensor) -> WindowedForward | None:
        """A windowed forward for ``model`` (its images like ``example``), or None when no convolution of it
        can be computed on a window (a model it cannot trace, a head on the raw image)."""
        if not isinstance(model, nn.Module) or (graph := trace(model)) is None:
            return None
        if sum(n.op == "placeholder" for n in graph.graph.nodes) != 1:
            return None
        windowed = cls(graph)
        try:
            with torch.inference_mode():
                windowed.start(example[:1])
        except Exception:  # the graph fails where the model did not (or gives no logits): full passes
            return None
        return windowed if windowed.useful() else None

    def _varying(self) -> set[fx.Node]:
        """The nodes whose value depends on the input images."""
        varying: set[fx.Node] = set()
        for node in self.nodes:
            if node.op == "placeholder" or any(a in varying for a in node.all_input_nodes):
                varying.add(node)
        return varying

    def _kind(self, node: fx.Node) -> str:
        """How ``node`` is recomputed (from the values of a full pass, which give the shapes)."""
        args = [self.cache[a] for a in node.all_input_nodes if a in self.varying]
        if node.op == "call_method" and node.target in _SHAPE_METHODS:
            return SHAPE
        if node.op == "call_function" and node.target is getattr and node.args[1] in _SHAPE_ATTRIBUTES:
            return SHAPE
        out = self.cache[node]
        if not _spatial(out) or not all(_spatial(a) for a in args):
            return WHOLE
        if node.op == "call_module":
            module = self.modules[str(node.target)]
            if _windowable_conv(module) is not None and len(node.args) == 1 and not node.kwargs:
                return CONV
            eval_bn = type(module) is nn.BatchNorm2d and not module.training and module.track_running_stats
            if not (eval_bn or type(module) in _ELEMENTWISE_MODULES):
                return WHOLE
        elif not ((node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS)
                  or (node.op == "call_method" and node.target in _ELEMENTWISE_METHODS)):
            return WHOLE
        # element-wise: varying inputs the output's own shape, constants one value per channel at most
        constants: list[torch.Tensor] = []
        fx.node.map_aggregate((node.args, node.kwargs),
                              lambda v: constants.append(v) if isinstance(v, torch.Tensor) else None)
        constants += [self.cache[a] for a in node.all_input_nodes if a not in self.varying
                      and isinstance(self.cache[a], torch.Tensor)]
        if any(a.shape != out.shape for a in args) or any(
                c.ndim > 0 and (c.ndim < 3 or c.shape[-2:] != (1, 1)) for c in constants):
            return WHOLE
        return ELEMENTWISE

    def useful(self) -> bool:
        """Whether some convolution is computed on windows: its input
        changes in a window, never as a whole."""
        windowed = {self.input}
        for node in self.nodes:
            if node in self.varying and self.kinds.get(node) in (CONV, ELEMENTWISE) and all(
                    a in windowed for a in node.all_input_nodes if a in self.varying):
                windowed.add(node)
                if self.kinds[node] == CONV:
                    return True
        return False

    def _call(self, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``node``'s operation on the given values, never in place (an input may be a cached value)."""
        if "inplace" in kwargs:
            kwargs = {**kwargs, "inplace": False}
        name = str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")
        if name.endswith("_") and not name.startswith("_") and args and isinstance(args[0], torch.Tensor):
            args = (args[0].clone(), *args[1:])  # x.relu_(), x.add_(y): on a copy
        if node.op == "call_module":
            module = self.modules[str(node.target)]
            return torch.relu(args[0]) if type(module) is nn.ReLU else module(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        # a call_function node's target is a callable, which fx types as Target (a str too)
        return node.target(*args, **kwargs)  # type: ignore[operator]

    def _run(self, node: fx.Node, value: Callable[[fx.Node], Any]) -> Any:
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), value)
        return self._call(node, args, kwargs)

    def start(self, best: torch.Tensor) -> torch.Tensor:
        """The logits of ``best``, whose intermediate values are cached."""
        cache: dict[fx.Node, Any] = {}
        for node in self.nodes:
            if node.op == "placeholder":
                cache[node] = best.clone()  # its own copy: accept() writes into it
            elif node.op == "get_attr":
                cache[node] = _attr(self.graph, str(node.target))
            else:
                cache[node] = self._run(node, cache.__getitem__)
        self.cache = cache
        if not self.kinds:
            self.kinds = {node: self._kind(node) for node in self.nodes if node in self.varying and node is
                          not self.input}
            # a one-input element-wise node reads only its input's new window, never its cached value
            self.read = {self.input, *self.inputs[self.output]}
            for node, kind in self.kinds.items():
                if kind != SHAPE and not (kind == ELEMENTWISE and len(self.inputs[node]) == 1):
                    self.read.update(self.inputs[node])
        self.best_logits = self._logits(fx.node.map_arg(self.output.args[0], cache.__getitem__))
        self._pending = {}
        return self.best_logits

    @staticmethod
    def _logits(out: Any) -> torch.Tensor:
        return output_logits(out)

    def matches_full_passes(self, x: torch.Tensor, sides: tuple[int, ...]) -> bool:
        """Whether windowed logits equal full passes bit for bit on images ``x`` (a few are enough) for
        windows of each of ``sides`` at the four corners, the middle of each edge, the centre, and next to two
        corners: a crop at one border and not at the other may take another kernel than a crop at both.

        Call it in the precision the queries will run in. A convolution on a crop may be computed by another
        kernel than on the whole image (oneDNN chooses by shape) and round differently: a 1-channel float32
        first layer does here, by one unit in the last place. A search that then drifts from the full passes'
        one would no longer be the reference algorithm's, so such a model gets full passes.
        """
        height, width = x.shape[-2:]
        full = self._logits(self.graph(x))
        self.start(x)
        for side in sides:
            rows, cols = min(side, height), min(side, width)
            tops, lefts = (0, (height - rows) // 2, height - rows), (0, (width - cols) // 2, width - cols)
            for top, left in {*itertools.product(tops, lefts), (1, 1), (height - rows - 1, width - cols - 1)}:
                if top < 0 or left < 0 or top + rows > height or left + cols > width:
                    continue
                candidate = x.clone()
                candidate[:, :, top : top + rows, left : left + cols] = 1 - candidate[:, :, top : top + rows,
                                                                                      left : left + cols]
                if not torch.equal(self.logits(candidate, (top, top + rows, left, left + cols)),
                                   self._logits(self.graph(candidate))):
                    return False
        self._pending = {}
        return torch.equal(self.best_logits, full)

    def logits(self, candidate: torch.Tensor, window: Window) -> torch.Tensor:
        """The logits of ``candidate``, equal to the best points outside ``window`` (rows, then columns)."""
        top, bottom, left, right = window
        changed: dict[fx.Node, tuple[Window | None, Any]] = {
            self.input: (window, candidate[:, :, top:bottom, left:right])}
        for node, kind in self.kinds.items():
            if kind == SHAPE or not any(a in changed for a in self.inputs[node]):
                continue
            # fx types node.args as Argument; a convolution's first argument is a Node
            if kind == CONV and changed[node.args[0]][0] is not None:  # type: ignore[index]
                change = self._convolve(node, changed[node.args[0]])  # type: ignore[index]
                if change is not None:
                    changed[node] = change
            elif kind == ELEMENTWISE and all(changed[a][0] is not None for a in self.inputs[node] if a
                                             in changed):
                changed[node] = self._elementwise(node, changed)
            else:
                changed[node] = (None, self._run(node, lambda a: self._whole(a, changed)))
        self._pending = changed
        if not any(a in changed for a in self.inputs[self.output]):  # the window reached no output
            return self.best_logits
        return self._logits(fx.node.map_arg(self.output.args[0], lambda a: self._whole(a, changed)))

    def _whole(self, node: fx.Node, changed: dict[fx.Node, tuple[Window | None, Any]]) -> Any:
        """``node``'s value for the candidate: the cached one with its changed window written in."""
        if node not in changed:
            return self.cache[node]
        window, new = changed[node]
        if window is None:
            return new
        top, bottom, left, right = window
        cached = self.cache[node]
        if (bottom - top, right - left) == tuple(cached.shape[-2:]):
            return new
        value = cached.clone()
        value[:, :, top:bottom, left:right] = new
        return value

    def _elementwise(self, node: fx.Node, changed: dict[fx.Node, tuple[Window | None, Any]]
                     ) -> tuple[Window, torch.Tensor]:
        """An element-wise node on the union of its inputs' changed windows."""
        windows = [changed[a][0] for a in self.inputs[node] if a in changed]
        # windows: the non-None ones (the callers filter them)
        top, bottom = min(w[0] for w in windows), max(w[1] for w in windows)  # type: ignore[index]
        left, right = min(w[2] for w in windows), max(w[3] for w in windows)  # type: ignore[index]

        def value(a: fx.Node) -> Any:
            if a not in self.varying:
                return self.cache[a]
            if a in changed and changed[a][0] == (top, bottom, left, right):
                return changed[a][1]
            crop = self.cache[a][:, :, top:bottom, left:right]
            if a not in changed:
                return crop
            crop = crop.clone()
            (t, b, lo, r), new = changed[a]  # type: ignore[misc]  # a changed input has its window
            crop[:, :, t - top : b - top, lo - left : r - left] = new
            return crop

        return (top, bottom, left, right), self._run(node, value)

    def _convolve(self, node: fx.Node,
                  change: tuple[Window | None, Any]) -> tuple[Window, torch.Tensor] | None:
        """(the changed window of a convolution's output, its values), given its input's changed window, or
        None when the window reaches no output."""
        module = self.modules[str(node.target)]
        conv = _windowable_conv(module)
        assert conv is not None
        (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
        ph, pw = cast(tuple[int, int], conv.padding)  # _windowable_conv refuses "same" / "valid"
        inp = self.cache[node.args[0]]  # type: ignore[index]  # the first argument is a Node (fx: Argument)
        height, width = inp.shape[-2:]
        (top, bottom, left, right), new = change  # type: ignore[misc]  # the caller checked: not None
        o_top, o_bottom = _reach(top, bottom, kh, sh, ph, height)
        o_left, o_right = _reach(left, right, kw, sw, pw, width)
        if o_top >= o_bottom or o_left >= o_right:
            return None
        out_h, out_w = self.cache[node].shape[-2:]
        if (sh, sw) != (1, 1) and o_right - o_left < 2 <= out_w:
            # a strided convolution one output column wide is what oneDNN's AMX bf16 kernel gets wrong (output
            # garbage: 3x3, stride 2, 3-4 input columns; PyTorch 2.14.1, 2026-12-06): two columns are exact
            o_left, o_right = (o_left, o_right + 1) if o_right < out_w else (o_left - 1, o_right)
        if (o_top, o_bottom, o_left, o_right) == (0, out_h, 0, out_w):  # the whole output: a plain pass
            # the first argument is a Node (fx types it as Argument)
            whole = self._whole(node.args[0], {node.args[0]: change})  # type: ignore[arg-type, dict-item]
            return (0, out_h, 0, out_w), self._call(node, (whole,), {})
        # the input rows/columns these outputs read, in padded coordinates, and their part inside the image
        r0, r1 = o_top * sh - ph, (o_bottom - 1) * sh - ph + kh
        c0, c1 = o_left * sw - pw, (o_right - 1) * sw - pw + kw
        i0, i1, j0, j1 = max(r0, 0), min(r1, height), max(c0, 0), min(c1, width)
        crop = inp[:, :, i0:i1, j0:j1].clone()
        a0, a1, b0, b1 = max(top, i0), min(bottom, i1), max(left, j0), min(right, j1)
        if a0 < a1 and b0 < b1:
            piece = new[:, :, a0 - top : a1 - top, b0 - left : b1 - left]
            crop[:, :, a0 - i0 : a1 - i0, b0 - j0 : b1 - j0] = piece
        if (i0, i1, j0, j1) != (r0, r1, c0, c1):
            crop = F.pad(crop, (j0 - c0, c1 - j1, i0 - r0, r1 - i1))
        return (o_top, o_bottom, o_left, o_right), _unpadded(module, crop)

    def accept(self, better: torch.Tensor) -> None:
        """Make the last :meth:`logits` candidate the best point of the rows where ``better`` is true."""
        pending, self._pending = self._pending, {}
        if not pending or not bool(better.any()):  # most late queries: nothing to write
            return
        rows = better.nonzero().squeeze(1)
        for node, (window, new) in pending.items():
            if node not in self.read:
                continue
            cached = self.cache[node]
            if window is not None:
                top, bottom, left, right = window
                cached[:, :, top:bottom, left:right][rows] = new[rows]
            elif (_batch_rows(new, better.shape[0]) and _batch_rows(cached, better.shape[0])
                  and new.shape == cached.shape):
                cached = cached.clone() if cached is new else cached
                cached[rows] = new[rows]
                self.cache[node] = cached
        if any(a in pending for a in self.inputs[self.output]):
            out = fx.node.map_arg(self.output.args[0], lambda a: self._whole(a, pending))
            self.best_logits[rows] = self._logits(out)[rows]

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the rows in ``rows`` (a boolean mask or indices) of the cache: a full pass on the best
        points left, so that values that follow the batch's size (a ``view``) follow it too."""
        self.start(self.cache[self.input][rows])


def _attr(module: nn.Module, target: str) -> Any:
    """The attribute ``target`` (dotted) of ``module``: a ``get_attr`` node's value."""
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value
