"""Loss terms shared by the training methods, written as the AGKD-BML paper
and its released code define them."""

from __future__ import annotations

import functools
import operator
from typing import Any

import torch
import torch.nn.functional as F

from agkd_bml.attacks.ops import upcast
from agkd_bml.models.base import is_channels_last


def smooth_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Feature-Scattering label smoothing: ``1 - s`` on the true class, ``s / (K - 1)`` on each other.

    (PyTorch's built-in ``label_smoothing`` instead spreads ``s / K`` over *all* classes; the paper's 0.5
    follows Feature Scattering, so the true class gets exactly 0.5.) """
    one_hot = F.one_hot(labels, num_classes).float()
    return one_hot * (1.0 - smoothing) + (1.0 - one_hot) * (smoothing / (num_classes - 1))


def smooth_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy against :func:`smooth_targets` (plain cross-entropy when ``smoothing`` is 0)."""
    if smoothing == 0:
        return F.cross_entropy(upcast(logits), labels)
    q = smooth_targets(labels, logits.shape[1], smoothing)
    return -(q * F.log_softmax(upcast(logits), dim=1)).sum(1).mean()


def _minmax(a: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(N, H, W) maps -> (N, H*W) scaled to [0, 1] per sample (a constant map gives
    zeros; ``eps`` keeps it finite)."""
    a = a.flatten(1)
    a = a - a.amin(1, keepdim=True)
    return a / (a.amax(1, keepdim=True) + eps)


class _GradInOwnLayout(torch.autograd.Function):
    """Identity whose backward hands the gradient back in the layout of its input.

    The channel sum's gradient is an expand over channels, which reaches the model's channels-last feature map
    as an NCHW tensor; the last ReLU's backward then takes PyTorch's strided path (about 7% of the student's
    backward in an AGKD-BML step here). Matching the layout keeps the fast path. """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # ctx: FunctionCtx, which takes any attribute
        ctx.channels_last = is_channels_last(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last) if ctx.channels_last else grad


def attention_map(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Class-irrelevant attention map: channel sum of (N, C, H, W) features, flattened, min-max per sample.

    Returns (N, H*W) in [0, 1] with min 0 and max 1 per sample. Summing or averaging over channels gives
    the same map after normalising.
    """
    if features.requires_grad:
        features = _GradInOwnLayout.apply(features)
    return _minmax(upcast(features).sum(1), eps)


def grad_cam(features: torch.Tensor, fc_weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of class ``classes[i]`` for each sample, (N, H*W) in [0, 1].

    With a global-average-pool + linear head, d logit_c / d A_k(i, j) = w[c, k] / (H W) everywhere, so
    Grad-CAM's channel weights are exactly the head's weights: ReLU(sum_k w[c, k] A_k) up to scale. The closed
    form is exact, differentiable, and needs no second backward pass during training. """
    cam = torch.einsum("nchw,nc->nhw", upcast(features), upcast(fc_weight)[classes])
    return _minmax(cam.relu())


def cam_average(features: torch.Tensor, fc_weight: torch.Tensor) -> torch.Tensor:
    """CAM (Zhou et al. 2016) averaged over all classes, (N, H*W) in [0, 1]."""
    return _minmax(torch.einsum("nchw,c->nhw", upcast(features), upcast(fc_weight).mean(0)))


#: The maps AGKD can distil (Table 6): class-irrelevant (the paper's choice), Grad-CAM of the original or
#: of the false class, or the class-averaged CAM.
ATTENTION_KINDS = ("agkd", "gc-orig", "gc-false", "cam-avg")


def distilled_map(
    kind: str, features: torch.Tensor, fc_weight: torch.Tensor, orig: torch.Tensor, false: torch.Tensor
) -> torch.Tensor:
    """The attention map of ``kind`` for features whose true class is
    ``orig`` and attacked class ``false``."""
    if kind == "agkd":
        return attention_map(features)
    if kind == "cam-avg":
        return cam_average(features, fc_weight)
    if kind in ("gc-orig", "gc-false"):
        return grad_cam(features, fc_weight, orig if kind == "gc-orig" else false)
    raise ValueError(f"unknown attention map {kind!r}; choose one of {', '.join(ATTENTION_KINDS)}")


def angular_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 - |cos(a, b)|`` per row: 0 for parallel or anti-parallel vectors, 1 for orthogonal ones."""
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return 1.0 - cos.abs().clamp(max=1.0)


def triplet_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 0.03
) -> torch.Tensor:
    """Mean hinge ``[d(a, p) - d(a, n) + margin]_+`` with the angular distance (Mao et al. 2019)."""
    return F.relu(angular_distance(anchor, positive) - angular_distance(anchor, negative) + margin).mean()


def embedding_norm(*embeddings: torch.Tensor) -> torch.Tensor:
    """Sum over the given embeddings of their mean squared entry (the ``L_norm`` term of the BML loss)."""
    return functools.reduce(operator.add, (upcast(e).pow(2).mean() for e in embeddings))


def metric_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    *,
    margin: float,
    weight: float,
    norm_weight: float,
) -> torch.Tensor:
    """``weight * (triplet + norm_weight * L_norm)``: the BML / SML loss
    (weights 2 and 0.001 in the paper)."""
    return weight * (triplet_loss(anchor, positive, negative, margin) + norm_weight
                     * embedding_norm(anchor, positive, negative))


def mart_loss(
    clean_logits: torch.Tensor, adv_logits: torch.Tensor, labels: torch.Tensor, beta: float = 6.0
) -> torch.Tensor:
    """MART's extra terms (Wang et al. 2020): boosted BCE on the AE's best wrong class + beta * weighted KL.

    ``-log(1 - p_adv[best wrong class])`` + beta * mean_i KL(p_clean_i || p_adv_i) * (1 - p_clean_i[y_i]). The
    CE on the AE itself is left to the caller (MART uses plain CE, AGKD-BML its smoothed CE). """
    adv_probs = F.softmax(upcast(adv_logits), dim=1)
    top2 = adv_probs.topk(2, dim=1).indices
    wrong = torch.where(top2[:, 0] == labels, top2[:, 1], top2[:, 0])
    bce = F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), wrong)
    clean_probs = F.softmax(upcast(clean_logits), dim=1)
    kl = (clean_probs * (torch.log(clean_probs + 1e-12) - torch.log(adv_probs + 1e-12))).sum(1)
    true_prob = clean_probs.gather(1, labels[:, None]).squeeze(1)
    return bce + beta * (kl * (1.0000001 - true_prob)).mean()
