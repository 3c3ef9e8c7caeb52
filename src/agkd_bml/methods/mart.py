"""MART (Wang et al. 2020): boosted CE on PGD examples + beta * KL weighted by misclassification, beta = 6."""

from __future__ import annotations

import torch

from agkd_bml.methods.base import LossTerms, Method
from agkd_bml.methods.losses import mart_loss, smooth_cross_entropy
from agkd_bml.methods.params import BetaParams
from agkd_bml.models import Classifier


class Mart(Method):
    summary = "MART: boosted CE + beta * misclassification-weighted KL."
    name = "mart"
    default_steps = 10
    Params = BetaParams
    hp: BetaParams

    def loss(
        self, model: Classifier, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> LossTerms:
        x_adv = self.attack(model, x, y, generator)
        adv, clean = model(torch.cat([x_adv, x])).logits.chunk(2)
        return {
            "ce": smooth_cross_entropy(adv, y, self.smoothing),
            "mart": mart_loss(clean, adv, y, self.hp.beta),
        }
