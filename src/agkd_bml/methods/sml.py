"""Single-directional metric learning (SML; Mao et al. 2019, "triplet loss adversarial training").

Anchor: untargeted PGD example; positive: its clean image; negative: the clean image of another class in
the batch whose embedding is closest (angular distance) to the anchor. Loss: CE on the anchor plus
``lambda_1 * (triplet + lambda_2 * L_norm)``, the same metric loss as BML: only the direction differs.

This is SML as the AGKD-BML paper describes it (the baseline that differs from BML only in direction),
simplified against Mao et al.'s released code in four documented ways:

1. negatives are mined in the batch by the angular distance ``1 - |cos|``; Mao et al. mine them from a
   pool of separate clean images by the signed cosine;
2. one triplet per anchor; Mao et al. add a second triplet with another clean image of the same class
   as the positive;
3. the positive is the clean image itself; Mao et al. add a small random noise to it;
4. training starts from scratch; Mao et al. fine-tune a PGD-AT model.

The paper's SML row (Table 1) comes from Mao et al.'s numbers, so a gap between our SML and that row may come
from these differences as well as from scale. """

from __future__ import annotations

import torch

from agkd_bml.methods.base import LossTerms, Method
from agkd_bml.methods.losses import metric_loss, smooth_cross_entropy
from agkd_bml.methods.params import MetricParams
from agkd_bml.models import Classifier


def hardest_negative(anchor: torch.Tensor, pool: torch.Tensor, pool_labels: torch.Tensor,
                     labels: torch.Tensor) -> torch.Tensor:
    """Index into ``pool`` of the closest (angular distance) embedding of a class other than ``labels[i]``."""
    a = torch.nn.functional.normalize(anchor.detach(), dim=1)
    p = torch.nn.functional.normalize(pool.detach(), dim=1)
    dist = 1.0 - (a @ p.T).abs()
    dist = dist.masked_fill(labels[:, None] == pool_labels[None, :], float("inf"))
    return dist.argmin(1)


class Sml(Method):
    summary = ("Single-directional metric learning (Mao et al.): "
               "untargeted anchor, hardest negative in the batch.")
    name = "sml"
    default_steps = 7
    Params = MetricParams
    hp: MetricParams

    def loss(
        self, model: Classifier, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> LossTerms:
        x_adv = self.attack(model, x, y, generator)
        out = model(torch.cat([x_adv, x]))
        adv_logits, _ = out.logits.chunk(2)
        anchor, positive = out.embedding.chunk(2)
        negative = positive[hardest_negative(anchor, positive, y, y)]
        hp = self.hp
        return {
            "ce": smooth_cross_entropy(adv_logits, y, self.smoothing),
            "metric": metric_loss(
                anchor, positive, negative, margin=hp.margin, weight=hp.lambda_triplet,
                norm_weight=hp.lambda_norm
            ),
        }
