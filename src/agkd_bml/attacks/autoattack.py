"""AutoAttack (Croce & Hein 2020), standard version, composed from torchattacks' components.

torchattacks' own ``AutoAttack`` class runs its APGD components with 10 iterations; the reference uses
100. Here every component gets the reference parameters, and the ensemble is a per-sample cascade:
each attack only sees the points that are still robust, and a point counts as robust only if all four
fail on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torchattacks
from torch import nn

from agkd_bml.attacks.base import Attack, fmt_eps
from agkd_bml.attacks.library import run_library_attack
from agkd_bml.attacks.pgd import eval_mode

#: AutoAttack's reference setting (standard version): iterations, restarts, target classes, queries.
APGD_STEPS = 100
FAB_STEPS = 100
TARGET_CLASSES = 9
SQUARE_QUERIES = 5000

Factory = Callable[[nn.Module, int], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


def _targets(attack: Any, num_classes: int) -> Any:
    """The reference attacks at most 9 target classes, also when there are 100 classes."""
    attack.n_target_classes = min(TARGET_CLASSES, num_classes - 1)
    return attack


def component(name: str, eps: float, num_classes: int, queries: int = SQUARE_QUERIES) -> Factory:
    """``make(logits_model, seed)`` for one of ``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``."""
    if name == "apgd-ce":
        return lambda m, seed: torchattacks.APGD(
            m, norm="Linf", eps=eps, steps=APGD_STEPS, n_restarts=1, seed=seed, loss="ce", rho=0.75
        )
    if name == "apgd-t":
        return lambda m, seed: _targets(torchattacks.APGDT(
            m, norm="Linf", eps=eps, steps=APGD_STEPS, n_restarts=1, seed=seed, rho=0.75, n_classes=num_classes
        ), num_classes)
    if name == "fab-t":
        return lambda m, seed: _targets(torchattacks.FAB(
            m, norm="Linf", eps=eps, steps=FAB_STEPS, n_restarts=1, seed=seed, multi_targeted=True,
            n_classes=num_classes,
        ), num_classes)
    if name == "square":
        return lambda m, seed: torchattacks.Square(
            m, norm="Linf", eps=eps, n_queries=queries, n_restarts=1, p_init=0.8, loss="margin",
            resc_schedule=True, seed=seed,
        )
    raise ValueError(f"unknown AutoAttack component {name!r}")


def _component_settings(name: str, num_classes: int, queries: int) -> dict[str, Any]:
    targets = min(TARGET_CLASSES, num_classes - 1)
    return {
        "apgd-ce": {"steps": APGD_STEPS, "restarts": 1, "loss": "ce"},
        "apgd-t": {"steps": APGD_STEPS, "restarts": 1, "loss": "dlr-targeted", "target_classes": targets},
        "fab-t": {"steps": FAB_STEPS, "restarts": 1, "target_classes": targets},
        "square": {"queries": queries, "restarts": 1, "p_init": 0.8, "loss": "margin"},
    }[name]


@dataclass(frozen=True)
class LibraryAttack(Attack):
    """One AutoAttack component on its own (``apgd-ce``, ``apgd-t``, ``fab-t``, ``square-Q``)."""

    name: str
    component: str
    eps: float
    num_classes: int
    queries: int = SQUARE_QUERIES

    def settings(self) -> dict[str, Any]:
        return {"attack": self.component, "eps": self.eps,
                **_component_settings(self.component, self.num_classes, self.queries), "library": "torchattacks"}

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        make = component(self.component, self.eps, self.num_classes, self.queries)
        return run_library_attack(make, model, x, y, eps=self.eps, generator=generator)


@dataclass(frozen=True)
class AutoAttack(Attack):
    """APGD-CE, APGD-T, FAB-T, Square (5,000 queries) as a per-sample cascade."""

    eps: float
    num_classes: int
    name: str = "aa"
    components: tuple[str, ...] = ("apgd-ce", "apgd-t", "fab-t", "square")

    def settings(self) -> dict[str, Any]:
        return {"attack": "autoattack", "version": "standard", "eps": self.eps,
                **{c: _component_settings(c, self.num_classes, SQUARE_QUERIES) for c in self.components},
                "cascade": "per-sample", "library": "torchattacks"}

    def describe(self) -> str:
        return (f"{self.name}: AutoAttack standard, eps {fmt_eps(self.eps)}: APGD-CE ({APGD_STEPS} it.), APGD-T ({APGD_STEPS} it., "
                f"{min(TARGET_CLASSES, self.num_classes - 1)} targets), FAB-T ({FAB_STEPS} it.), Square "
                f"({SQUARE_QUERIES} queries), 1 restart each, per-sample cascade (torchattacks)")

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        adv = x.clone()
        with torch.no_grad(), eval_mode(model):
            robust = model(x).logits.argmax(1) == y
        for name in self.components:
            idx = robust.nonzero().squeeze(1)
            if not idx.numel():
                break
            make = component(name, self.eps, self.num_classes)
            found = run_library_attack(make, model, x[idx], y[idx], eps=self.eps, generator=generator)
            with torch.no_grad(), eval_mode(model):
                fooled = model(found).logits.argmax(1) != y[idx]
            adv[idx[fooled]] = found[fooled]
            robust[idx[fooled]] = False
        return adv
