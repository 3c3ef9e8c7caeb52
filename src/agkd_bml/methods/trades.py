"""TRADES (Zhang et al. 2019): CE on clean images + beta * KL(clean || adversarial), beta = 6."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from agkd_bml.attacks import pgd, upcast
from agkd_bml.methods.base import LossTerms, Method
from agkd_bml.methods.losses import smooth_cross_entropy
from agkd_bml.methods.params import BetaParams
from agkd_bml.models import Classifier
from agkd_bml.models.modes import eval_mode


def _kl(adv_logits: torch.Tensor, clean_log_probs: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(p_clean || p_adv)."""
    return F.kl_div(F.log_softmax(upcast(adv_logits),
                                  1), clean_log_probs, reduction="none", log_target=True).sum(1)


class Trades(Method):
    summary = "TRADES: clean CE + beta * KL(clean || adversarial)."
    name = "trades"
    default_steps = 10
    attack_loss = "kl"  # ascends KL(clean || adversarial), not the CE of the label
    Params = BetaParams
    hp: BetaParams

    def loss(
        self, model: Classifier, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> LossTerms:
        with torch.no_grad(), eval_mode(model):
            clean_log_probs = F.log_softmax(upcast(model(x).logits), 1)
        # TRADES starts from a small Gaussian perturbation and ascends the KL divergence.
        start = 0.001 * torch.randn(x.shape, device=x.device, generator=generator)
        x_adv = pgd(
            model, x, y, eps=self.eps, step_size=self.step_size, steps=self.steps, init=start,
            loss=lambda logits, _y: _kl(logits, clean_log_probs),
        )
        logits = model(torch.cat([x, x_adv])).logits
        clean, adv = logits.chunk(2)
        robust = _kl(adv, F.log_softmax(upcast(clean), 1)).mean()
        return {"ce": smooth_cross_entropy(clean, y, self.smoothing), "kl": self.hp.beta * robust}
