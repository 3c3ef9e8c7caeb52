"""PGD adversarial training (Madry et al. 2018): cross-entropy on untargeted k-step PGD examples."""

from __future__ import annotations

import torch

from agkd_bml.methods.base import LossTerms, Method
from agkd_bml.methods.losses import smooth_cross_entropy
from agkd_bml.models import Classifier


class PgdAt(Method):
    summary = "PGD adversarial training (Madry et al.)."
    name = "pgd-at"
    default_steps = 7

    def loss(
        self, model: Classifier, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> LossTerms:
        x_adv = self.attack(model, x, y, generator)
        return {"ce": smooth_cross_entropy(model(x_adv).logits, y, self.smoothing)}
