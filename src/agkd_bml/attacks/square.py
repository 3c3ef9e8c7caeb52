"""Square attack (Andriushchenko et al. 2020), L-inf, margin loss: AutoAttack's gradient-free part.

Random search: start from vertical stripes of +-eps, then each query adds a random square of +-2 eps
(one sign per channel, one location shared by the batch, as in the reference) to the best point so far
and keeps it if the margin ``z_y - max_{k != y} z_k`` went down. The square's side shrinks on the
reference schedule (``p_init`` 0.8, rescaled to the query budget). An image leaves at its first
misclassified point. Forward passes only, under ``torch.inference_mode``, on the prepared model of
:func:`agkd_bml.models.inference.inference_copy`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from agkd_bml.attacks.base import fmt_eps
from agkd_bml.attacks.norms import LINF
from agkd_bml.attacks.on_inference_copy import InferenceCopyAttack
from agkd_bml.attacks.ops import cw_margin

SQUARE_QUERIES = 5000
P_INIT = 0.8
#: (iteration on a 10,000-query scale, divisor of p_init from there on), the reference schedule.
_SCHEDULE = ((8000, 512), (6000, 256), (4000, 128), (2000, 64), (1000, 32), (500, 16), (200, 8), (50, 4), (10, 2))


def square_fraction(i: int, queries: int, p_init: float = P_INIT) -> float:
    """The fraction of pixels the square covers at query ``i`` of ``queries``."""
    it = int(i / queries * 10000)
    return next((p_init / div for start, div in _SCHEDULE if it > start), p_init)


def _signs(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.sign(torch.rand(shape, device=like.device, dtype=like.dtype, generator=generator) * 2 - 1)


def square(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, queries: int = SQUARE_QUERIES,
    p_init: float = P_INIT, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(adv, fooled) for a batch of images (N, C, H, W) with true labels ``y``."""
    n, c, h, w = x.shape
    out, fooled = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
    if n == 0:
        return out, fooled

    def margin(xa: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return -cw_margin(model(xa).logits, labels, margin=float("inf"))  # z_y - max other: > 0 while right

    with torch.inference_mode():
        rows = torch.arange(n, device=x.device)
        xs, best = x, (x + eps * _signs((n, c, 1, w), x, generator)).clamp(0.0, 1.0)
        best_margin = margin(best, y)
        for i in range(queries + 1):
            wrong = best_margin <= 0
            if wrong.any():
                out[rows[wrong]], fooled[rows[wrong]] = best[wrong], True
                keep = ~wrong
                rows, xs, best, best_margin = rows[keep], xs[keep], best[keep], best_margin[keep]
            if i == queries or rows.numel() == 0:
                break
            side = max(int(round(math.sqrt(square_fraction(i, queries, p_init) * h * w))), 1)
            vh, vw = (int(torch.randint(max(size - side, 1), (1,), generator=generator, device=x.device))
                      for size in (h, w))
            delta = torch.zeros((c, h, w), device=x.device, dtype=x.dtype)
            delta[:, vh : vh + side, vw : vw + side] = 2 * eps * _signs((c, 1, 1), x, generator)
            candidate = LINF.project(best + delta, xs, eps)
            m = margin(candidate, y[rows])
            better = m < best_margin
            best = torch.where(better.view(-1, 1, 1, 1), candidate, best)
            best_margin = torch.where(better, m, best_margin)
    return out.clone(), fooled.clone()


@dataclass(frozen=True)
class SquareAttack(InferenceCopyAttack):
    """``square-K``: Square attack with K queries (AutoAttack uses 5,000)."""

    name: str
    eps: float
    queries: int = SQUARE_QUERIES

    def settings(self) -> dict[str, Any]:
        return {"attack": "square", "eps": self.eps, "queries": self.queries, "restarts": 1, "p_init": P_INIT,
                "loss": "margin"}

    def describe(self) -> str:
        return f"{self.name}: Square, {self.queries} queries, eps {fmt_eps(self.eps)}, p_init {P_INIT}, margin loss"

    def run_prepared(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(adv, fooled) on a model from :func:`inference_copy`."""
        return square(model, x, y, eps=self.eps, queries=self.queries, generator=generator)
