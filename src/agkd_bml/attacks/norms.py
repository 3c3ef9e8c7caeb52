"""The parts of an attack that depend on the threat model: random start, step direction, projection.

Every gradient attack is written once against :class:`Norm`; a new threat model (L2 next) is one more
subclass with these three pieces, not a new copy of each attack.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class Norm(ABC):
    """A threat model: the ball ``||x_adv - x|| <= eps`` intersected with the [0, 1] image box."""

    name: str

    @abstractmethod
    def random_start(self, x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        """A random perturbation inside the ball (the random start of PGD)."""

    @abstractmethod
    def step(self, grad: torch.Tensor) -> torch.Tensor:
        """The steepest-ascent direction of unit norm for a gradient (scaled by the step size)."""

    @abstractmethod
    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        """The nearest point of the ball around ``x`` intersected with [0, 1]."""


class Linf(Norm):
    """L-inf: uniform start in the cube, signed-gradient steps, coordinate-wise clipping."""

    name = "linf"

    def random_start(self, x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        return (torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator) * 2 - 1) * eps

    def step(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


LINF = Linf()
NORMS: dict[str, Norm] = {LINF.name: LINF}
