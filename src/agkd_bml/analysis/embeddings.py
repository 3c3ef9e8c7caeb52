"""Penultimate embeddings (and predictions) of clean or attacked images, batched on the model's device."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from agkd_bml.attacks import Attack
from agkd_bml.data import iterate_batches
from agkd_bml.models.modes import eval_mode


@dataclass
class Embedded:
    """Embeddings (N, D) on the CPU, with the model's predictions and the true labels."""

    embedding: torch.Tensor
    pred: torch.Tensor
    labels: torch.Tensor


def embed(
    model: nn.Module,  # called on images in [0, 1], returns ModelOutput
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: Attack | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> Embedded:
    """Embed uint8 images ``x``, attacked by ``attack`` first when given
    (random starts seeded by ``seed``)."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    embs, preds = [], []
    with eval_mode(model):
        for xb, yb in iterate_batches(x, y, batch_size, device=device):
            if attack is not None:
                xb = attack(model, xb, yb, gen).images
            with torch.no_grad():
                out = model(xb)
            embs.append(out.embedding.float().cpu())
            preds.append(out.logits.argmax(1).cpu())
    return Embedded(torch.cat(embs), torch.cat(preds), y.clone())
