"""Accuracy under attack, per sample, so that a worst case over attacks can be taken afterwards."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from agkd_bml.attacks import AttackSpec, eval_mode
from agkd_bml.data import iterate_batches
from agkd_bml.models import Classifier


@dataclass
class AttackResult:
    """Per-sample outcome of one attack on one model."""

    spec: AttackSpec
    correct: torch.Tensor  #: bool (n,), True where the model is still right on the attacked image
    seed: int

    @property
    def n(self) -> int:
        return int(self.correct.numel())

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean()) if self.n else float("nan")

    def wilson(self, z: float = 1.96) -> tuple[float, float]:
        """95% Wilson score interval of the accuracy."""
        n, p = self.n, self.accuracy
        if n == 0:
            return (float("nan"), float("nan"))
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return (max(0.0, centre - half), min(1.0, centre + half))


def evaluate_attacks(
    model: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    specs: list[AttackSpec],
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    desc: str = "",
) -> list[AttackResult]:
    """Run each attack on uint8 images ``x`` (N, C, H, W) with labels ``y``; return per-sample results.

    Each attack's random starts come from a generator seeded with ``seed``, so numbers are reproducible.
    """
    device = torch.device(device)
    results = []
    with eval_mode(model):
        for spec in specs:
            gen = torch.Generator(device=device).manual_seed(seed)
            correct = []
            batches = iterate_batches(x, y, batch_size, device=device)
            bar = tqdm(
                batches, total=math.ceil(x.shape[0] / batch_size), desc=f"{desc}{spec.name}",
                disable=not progress, leave=False, unit="batch",
            )
            for xb, yb in bar:
                adv = spec.run(model, xb, yb, gen)
                with torch.no_grad():
                    correct.append((model(adv).logits.argmax(1) == yb).cpu())
            results.append(AttackResult(spec, torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool), seed))
    return results
