"""The one interface every attack implements, so evaluation, tables and audits treat them alike."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn


def fmt_eps(v: float) -> str:
    """Show a budget as a short decimal when it is one (0.1, 0.025), else as k/255 grey levels (8/255)."""
    if abs(round(v, 3) - v) < 1e-9:
        return f"{v:g}"
    k = v * 255
    if abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{v:.4g}"


class Attack(ABC):
    """One fully specified L-inf attack on models that take inputs in [0, 1].

    An attack is a frozen record of everything a reported number depends on; :meth:`settings` returns
    it as a flat dict (written next to every accuracy) and :meth:`describe` as one line for tables.
    ``run`` must return images of the input's shape and dtype inside the eps-ball and [0, 1], and leave
    the model's parameters, their ``.grad`` and its train/eval mode as they were.
    """

    name: str  #: the spec string it came from, e.g. ``pgd-20``
    eps: float

    @abstractmethod
    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Adversarial examples of ``x`` (labels ``y``); randomness comes from ``generator``."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Every parameter the attack's result depends on (JSON-serialisable)."""

    def describe(self) -> str:
        """``name: key value, ...`` with budgets shown as k/255."""
        parts = []
        for key, value in self.settings().items():
            if key in ("attack", "name"):
                continue
            if key.endswith(("eps", "step_size")) and isinstance(value, float):
                value = fmt_eps(value)
            parts.append(f"{key.replace('_', ' ')} {value}")
        return f"{self.name}: " + ", ".join(parts)
