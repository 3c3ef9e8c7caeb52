"""The parts of an attack that depend on the threat model: starts, step direction, size, projection.

Every gradient attack is written once against :class:`Norm`; a threat model is one subclass with these pieces,
not a new copy of each attack. L-inf is the paper's (and the only one training uses); L2 is the other standard
threat model of robustness benchmarks (RobustBench, AutoAttack's L2 version). """

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from agkd_bml.data import DataSpec
from agkd_bml.data.datasets import image_linf_eps


def _rows(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-image value shaped to broadcast over images like ``like``."""
    return v.view(-1, *[1] * (like.ndim - 1))


class Norm(ABC):
    """A threat model: the ball ``||x_adv - x|| <= eps`` intersected with the [0, 1] image box."""

    name: str
    title: str  #: how tables name it (``L-inf``, ``L2``)

    @abstractmethod
    def size(self, d: torch.Tensor) -> torch.Tensor:
        """The norm of each image's perturbation, (N,)."""

    @abstractmethod
    def random_start(self, x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        """A random perturbation inside the ball (the random start of PGD)."""

    @abstractmethod
    def surface_direction(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Random noise whose scaling to norm 1 is APGD's start direction
        (uniform for L-inf, Gaussian for L2)."""

    @abstractmethod
    def step(self, grad: torch.Tensor) -> torch.Tensor:
        """The steepest-ascent direction of unit norm for a gradient (scaled by the step size)."""

    @abstractmethod
    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        """The point of the ball around ``x`` intersected with [0, 1] that
        the attacks of this norm move to."""

    def to_surface(self, x: torch.Tensor, d: torch.Tensor, eps: float) -> torch.Tensor:
        """``x`` plus ``d`` scaled to norm exactly eps (the ball's surface), clipped to [0, 1]."""
        return (x + eps * d / (_rows(self.size(d), d) + 1e-12)).clamp(0.0, 1.0)

    def surface_start(self, x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        """APGD's random start: noise moved onto the ball's surface (:meth:`to_surface`)."""
        return self.to_surface(x, self.surface_direction(x, generator), eps)


class Linf(Norm):
    """L-inf: uniform start in the cube, signed-gradient steps, coordinate-wise clipping."""

    name, title = "linf", "L-inf"

    def size(self, d: torch.Tensor) -> torch.Tensor:
        return d.flatten(1).abs().amax(1)

    def random_start(self, x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        return self.surface_direction(x, generator) * eps

    def surface_direction(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator) * 2 - 1

    def step(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


class L2(Norm):
    """L2: a start uniform in radius along a Gaussian direction, normalised-gradient steps, radial shrinking.

    The projection shrinks the perturbation onto the ball, then clips to the box, as every reference
    implementation does (AutoAttack, torchattacks, RobustBench): clipping moves each pixel towards the clean
    one, so the result stays inside the ball. """

    name, title = "l2", "L2"

    def size(self, d: torch.Tensor) -> torch.Tensor:
        return d.flatten(1).float().norm(dim=1).to(d.dtype)

    def random_start(self, x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        d = self.surface_direction(x, generator)
        r = torch.rand(x.shape[0], device=x.device, dtype=x.dtype, generator=generator) * eps
        return d * _rows(r / self.size(d).clamp_min(1e-12), d)

    def surface_direction(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)

    def step(self, grad: torch.Tensor) -> torch.Tensor:
        return grad / (_rows(self.size(grad), grad) + 1e-12)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        d = x_adv - x
        n = _rows(self.size(d), d)
        return (x + d * (torch.clamp(n, max=eps) / (n + 1e-12))).clamp_(0.0, 1.0)


LINF, L2_NORM = Linf(), L2()
NORMS: dict[str, Norm] = {LINF.name: LINF, L2_NORM.name: L2_NORM}

#: The L2 budget of CIFAR-10 benchmarks (RobustBench, AutoAttack); other image sizes scale it by sqrt(dims).
L2_EPS_CIFAR = 0.5


def default_l2_eps(channels: int, size: int) -> float:
    """0.5 on 3x32x32 images, scaled by the square root of the number of pixel values elsewhere.

    An L2 ball of radius eps spreads eps / sqrt(d) per coordinate over d coordinates, so this keeps the
    per-pixel budget of CIFAR-10's standard 0.5 (0.072 on 1x8x8 digits). """
    return L2_EPS_CIFAR * math.sqrt(channels * size * size / (3 * 32 * 32))


def default_eps(norm: str, *, channels: int, size: int, linf: float | None = None) -> float:
    """The default budget of a threat model: the one place every command and the API take it from.

    L-inf: ``linf`` (a dataset's own budget) where known, else the convention of the image shape
    (:func:`~agkd_bml.data.datasets.image_linf_eps`: 0.3 on MNIST-like images, 8/255 otherwise); L2:
    :func:`default_l2_eps` of the image size.
    """
    if norm == "l2":
        return default_l2_eps(channels, size)
    return linf if linf is not None else image_linf_eps(channels, size)


def dataset_eps(spec: DataSpec, norm: str = "linf") -> float:
    """The default budget on a dataset: its own L-inf eps (8/255 on CIFAR-10),
    or the L2 one of its image size."""
    return default_eps(norm, channels=spec.channels, size=spec.size, linf=spec.default_eps)
