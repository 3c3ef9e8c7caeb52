"""Attacks that run on the frozen, faster model copy of :func:`~agkd_bml.models.inference.inference_copy`.

AutoAttack's parts run thousands of passes, so they attack the BatchNorm-folded, channels-last copy.
``run_prepared`` takes that copy and returns ``(adv, fooled)``, so a cascade prepares it once and knows which
images each part broke; ``run`` is the plain :class:`Attack` entry point on the user's model. """

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn

from agkd_bml.attacks.base import Attack, Progress
from agkd_bml.models.inference import channels_last, inference_copy


class InferenceCopyAttack(Attack):
    """An attack whose work happens in :meth:`run_prepared` on an :func:`inference_copy` of the model."""

    @abstractmethod
    def run_prepared(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(adversarial images, bool mask of the images that fool ``model``) for a prepared ``model``."""

    def run_prepared_staged(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None,
        progress: Progress,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`run_prepared`, resumable within the call (Square, every few
        hundred queries); the others just run."""
        return self.run_prepared(model, x, y, generator)

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        adv, _ = self.run_prepared(inference_copy(model), channels_last(x), y, generator)
        return adv

    def run_staged(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None,
        progress: Progress,
    ) -> torch.Tensor:
        adv, _ = self.run_prepared_staged(inference_copy(model), channels_last(x), y, generator, progress)
        return adv
