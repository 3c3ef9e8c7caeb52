"""Square attack (Andriushchenko et al. 2020), L-inf or L2, margin loss: AutoAttack's gradient-free part.

Random search that keeps a candidate when the margin ``z_y - max_{k != y} z_k`` went down, with the
square's side shrinking on the reference schedule (``p_init`` 0.8, rescaled to the query budget); one
location per query is shared by the batch and each channel gets its own sign, as in the reference.

- L-inf (:func:`square`): start from vertical stripes of +-eps; each query adds a square of +-2 eps to
  the best point so far.
- L2 (:func:`square_l2`): start from a grid of 5x5 blocks, each a signed pair of "pyramids" (concentric
  squares with weights falling as 1/k^2, +1 on one half, -1 on the other) scaled to norm eps; each
  query moves the perturbation's mass of two random windows into the first one, redrawn as such a
  pattern plus the old content, and scales the whole perturbation back to norm eps.

An image leaves at its first misclassified point. Forward passes only, under ``torch.inference_mode``, on the
prepared model of :func:`agkd_bml.models.inference.inference_copy`. On the CPU, an L-inf query recomputes only
what its square reaches through the model's convolutions, residual blocks included (the windowed query engine
of :mod:`agkd_bml.attacks.engines`: the same logits, bit for bit where its probe says so, about 2x fewer
seconds per query on the small CNN on 2 cores); models it cannot trace, L2 queries and GPUs get full passes. A
success seen through windowed queries counts once a full pass agrees. Square is AutoAttack's longest part
(5,000 queries on every image still robust), so with a :class:`~agkd_bml.attacks.base.Progress` it reports its
search every :data:`REPORT_EVERY` queries and resumes from such a report to the uninterrupted call's result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from agkd_bml.attacks.base import Progress, fmt_eps, found_so_far, restore_found
from agkd_bml.attacks.engines import query_engine
from agkd_bml.attacks.norms import L2_NORM, LINF, Norm
from agkd_bml.attacks.on_inference_copy import InferenceCopyAttack
from agkd_bml.attacks.ops import cw_margin
from agkd_bml.models.windowed import Window

SQUARE_QUERIES = 5000
#: With a :class:`Progress`, the search reports after every this many queries (the caller throttles saving).
REPORT_EVERY = 100
P_INIT = 0.8
#: (iteration on a 10,000-query scale, divisor of p_init from there on), the reference schedule.
_SCHEDULE = ((8000, 512), (6000, 256), (4000, 128), (2000, 64), (1000, 32), (500, 16), (200, 8), (50, 4),
             (10, 2))


def square_fraction(i: int, queries: int, p_init: float = P_INIT) -> float:
    """The fraction of pixels the square covers at query ``i`` of ``queries``."""
    it = int(i / queries * 10000)
    return next((p_init / div for start, div in _SCHEDULE if it > start), p_init)


def _side(i: int, queries: int, p_init: float, area: int) -> int:
    """The L-inf square's side at query ``i``."""
    return max(int(round(math.sqrt(square_fraction(i, queries, p_init) * area))), 1)


def _signs(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.sign(torch.rand(shape, device=like.device, dtype=like.dtype, generator=generator) * 2 - 1)


#: ``propose(i, xs, best, generator) -> (candidate, window)``: query ``i``'s candidate for the images ``xs``
#: whose best point so far is ``best`` (both the rows still robust), and the window outside which it equals
#: ``best`` (rows, then columns; None when it may differ anywhere).
Proposal = Callable[[int, torch.Tensor, torch.Tensor, torch.Generator | None],
                    tuple[torch.Tensor, Window | None]]


def _random_search(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor, queries: int, propose: Proposal,
    generator: torch.Generator | None, progress: Progress | None = None, *,
    window_sides: tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Square's loop, shared by both threat models: keep a candidate where the margin ``z_y - max_{k != y}
    z_k`` went down; an image leaves at its first misclassified point. (adv, fooled).

    With ``progress``, the loop's state (query index, rows still searched, their best points and margins,
    the results so far, the generator's state) is reported every :data:`REPORT_EVERY` queries, and a saved
    one is continued: its ``start`` is then not used. ``window_sides``: every proposal comes with its
    window, of these sides (L-inf), so the query engine (:func:`~agkd_bml.attacks.engines.query_engine`)
    may recompute only what a window reaches.
    """
    out, fooled = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    if x.shape[0] == 0:
        return out, fooled

    def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return -cw_margin(logits, labels, margin=float("inf"))  # z_y - max other: > 0 while right

    with torch.inference_mode():
        engine = query_engine(model, x, window_sides)
        saved = progress.saved if progress is not None else None
        if saved is not None:
            first, rows, best, best_margin = _resume_search(saved, out, fooled, generator)
            engine.start(best)  # a resumed search's saved rows are all still right
        else:
            first, rows, best = 0, torch.arange(x.shape[0], device=x.device), start
            best_margin = margin(engine.start(best), y)
        xs = x[rows]
        for i in range(first, queries + 1):
            wrong = best_margin <= 0
            if not engine.exact and i > first and wrong.any():
                # a success seen through the engine's queries counts once a full pass agrees (the first
                # margins are a full pass's already)
                best_margin = torch.where(wrong, margin(engine.confirm(best), y[rows]), best_margin)
                wrong = best_margin <= 0
            if wrong.any():
                out[rows[wrong]], fooled[rows[wrong]] = best[wrong], True
                keep = ~wrong
                rows, xs, best, best_margin = rows[keep], xs[keep], best[keep], best_margin[keep]
                engine.keep(keep)
            if i == queries or rows.numel() == 0:
                break
            if progress is not None and i > first and i % REPORT_EVERY == 0:
                progress.report({"query": i, "rows": rows.to("cpu", copy=True),
                                 "best": best.to("cpu", copy=True),
                                 "margin": best_margin.to("cpu", copy=True),
                                 **found_so_far(out, fooled, generator)})
            candidate, window = propose(i, xs, best, generator)
            m = margin(engine.query(candidate, window), y[rows])
            better = m < best_margin
            engine.accept(better)
            best = torch.where(better.view(-1, 1, 1, 1), candidate, best)
            best_margin = torch.where(better, m, best_margin)
    return out.clone(), fooled.clone()


def _resume_search(
    saved: dict[str, Any], out: torch.Tensor, fooled: torch.Tensor, generator: torch.Generator | None
) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(next query, rows, best, best margin) of a reported search; its results so
    far go into ``out``/``fooled``."""
    restore_found(saved, out, fooled, generator, "Square search")
    device = out.device
    return (int(saved["query"]), saved["rows"].to(device), saved["best"].to(device, out.dtype),
            saved["margin"].to(device))


def _position(size: int, side: int, like: torch.Tensor, generator: torch.Generator | None) -> int:
    """A random top-left coordinate of a window of ``side`` in ``size`` (one
    per query, shared by the batch)."""
    return int(torch.randint(max(size - side, 1), (1,), generator=generator, device=like.device))


def square(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, queries: int = SQUARE_QUERIES,
    p_init: float = P_INIT, generator: torch.Generator | None = None, progress: Progress | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(adv, fooled) of the L-inf Square attack for images (N, C, H, W) with true labels ``y``."""
    n, c, h, w = x.shape

    def propose(
        i: int, xs: torch.Tensor, best: torch.Tensor, g: torch.Generator | None
    ) -> tuple[torch.Tensor, Window]:
        side = _side(i, queries, p_init, h * w)
        vh, vw = _position(h, side, x, g), _position(w, side, x, g)
        delta = torch.zeros_like(xs[:1])  # in the batch's layout: a mismatched one slows the additions 7x
        delta[:, :, vh : vh + side, vw : vw + side] = 2 * eps * _signs((c, 1, 1), x, g)
        # best is inside the eps-ball and the box, so the projection leaves it unchanged outside the square
        return LINF.project(best + delta, xs, eps), (vh, min(vh + side, h), vw, min(vw + side, w))

    with torch.inference_mode():
        start = (x + eps * _signs((n, c, 1, w), x, generator)).clamp(0.0, 1.0)
    sides = tuple(sorted({_side(i, queries, p_init, h * w) for i in range(queries)}))
    return _random_search(model, x, y, start, queries, propose, generator, progress, window_sides=sides)


def _pyramid(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """(rows, cols): concentric squares around the centre; a cell at Chebyshev distance k from it has
    weight ``sum_{j >= k} 1 / (j + 1)^2`` (so the centre is heaviest), normalised to L2 norm 1."""
    if rows == 0:
        return torch.zeros((0, cols), device=device)
    i = (torch.arange(rows, device=device) - rows // 2).abs()
    j = (torch.arange(cols, device=device) - cols // 2).abs()
    dist = torch.maximum(i[:, None], j[None, :])
    rings = max(rows // 2 + 1, cols // 2 + 1)
    weights = 1.0 / (torch.arange(rings, device=device, dtype=torch.float32) + 1) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[k] = sum_{j >= k} weights[j]
    p = tail[dist]
    return p / p.norm()


def _l2_pattern(side: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(side, side): a pyramid on the top half minus one on the bottom half,
    unit L2 norm, randomly transposed."""
    top = side // 2
    p = torch.cat([_pyramid(top, side, like.device), -_pyramid(side - top, side, like.device)])
    p = p / p.norm()
    if float(torch.rand((1,), generator=generator, device=like.device)) > 0.5:
        p = p.T
    return p.to(like.dtype)


def _window_norms(delta: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each image's and channel's part of ``delta``, (N, C, 1, 1)."""
    return delta.pow(2).sum((-2, -1), keepdim=True).sqrt()


def square_l2(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, queries: int = SQUARE_QUERIES,
    p_init: float = P_INIT, generator: torch.Generator | None = None, progress: Progress | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(adv, fooled) of the L2 Square attack (module docstring) for images (N, C, H, W), true labels ``y``."""
    n, c, h, w = x.shape

    def propose(
        i: int, xs: torch.Tensor, best: torch.Tensor, g: torch.Generator | None
    ) -> tuple[torch.Tensor, None]:
        side = max(int(round(math.sqrt(square_fraction(i, queries, p_init) * h * w))), 3)
        side = min(side + 1 - side % 2, h, w)  # odd, so the pyramid has a centre
        vh, vw, vh2, vw2 = (_position(size, side, x, g) for size in (h, w, h, w))
        delta = best - xs
        win1 = (slice(None), slice(None), slice(vh, vh + side), slice(vw, vw + side))
        win2 = (slice(None), slice(None), slice(vh2, vh2 + side), slice(vw2, vw2 + side))
        both = torch.zeros_like(delta[:1])
        both[win1] = 1.0
        both[win2] = 1.0
        # the norm left unused by the whole perturbation, shared by the channels, plus both windows' mass
        spare = (eps**2 - L2_NORM.size(delta).pow(2)).clamp_min(0).view(-1, 1, 1, 1) / c
        new = (_l2_pattern(side, x, g) * _signs((xs.shape[0], c, 1, 1), x, g)
               + delta[win1] / (_window_norms(delta[win1]) + 1e-12))
        new = new / (_window_norms(new) + 1e-12) * (spare + _window_norms(delta * both).pow(2)).sqrt()
        delta[win2] = 0.0
        delta[win1] = new
        return L2_NORM.to_surface(xs, delta, eps), None  # rescaled to the sphere: every pixel may change

    with torch.inference_mode():
        block = max(h // 5, 1)
        first = (h - 5 * block) // 2 if h >= 5 else 0
        init = torch.zeros_like(x)
        for top in range(first, first + (h // block) * block, block):
            for left in range(first, first + (w // block) * block, block):
                if top + block <= h and left + block <= w:
                    init[:, :, top : top + block, left : left + block] += (
                        _l2_pattern(block, x, generator) * _signs((n, c, 1, 1), x, generator))
        start = L2_NORM.to_surface(x, init, eps)
    return _random_search(model, x, y, start, queries, propose, generator, progress)


#: The Square search of each threat model.
SEARCHES = {"linf": square, "l2": square_l2}


@dataclass(kw_only=True, frozen=True)
class SquareAttack(InferenceCopyAttack):
    """``square-K``: Square attack with K queries (AutoAttack uses 5,000)."""

    name: str
    eps: float
    queries: int = SQUARE_QUERIES
    norm: Norm = LINF

    def settings(self) -> dict[str, Any]:
        return {"attack": "square", "eps": self.eps, "queries": self.queries, "restarts": 1, "p_init": P_INIT,
                "loss": "margin"}

    def describe(self) -> str:
        return (f"{self.name}: Square, {self.queries} queries, {self.norm.title} eps {fmt_eps(self.eps)}, "
                f"p_init {P_INIT}, margin loss")

    def run_prepared(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(adv, fooled) on a model from :func:`inference_copy`."""
        return SEARCHES[self.norm.name](model, x, y, eps=self.eps, queries=self.queries, generator=generator)

    def run_prepared_staged(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None,
        progress: Progress,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return SEARCHES[self.norm.name](model, x, y, eps=self.eps, queries=self.queries, generator=generator,
                                        progress=progress)
