"""The statistics every result of ours carries: the Wilson interval of an accuracy, the exact McNemar test
of two models on the same images, and how a paired accuracy gap moves with model size.

The capacity study asks whether AGKD-BML's loss to PGD-AT under AutoAttack shrinks as the models grow.
Each size gives one gap, measured on the same test images for both models, so its sampling error is that
of a paired difference (the images robust for one model only carry it), not of two independent
accuracies. A weighted straight line through the gaps against log-parameters then says how fast the gap
moves per 4-fold more parameters, with an interval, and what the line gives at a larger size.

Only the test images' sampling is in these intervals: each size is one training seed, and seed-to-seed
variation (a point or so at the small CNN's medium scale) is not. A straight line in log-parameters is an
assumption; with three or more sizes the residual check says whether the gaps scatter more than their
images explain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy.stats import binomtest, chi2

Z95 = 1.959963984540054


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a fraction ``p`` of ``n`` images (good near 0 and 1, unlike
    p ± z·se)."""
    if n == 0:
        return (float("nan"), float("nan"))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int, float]:
    """(images right only for ``a``, only for ``b``, the exact McNemar p-value) of two models' per-image
    flags on the same images: only the images they disagree on carry the comparison."""
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    p = binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return only_a, only_b, float(p)


@dataclass(kw_only=True, frozen=True)
class Gap:
    """Accuracy of ``a`` minus that of ``b`` on the same images, with its paired standard error."""

    value: float
    se: float
    only_a: int  #: images right for ``a`` only
    only_b: int
    n: int

    @property
    def ci95(self) -> tuple[float, float]:
        return (self.value - Z95 * self.se, self.value + Z95 * self.se)


def paired_gap(a: torch.Tensor, b: torch.Tensor) -> Gap:
    """The gap between two per-image bool flags on the same images, with the standard error of a paired
    difference of proportions: ``sqrt(n_a + n_b - (n_a - n_b)^2 / n) / n`` (``n_a``, ``n_b``: the images
    right for one of the two only)."""
    if a.shape != b.shape or a.ndim != 1 or not a.numel():
        raise ValueError(f"paired flags must be two 1-d tensors over the same images, not {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    n = a.numel()
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    var = max(only_a + only_b - (only_a - only_b) ** 2 / n, 0.0)
    return Gap(value=(only_a - only_b) / n, se=math.sqrt(var) / n, only_a=only_a, only_b=only_b, n=n)


@dataclass(kw_only=True, frozen=True)
class Trend:
    """A weighted least-squares line ``gap = intercept + slope * log4(parameters)``, centred at ``centre``."""

    slope: float  #: change of the gap per 4-fold more parameters
    slope_se: float
    level: float  #: the fitted gap at ``centre`` (log4 parameters, the weighted mean of the sizes)
    level_se: float
    centre: float
    sizes: int
    chi2: float  #: weighted squared residuals (0 for two sizes)

    def at(self, parameters: float) -> tuple[float, float, float]:
        """(gap, 95% low, 95% high) the line gives at ``parameters`` (beyond the
        sizes fitted: an extrapolation)."""
        dx = math.log(parameters, 4) - self.centre
        gap, se = self.level + self.slope * dx, math.hypot(self.level_se, dx * self.slope_se)
        return gap, gap - Z95 * se, gap + Z95 * se

    @property
    def slope_ci95(self) -> tuple[float, float]:
        return (self.slope - Z95 * self.slope_se, self.slope + Z95 * self.slope_se)

    @property
    def residual_p(self) -> float | None:
        """P(scatter at least this large | a straight line and image sampling only); None for two sizes."""
        return float(chi2.sf(self.chi2, self.sizes - 2)) if self.sizes > 2 else None


def log_linear_trend(parameters: list[int], gaps: list[Gap]) -> Trend | None:
    """The line through the gaps against log4(parameters), each weighted by 1 / its variance; None with fewer
    than two distinct sizes or a gap without sampling error (no discordant image: nothing to weigh)."""
    if len(parameters) != len(gaps):
        raise ValueError("one gap per size")
    if len(set(parameters)) < 2 or any(g.se <= 0 for g in gaps):
        return None
    xs = [math.log(p, 4) for p in parameters]
    ws = [1 / g.se**2 for g in gaps]
    total = sum(ws)
    centre = sum(w * x for w, x in zip(ws, xs, strict=True)) / total
    level = sum(w * g.value for w, g in zip(ws, gaps, strict=True)) / total
    sxx = sum(w * (x - centre) ** 2 for w, x in zip(ws, xs, strict=True))
    slope = sum(w * (x - centre) * (g.value - level) for w, x, g in zip(ws, xs, gaps, strict=True)) / sxx
    resid = sum(w * (g.value - level - slope * (x - centre)) ** 2 for w, x,
                g in zip(ws, xs, gaps, strict=True))
    return Trend(slope=slope, slope_se=math.sqrt(1 / sxx), level=level, level_se=math.sqrt(1 / total),
                 centre=centre, sizes=len(gaps), chi2=resid)
