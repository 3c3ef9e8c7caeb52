"""The one interface every attack implements, and the contract it enforces once for all of them.

An attack's subclass writes :meth:`Attack.run`, the search itself. Calling the attack
(``attack(model, x, y)``) is final and does what no attack may forget: the model runs in eval mode with frozen
parameters (both restored afterwards, so its BatchNorm statistics, ``.grad`` and train/eval mode stay as they
were), the result is projected onto the eps-ball and [0, 1], and it comes back with the mask of the images it
fools, decided by one pass of the caller's model (as foolbox 3's attacks return ``success``). """

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, final

import torch
from torch import nn

from agkd_bml.attacks.norms import LINF, Norm
from agkd_bml.errors import UserError
from agkd_bml.models.base import unwrap
from agkd_bml.models.external import as_model
from agkd_bml.models.modes import eval_mode, frozen


def fmt_eps(v: float) -> str:
    """Show a budget as a short decimal when it is one (0.1, 0.025), else as k/255 grey levels (8/255)."""
    if abs(round(v, 3) - v) < 1e-9:
        return f"{v:g}"
    k = v * 255
    if abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{v:.4g}"


class Adversarial(NamedTuple):
    """What an attack returns: images inside the threat model, and which of them the model gets wrong."""

    images: torch.Tensor  #: (N, C, H, W), in the input's dtype, inside the eps-ball and [0, 1]
    fooled: torch.Tensor  #: bool (N,), the model's prediction on ``images`` differs from the label


@dataclass
class Progress:
    """Where an interrupted call of a long, staged attack stood, and where it reports its new progress.

    AutoAttack on one batch can run for minutes; an attack made of stages (the cascade's parts) reports what
    it needs to go on (images, masks, its random generator's state) after each stage, and the caller saves it.
    Called again with that as ``saved``, the attack skips the finished stages and continues with exactly the
    state it had, so the result equals an uninterrupted call's. Attacks without stages ignore it. """

    saved: dict[str, Any] | None  #: what an earlier, interrupted call reported last (None: start afresh)
    report: Callable[[dict[str, Any]], None]  #: called after each finished stage (the caller saves it)


def found_so_far(out: torch.Tensor, fooled: torch.Tensor,
                 generator: torch.Generator | None) -> dict[str, Any]:
    """The part of a :class:`Progress` report every search shares: its results
    so far and the generator's state."""
    return {"out": out.to("cpu", copy=True), "fooled": fooled.to("cpu", copy=True),
            "rng": rng_state(generator)}


def restore_found(saved: dict[str, Any], out: torch.Tensor, fooled: torch.Tensor,
                  generator: torch.Generator | None, what: str) -> None:
    """Put a :func:`found_so_far` report back into ``out``/``fooled`` and the
    generator (refused if it does not fit)."""
    if saved["out"].shape != out.shape:
        raise UserError(f"the saved {what} ({tuple(saved['out'].shape)} images) does not fit these "
                        f"{tuple(out.shape)} images; delete the state")
    out.copy_(saved["out"])
    fooled.copy_(saved["fooled"])
    restore_rng(generator, saved["rng"])


def rng_state(generator: torch.Generator | None) -> torch.Tensor | None:
    """The generator's state for a :class:`Progress` report (None for the global generator, not saved)."""
    return generator.get_state() if generator is not None else None


def restore_rng(generator: torch.Generator | None, state: torch.Tensor | None) -> None:
    """Put a reported generator state back, so the resumed call draws what the interrupted one would have."""
    if generator is not None and state is not None:
        generator.set_state(state)


class Attack(ABC):
    """One fully specified attack on models that take inputs in [0, 1] and return ``ModelOutput``.

    An attack is a frozen record of everything a reported number depends on; :meth:`settings` returns it as a
    flat dict (written next to every accuracy) and :meth:`describe` as one line for tables. """

    name: str  #: the spec string it came from, e.g. ``pgd-20``
    eps: float
    norm: Norm = LINF  #: the threat model whose ball :meth:`__call__` projects onto

    @abstractmethod
    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Adversarial examples of ``x`` (labels ``y``); randomness comes from ``generator`` only.

        ``model`` is already in eval mode with frozen parameters; the result is projected afterwards.
        """

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Every parameter the attack's result depends on (JSON-serialisable)."""

    def run_staged(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None,
        progress: Progress,
    ) -> torch.Tensor:
        """:meth:`run`, resuming from and reporting to ``progress``; an attack without stages just runs."""
        return self.run(model, x, y, generator)

    @final
    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
        *, progress: Progress | None = None,
    ) -> Adversarial:
        """Attack ``x`` under the contract of the module docstring (resumable within the call: ``progress``).

        ``model`` may be any module from images in [0, 1] to logits (a tensor, a tuple led by them, a dict or
        an object with ``logits``): :func:`~agkd_bml.models.external.as_model` adapts it.
        """
        net = as_model(unwrap(model))
        x = x.detach()
        with eval_mode(net), frozen(net):
            found = (self.run(net, x, y, generator) if progress is None
                     else self.run_staged(net, x, y, generator, progress))
            images = self.norm.project(found.detach().to(x.dtype), x, self.eps).contiguous()
            with torch.no_grad():
                fooled = net(images).logits.argmax(1) != y
        return Adversarial(images, fooled)

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


@dataclass(frozen=True)
class Clean(Attack):
    """No attack: the clean images (the baseline column of every table)."""

    eps: float
    name: str = "clean"
    norm: Norm = LINF  #: the threat model of the table it heads (nothing is perturbed)

    def settings(self) -> dict[str, Any]:
        return {"attack": "none"}

    def describe(self) -> str:
        return "clean: no perturbation"

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        return x
