"""How a search gets its logits: one small protocol, so the attacks hold no speed path of their own.

A query-based search (Square) asks an engine for the logits of its starting points (:meth:`start`), of
each candidate (:meth:`query`), tells it which candidates it kept (:meth:`accept`) and which rows it still
searches (:meth:`keep`), and, where the engine's query logits are not its model's full passes
(:attr:`exact` is False), has each success confirmed by a full pass (:meth:`confirm`). Two engines:

- :class:`FullPass`: every query is a forward pass of the whole batch (GPUs, L2 queries, models the
  windowed engine cannot trace);
- :class:`Windowed`: on the CPU, a query whose candidate differs from the kept point only inside a window
  recomputes only what that window reaches (:class:`~agkd_bml.models.windowed.WindowedForward`).

Reduced precision wraps a whole attack, gradient-based or not: :class:`Bf16Search` runs it under bf16
autocast and re-runs in float32 the images whose success a float32 pass does not confirm
(:func:`confirm`). :class:`Fp32Search` is its full-precision counterpart, so a caller holds no branch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from agkd_bml.models.windowed import Window, WindowedForward


def full_precision_logits(model: nn.Module, points: torch.Tensor) -> torch.Tensor:
    """The logits of a full float32 pass (autocast off, no gradients): what a success must hold at."""
    with torch.no_grad(), torch.autocast(points.device.type, enabled=False):
        return model(points.float()).logits


class QueryEngine(Protocol):
    """What a query-based search needs from the model (see the module docstring)."""

    #: the query logits are the model's full passes', so a success needs no confirmation
    exact: bool

    def start(self, points: torch.Tensor) -> torch.Tensor:
        """Logits of the starting points (a full pass); they become the kept points."""
        ...

    def query(self, candidate: torch.Tensor, window: Window | None) -> torch.Tensor:
        """Logits of ``candidate``, which equals the kept points outside ``window`` (None: anywhere)."""
        ...

    def accept(self, better: torch.Tensor) -> None:
        """The rows where the last candidate replaced the kept point."""
        ...

    def keep(self, rows: torch.Tensor) -> None:
        """Only these rows (a bool mask) are searched from now on."""
        ...

    def confirm(self, points: torch.Tensor) -> torch.Tensor:
        """Logits of ``points`` from a full pass of the model."""
        ...


class FullPass:
    """Every query a forward pass of the whole batch (in the caller's precision: a bf16 search's successes
    are confirmed in float32 by :class:`Bf16Search`, around the whole attack)."""

    exact = True

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def start(self, points: torch.Tensor) -> torch.Tensor:
        return self.model(points).logits

    def query(self, candidate: torch.Tensor, window: Window | None) -> torch.Tensor:
        return self.model(candidate).logits

    def accept(self, better: torch.Tensor) -> None:
        pass

    def keep(self, rows: torch.Tensor) -> None:
        pass

    def confirm(self, points: torch.Tensor) -> torch.Tensor:
        return self.model(points).logits


class Windowed(FullPass):
    """A query inside a window recomputes only what the window reaches; others are full passes.

    Its logits equal the full passes' bit for bit where its probe said so, but the probe tries a few
    windows and the search many, so its successes are confirmed by a full pass (:attr:`exact` is False).
    """

    exact = False

    def __init__(self, model: nn.Module, windowed: WindowedForward) -> None:
        super().__init__(model)
        self.windowed = windowed

    def start(self, points: torch.Tensor) -> torch.Tensor:
        return self.windowed.start(points)

    def query(self, candidate: torch.Tensor, window: Window | None) -> torch.Tensor:
        if window is None:
            return super().query(candidate, window)
        return self.windowed.logits(candidate, window)

    def accept(self, better: torch.Tensor) -> None:
        self.windowed.accept(better)

    def keep(self, rows: torch.Tensor) -> None:
        self.windowed.keep(rows)


def query_engine(model: nn.Module, x: torch.Tensor, window_sides: tuple[int, ...] = ()) -> QueryEngine:
    """The fastest engine that gives ``model``'s logits for a search on ``x`` whose windows have these sides.

    Windowed queries only on the CPU, where they were measured (about 2x fewer seconds per Square query on
    the small CNN on 2 cores; a GPU runs a small CNN's full pass as a few kernel launches and a windowed
    one as several times as many), and only where the probe finds them equal to full passes.
    """
    if window_sides and x.device.type == "cpu":
        windowed = WindowedForward.of(model, x)
        if windowed is not None and windowed.matches_full_passes(x[:8], window_sides):
            return Windowed(model, windowed)
    return FullPass(model)


#: ``run(model, x, y) -> (adv, fooled)``: an attack on the images still to break.
Run = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Fp32Search:
    """Runs an attack's search as it is (float32): its successes need no confirmation."""

    def __call__(self, search: Run, redo: Run, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return search(model, x, y)


class Bf16Search:
    """Runs an attack's search under bf16 autocast; every success it reports holds in float32.

    A bf16 pass can call a point adversarial that is not at full precision (it sits on the decision boundary).
    Such an image gets the attack again in float32 (``redo``), which decides for it, so the images reported
    broken are broken at full precision and the ones bf16 only nearly broke get the float32 attack.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, search: Run, redo: Run, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            found, flagged = search(model, x, y)
        return confirm(redo, model, x, y, found, flagged)


def confirm(
    redo: Run, model: nn.Module, x: torch.Tensor, y: torch.Tensor, found: torch.Tensor, flagged: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(adv, fooled) once the successes ``flagged`` are checked by a float32 pass; an image whose success
    does not hold gets ``redo`` (the attack in float32), which decides for it."""
    fooled = flagged & (full_precision_logits(model, found).argmax(1) != y)
    again = (flagged & ~fooled).nonzero().squeeze(1)
    if again.numel():
        found = found.clone()
        found[again], fooled[again] = redo(model, x[again], y[again])
    return found, fooled
