"""A frozen, faster copy of a model for attacks that run thousands of passes (AutoAttack).

Three changes that leave the function the same (up to float rounding) and make each pass cheaper:

- every ``Conv2d`` directly followed by a ``BatchNorm2d`` gets the BatchNorm folded into its weights (eval
  mode only: running statistics are constants then), which removes one full read-write of every activation;
- weights and inputs in ``channels_last``, the layout oneDNN (CPU) and cuDNN (CUDA) convolutions prefer;
- a convolution followed by a ReLU becomes :class:`ConvReLU`: on CPU, its passes without an input
  gradient (Square's queries, success checks) run both as one oneDNN call with the ReLU fused in and
  the weights cast once, not on every pass (bit-identical here; Square about
  1.06-1.1x faster on the small CNN).

"Followed by" is read in two ways. Inside an ``nn.Sequential`` it is the next layer (the small CNN). Where a
model's own ``forward`` code connects its layers (residual blocks, and models from outside the project), the
copy is traced with ``torch.fx`` (:func:`trace`) and a pair is fused where the convolution's output goes to
that one layer only; the copy is then the traced ``GraphModule``. A model ``torch.fx`` cannot trace (control
flow on values) keeps its own code and only the ``nn.Sequential`` pairs.

The copy has frozen parameters (attacks ask autograd for input gradients only) and is in eval mode, so the
caller's model, its ``.grad`` and its train/eval mode stay untouched. """

from __future__ import annotations

import copy
from typing import cast

import torch
from torch import fx, nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from agkd_bml.models.base import normalise, unwrap
from agkd_bml.models.external import output_logits
from agkd_bml.models.onednn import fused_conv_relu


def _fold_batchnorm(module: nn.Module) -> None:
    for child in module.modules():
        if type(child) is not nn.Sequential:
            continue
        for i in range(len(child) - 1):
            conv, bn = child[i], child[i + 1]
            if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                child[i] = fuse_conv_bn_eval(conv, bn)
                child[i + 1] = nn.Identity()


#: The dtypes the fused call is used for (float32, and bf16 under autocast).
_FUSABLE = (torch.float32, torch.bfloat16)


class ConvReLU(nn.Module):
    """``relu(conv(x))``, as one oneDNN call on CPU for passes that need no input gradient
    (:mod:`agkd_bml.models.onednn`: where its probe passed and it is not switched off).

    Such passes (forward-only attacks like Square, success checks) are most of AutoAttack's network work;
    fusing drops the ReLU's own read-write of the activation, and the weights are cast to the autocast dtype
    once instead of on every pass. Passes that need gradients keep the autograd path. """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self._geometry: tuple[list[int], list[int], list[int], int] = (
            list(cast(tuple[int, int], conv.padding)), list(conv.stride), list(conv.dilation), conv.groups)
        self._cast: dict[torch.dtype, tuple[tuple[int, int], torch.Tensor, torch.Tensor | None]] = {}

    def _weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weights in ``dtype``, cast once (and again only if the weights were changed in place)."""
        w, b = self.conv.weight, self.conv.bias
        key = (w.data_ptr(), w._version)
        cached = self._cast.get(dtype)
        if cached is None or cached[0] != key:
            cast = (w.detach().to(dtype).contiguous(memory_format=torch.channels_last),
                    None if b is None else b.detach().to(dtype))
            self._cast[dtype] = cached = (key, *cast)
        return cached[1], cached[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, self._geometry[0])

    def unpadded(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(conv(x))`` without the convolution's zero padding: for a crop that carries it already
        (:class:`~agkd_bml.models.windowed.WindowedForward`)."""
        return self._run(x, [0] * len(self._geometry[0]))

    def _run(self, x: torch.Tensor, padding: list[int]) -> torch.Tensor:
        fused = fused_conv_relu() if x.device.type == "cpu" else None
        if fused is not None and not (torch.is_grad_enabled() and x.requires_grad):
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
            if dtype in _FUSABLE and x.dtype in _FUSABLE:
                w, b = self._weights(dtype)
                return fused(x.to(dtype), w, b, padding, *self._geometry[1:], "relu", [], "")
        c = self.conv
        return torch.relu_(F.conv2d(x, c.weight, c.bias, c.stride, padding, c.dilation, c.groups))


def _fuse_conv_relu(module: nn.Module) -> None:
    """Replace each ``Conv2d`` followed (past folded-BatchNorm ``Identity``s) by a ``ReLU`` with
    :class:`ConvReLU`.

    Exact types only, here and in :func:`_fold_batchnorm`: a subclass (a weight-standardised convolution, a
    container with its own ``forward``) may compute something else, which a fused call would skip. """
    for child in list(module.modules()):
        if type(child) is not nn.Sequential:
            continue
        for i, conv in enumerate(child):
            if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
                continue
            j = i + 1
            while j < len(child) and isinstance(child[j], nn.Identity):
                j += 1
            if j < len(child) and type(child[j]) is nn.ReLU:
                child[i], child[j] = ConvReLU(conv), nn.Identity()


class _Tracer(fx.Tracer):
    """``torch.fx``'s tracer with :class:`ConvReLU` as a layer (not traced into) and our own helpers as calls:
    :func:`normalise` (its layout test is not traceable) and
    :func:`output_logits` (it inspects the output)."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=(normalise, output_logits))

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m) is ConvReLU or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule | None:
    """``model`` as a ``torch.fx`` graph of its layers and functions, or None where it cannot be traced."""
    if isinstance(model, fx.GraphModule):
        return model
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception:  # control flow on values, unsupported Python: such a model keeps its own code
        return None
    # the Identity left by each folded BatchNorm and fused ReLU: no call at all
    for node in list(graph.nodes):
        if node.op == "call_module" and type(tracer.root.get_submodule(str(node.target))) is nn.Identity:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


#: The calls that are a ReLU of their first argument (``inplace`` or not: the fused output is a new tensor).
_RELUS = (torch.relu, torch.relu_, F.relu)


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules[str(node.target)]) is nn.ReLU
    return ((node.op == "call_function" and node.target in _RELUS)
            or (node.op == "call_method" and node.target in ("relu", "relu_")))


def _fuse_graph(gm: fx.GraphModule) -> bool:
    """Fold BatchNorms and fuse ReLUs into the convolutions whose only user they are; whether any was."""
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    changed = False
    for node in list(gm.graph.nodes):
        target = str(node.target)
        if node.op != "call_module" or calls[target] != 1 or type(modules[target]) is not nn.Conv2d:
            continue
        conv = modules[str(node.target)]
        if len(node.users) == 1:  # a BatchNorm that only this convolution feeds
            (bn_node,) = node.users
            bn = modules.get(str(bn_node.target)) if bn_node.op == "call_module" else None
            if (type(bn) is nn.BatchNorm2d and bn.track_running_stats and calls[str(bn_node.target)] == 1
                    and bn_node.args == (node,) and not bn_node.kwargs):
                conv = fuse_conv_bn_eval(conv, bn)
                bn_node.replace_all_uses_with(node)
                gm.graph.erase_node(bn_node)
                changed = True
        if (len(node.users) == 1 and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
                and _is_relu(relu := next(iter(node.users)), modules) and relu.args[:1] == (node,)):
            conv = ConvReLU(conv)
            relu.replace_all_uses_with(node)
            gm.graph.erase_node(relu)
            changed = True
        if conv is not modules[str(node.target)]:
            parent, _, name = str(node.target).rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, name, conv)
    if changed:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return changed


def inference_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with BatchNorm folded into convolutions, channels-last weights and
    convolution + ReLU pairs as :class:`ConvReLU` (a traced ``GraphModule``
    where its own code connects them)."""
    fast = copy.deepcopy(unwrap(model)).eval()
    for p in fast.parameters():
        p.requires_grad_(False)
    _fold_batchnorm(fast)
    fast = fast.to(memory_format=torch.channels_last)
    _fuse_conv_relu(fast)
    traced = trace(fast) if any(type(m) is nn.Conv2d for m in fast.modules()) else None
    if traced is not None and _fuse_graph(traced):
        traced._forward_hooks.update(fast._forward_hooks)  # the model's own hooks stay on the copy
        return traced
    return fast


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the layout :func:`inference_copy` models run fastest on (4-d image batches only)."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
