"""SpsaAttack (Uesato et al. 2018), the gradient-free attack of the paper's section 4.5, via torchattacks.

It estimates gradients from finite differences of the margin loss along random +-1 directions, so it still
works where a model's analytic gradients are masked (zero, noisy or shattered). """

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from agkd_bml.attacks.base import Attack
from agkd_bml.attacks.torchattacks_adapter import run_library_attack, torchattacks


@dataclass(kw_only=True, frozen=True)
class SpsaAttack(Attack):
    """``spsa-K``: K iterations of Adam on SpsaAttack gradient estimates
    (Uesato et al.: lr 0.01, delta 0.01)."""

    name: str
    steps: int
    eps: float
    samples: int = 128
    lr: float = 0.01
    delta: float = 0.01

    def settings(self) -> dict[str, Any]:
        return {"attack": "spsa", "steps": self.steps, "eps": self.eps, "samples": self.samples,
                "lr": self.lr,
                "delta": self.delta, "loss": "margin", "library": "torchattacks"}

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        def make(m: nn.Module, seed: int) -> nn.Module:
            return torchattacks().SPSA(m, eps=self.eps, delta=self.delta, lr=self.lr, nb_iter=self.steps,
                                     nb_sample=self.samples, max_batch_size=min(64, self.samples))

        return run_library_attack(make, model, x, y, eps=self.eps, generator=generator)
