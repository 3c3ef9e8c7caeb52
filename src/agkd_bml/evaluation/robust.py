"""Accuracy under attack, per sample, so that a worst case over attacks can be taken afterwards.

Convention (AutoAttack / RobustBench): a test point counts as robust under an attack only if the model
classifies it correctly both clean and attacked, and attacks are run only on the points it gets right
clean (the others are already errors; attacking them would only cost time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from agkd_bml.attacks import Attack
from agkd_bml.data import iterate_batches
from agkd_bml.evaluation.state import EvalState, Point, model_digest, tensor_digest
from agkd_bml.models import Classifier
from agkd_bml.models.modes import eval_mode


@dataclass
class AttackResult:
    """Per-sample outcome of one attack on one model."""

    attack: Attack
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
    attacks: list[Attack],
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    desc: str = "",
    state: EvalState | None = None,
) -> list[AttackResult]:
    """Run each attack on uint8 images ``x`` (N, C, H, W) with labels ``y``; return per-sample results.

    Each attack's randomness comes from a generator seeded with ``seed``, so numbers are reproducible.
    With ``state``, every batch's results are saved as they come and a rerun continues where it stopped
    (see :mod:`agkd_bml.evaluation.state`); the results are the same either way.
    """
    device = torch.device(device)
    digest = model_digest(model) if state is not None else ""
    results = []
    with eval_mode(model):
        def run(attack: Attack | None, xs: torch.Tensor, ys: torch.Tensor, label: str) -> torch.Tensor:
            point = None
            if state is not None:
                point = state.load({"model": digest, "images": tensor_digest(xs, ys), "seed": seed,
                                    "batch_size": batch_size, "attack": _identity(attack)})
            return _correct(model, xs, ys, attack, batch_size, device, seed, progress, f"{desc}{label}",
                            state, point)

        clean = run(None, x, y, "clean")
        for attack in attacks:
            correct = torch.zeros_like(clean)
            idx = clean.nonzero().squeeze(1)
            if idx.numel():
                correct[idx] = run(attack, x[idx], y[idx], attack.name)
            results.append(AttackResult(attack, correct, seed))
    return results


def _identity(attack: Attack | None) -> dict:
    """What an attack's result depends on, as the key of its saved state."""
    if attack is None:
        return {"attack": "none"}
    return {"name": attack.name, "eps": attack.eps, "norm": attack.norm.name, **attack.settings()}


def _correct(
    model: Classifier, x: torch.Tensor, y: torch.Tensor, attack: Attack | None, batch_size: int,
    device: torch.device, seed: int, progress: bool, desc: str,
    state: EvalState | None = None, point: Point | None = None,
) -> torch.Tensor:
    """Per-sample correctness of ``model`` on ``x`` attacked by ``attack`` (clean when None)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out: list[torch.Tensor] = []
    if point is not None:
        if point.done:
            return torch.cat(point.batches) if point.batches else torch.zeros(0, dtype=torch.bool)
        out = list(point.batches)
        if point.generator is not None:
            gen.set_state(point.generator.to(gen.get_state().device))
    skip = len(out)
    # disable=None: tqdm turns itself off when stderr is not a terminal (no carriage returns in logs)
    bar = tqdm(iterate_batches(x[skip * batch_size:], y[skip * batch_size:], batch_size, device=device),
               total=math.ceil(x.shape[0] / batch_size), initial=skip,
               desc=desc, disable=None if progress and attack is not None else True, leave=False, unit="batch")
    for xb, yb in bar:
        if attack is not None:
            out.append((~attack(model, xb, yb, gen).fooled).cpu())
        else:
            with torch.no_grad():
                out.append((model(xb).logits.argmax(1) == yb).cpu())
        if state is not None and point is not None:
            point.batches, point.generator = out, gen.get_state()
            point.done = len(out) * batch_size >= x.shape[0]
            state.save(point)
    if state is not None and point is not None and not point.done:  # no batches at all: an empty point
        point.done = True
        state.save(point)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)
