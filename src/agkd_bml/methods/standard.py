"""Standard training on clean images: the undefended model (UM) and the teacher of AGKD."""

from __future__ import annotations

from agkd_bml.methods.base import LossTerms, Method
from agkd_bml.methods.losses import smooth_cross_entropy


class Standard(Method):
    summary = "Standard training on clean images (UM; the teacher)."
    name = "standard"

    def loss(self, model, x, y, generator) -> LossTerms:
        return {"ce": smooth_cross_entropy(model(x).logits, y, self.smoothing)}
