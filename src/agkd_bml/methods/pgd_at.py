"""PGD adversarial training (Madry et al. 2018): cross-entropy on untargeted k-step PGD examples."""

from __future__ import annotations

from agkd_bml.methods.base import LossTerms, Method
from agkd_bml.methods.losses import smooth_cross_entropy


class PgdAT(Method):
    summary = "PGD adversarial training (Madry et al.)."
    name = "pgd-at"
    default_steps = 7

    def loss(self, model, x, y, generator) -> LossTerms:
        x_adv = self.attack(model, x, y, generator)
        return {"ce": smooth_cross_entropy(model(x_adv).logits, y, self.smoothing)}
