"""Standard training on clean images: the undefended model (UM) and the teacher of AGKD."""

from __future__ import annotations

import torch

from agkd_bml.methods.base import LossTerms, Method
from agkd_bml.methods.losses import smooth_cross_entropy
from agkd_bml.models import Classifier


class Standard(Method):
    summary = "Standard training on clean images (UM; the teacher)."
    name = "standard"

    def loss(
        self, model: Classifier, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> LossTerms:
        return {"ce": smooth_cross_entropy(model(x).logits, y, self.smoothing)}
