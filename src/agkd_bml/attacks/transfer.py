"""Black-box transfer (paper Table 3): AEs crafted white-box on a *source* model, scored on the target.

A defense whose white-box accuracy is lower than its transfer accuracy behaves as expected; the reverse is a
classic sign of gradient masking (its own gradients are worse than a stranger's). """

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from agkd_bml.attacks.base import Attack
from agkd_bml.attacks.norms import Norm
from agkd_bml.attacks.pgd import PgdAttack


@dataclass(kw_only=True, frozen=True)
class TransferAttack(Attack):
    """``transfer:PATH``: ``inner`` (PGD-20 by default) run on the source
    model loaded from ``source_path``."""

    name: str
    source_path: str
    inner: PgdAttack
    source: nn.Module = field(compare=False, repr=False)

    @property
    def eps(self) -> float:  # type: ignore[override]  # read-only: the inner attack's budget
        return self.inner.eps

    @property
    def norm(self) -> Norm:  # type: ignore[override]  # read-only: the inner attack's threat model
        return self.inner.norm

    def settings(self) -> dict[str, Any]:
        return {"attack": "transfer", "source": self.source_path,
                **{f"source_{k}": v for k, v in self.inner.settings().items()}, "eps": self.eps}

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        return self.inner(self.source, x, y, generator).images
