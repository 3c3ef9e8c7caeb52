"""The tensor operations attacks and training objectives share: per-sample losses and target choice."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

#: A per-sample loss ``(logits, labels) -> (N,)``. Untargeted attacks ascend it on the true labels,
#: targeted attacks descend it on the target labels.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def upcast(t: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (AMP) to float32 for losses; float32 and float64 stay as they are."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy."""
    return F.cross_entropy(upcast(logits), labels, reduction="none")


def cw_margin(logits: torch.Tensor, labels: torch.Tensor, margin: float = 50.0, *,
              targeted: bool = False) -> torch.Tensor:
    """CW margin ``max other logit - logit of label``, clipped at ``margin`` past the decision boundary only.

    Ascending it (untargeted) stops pushing once the best other class wins by ``margin``; descending it
    (``targeted``, ``labels`` = the targets) stops once the target wins by ``margin``. This is the loss of
    Carlini & Wagner as the Feature-Scattering / Bilateral / AGKD-BML code writes it (margin 50), which clips
    on that one side: a clip on the other side too would zero the gradient exactly where the attack has the
    furthest to go (an untargeted attack on an image whose true class leads by more than 50). """
    logits = upcast(logits)
    own = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf")).amax(1)
    return (other - own).clamp(min=-margin) if targeted else (other - own).clamp(max=margin)


def targeted_cw_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`cw_margin` for a targeted attack (``labels`` are the targets)."""
    return cw_margin(logits, labels, targeted=True)


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "cw": cw_margin}
#: The same losses for targeted attacks, where they differ (CW clips on the other side).
TARGETED_LOSSES: dict[str, LossFn] = {**LOSSES, "cw": targeted_cw_margin}


def most_confusing_class(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``y_mc``: the highest logit other than the true class (Eq. 5: smallest CE among wrong classes)."""
    masked = logits.detach().masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return masked.argmax(1)
