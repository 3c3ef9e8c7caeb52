"""AGKD-BML (Wang et al., ICCV 2021) and its ablations ``bml`` (no distillation)
and ``agkd`` (no metric learning).

One training step, as in the paper and the authors' released code:

1. ``y_mc`` = the student's highest wrong-class logit on the clean batch (eval mode, no grad).
2. Backward samples: for each ``x^s`` a random (augmented) training image of class ``y_mc``.
3. One targeted PGD call on ``[x^s ; x^{y_mc}]`` towards ``[y_mc ; s]``: the forward and the backward AEs
   (same result as two calls, half the kernel launches).
4. Teacher attention maps of the clean ``x^s`` and ``x^{y_mc}`` (frozen, inference mode).
5. One train-mode student pass over ``[forward AE ; x^s ; backward AE]``, then
   label-smoothed CE on the forward AE + AGKD (L1 between attention maps, both pairs)
   + BML = lambda_1 * (angular triplet(anchor=forward AE, positive=x^s, negative=backward AE)
   + lambda_2 * L_norm) [+ MART on (x^s, forward AE) in the released 10-step variant].

The ``agkd`` ablation has no backward sample (the backward pair exists for metric learning), so it attacks and
distils the forward pair only. """

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, cast

import torch
import torch.nn.functional as F

from agkd_bml.attacks import most_confusing_class
from agkd_bml.config import HyperParams
from agkd_bml.methods.base import LossTerms, Method
from agkd_bml.methods.losses import (
    distilled_map,
    mart_loss,
    metric_loss,
    smooth_cross_entropy,
)
from agkd_bml.methods.params import AttentionParams, BetaParams, MartTermParams, MetricParams
from agkd_bml.models import Classifier, unwrap
from agkd_bml.models.modes import eval_mode


@dataclass(kw_only=True, frozen=True)
class AgkdBmlParams(MetricParams, AttentionParams, MartTermParams, BetaParams):
    """AGKD-BML's: the metric loss, the distilled map, the released code's MART term."""


@dataclass(kw_only=True, frozen=True)
class BmlParams(MetricParams, MartTermParams, BetaParams):
    """The BML ablation's: no distilled map."""


@dataclass(kw_only=True, frozen=True)
class AgkdParams(AttentionParams, MartTermParams, BetaParams):
    """The AGKD ablation's: no metric loss."""


class AgkdBml(Method):
    summary = "AGKD-BML: attention distillation from a clean teacher + bi-directional metric learning."
    name = "agkd-bml"
    default_steps = 2
    default_smoothing = 0.5
    # forward AEs towards the most confusing class, backward AEs back to the source class
    attack_targeted = True
    use_agkd: ClassVar[bool] = True
    use_bml: ClassVar[bool] = True
    needs_teacher = True
    needs_sampler = True
    Params: ClassVar[type[HyperParams]] = AgkdBmlParams
    hp: AgkdBmlParams | BmlParams | AgkdParams

    def settings(self) -> dict[str, float | int | bool | str]:
        hp = self.hp
        return {**super().settings(), "agkd": self.use_agkd, "bml": self.use_bml, "mart": hp.mart,
                "attention": hp.attention if isinstance(hp, AttentionParams) else "none"}

    def loss(
        self, model: Classifier, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> LossTerms:
        with torch.no_grad(), eval_mode(model):
            y_mc = most_confusing_class(model(x).logits, y)
        if self.use_bml:
            assert self.ctx.sampler is not None  # needs_sampler: the trainer hands one over
            x_back, _ = self.ctx.sampler.draw(y_mc, generator)
            clean = torch.cat([x, x_back])
            adv = self.attack(model, clean, torch.cat([y_mc, y]), generator, targeted=True)
            x_fwd, x_bwd = adv.chunk(2)
            out = model(torch.cat([x_fwd, x, x_bwd]))
        else:
            clean = x
            x_fwd = self.attack(model, x, y_mc, generator, targeted=True)
            out = model(torch.cat([x_fwd, x]))
        n = x.shape[0]
        fwd_logits, clean_logits = out.logits[:n], out.logits[n : 2 * n]
        terms: LossTerms = {"ce": smooth_cross_entropy(fwd_logits, y, self.smoothing)}
        if self.use_agkd:
            # Distil into the adversarial views only: forward AE <- x^s, backward AE <- x^{y_mc}.
            # The loss is a sum of one mean L1 per pair, i.e. pairs * the mean over both.
            orig, false = (torch.cat([y, y_mc]), torch.cat([y_mc, y])) if self.use_bml else (y, y_mc)
            assert isinstance(self.hp, AttentionParams)  # use_agkd: the record has the distilled map
            kind, teacher = self.hp.attention, self.ctx.teacher
            assert teacher is not None  # needs_teacher: the trainer hands it over
            with torch.inference_mode():
                teacher_maps = distilled_map(kind, teacher(clean).features, teacher.fc.weight, orig, false)
            adv_features = torch.cat([out.features[:n],
                                      out.features[2 * n :]]) if self.use_bml else out.features[:n]
            head = cast(Classifier, unwrap(model)).fc
            student_maps = distilled_map(kind, adv_features, head.weight, orig, false)
            pairs = 2 if self.use_bml else 1
            terms["agkd"] = pairs * F.l1_loss(student_maps, teacher_maps.clone())
        if self.use_bml:
            anchor, positive, negative = out.embedding.chunk(3)
            hp = self.hp
            assert isinstance(hp, MetricParams)  # use_bml: the record has the metric loss
            terms["bml"] = metric_loss(
                anchor, positive, negative, margin=hp.margin, weight=hp.lambda_triplet,
                norm_weight=hp.lambda_norm
            )
        if self.hp.mart:
            terms["mart"] = mart_loss(clean_logits, fwd_logits, y, self.hp.beta)
        return terms


class Bml(AgkdBml):
    """Ablation: bi-directional metric learning without attention distillation (no teacher)."""

    summary = "Ablation: BML without attention distillation."
    name = "bml"
    use_agkd = False
    needs_teacher = False
    Params = BmlParams


class Agkd(AgkdBml):
    """Ablation: attention-guided distillation without metric learning (forward pair only)."""

    summary = "Ablation: AGKD without metric learning."
    name = "agkd"
    use_bml = False
    needs_sampler = False
    Params = AgkdParams
