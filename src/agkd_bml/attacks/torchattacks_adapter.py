"""Running torchattacks' attacks on our models without letting them change anything they should not.

torchattacks expects a module that returns logits, seeds the *global* RNG, calls ``.backward()`` (FAB) and
switches the model to train mode afterwards if the wrapper it was given says so. The adapter hides all of
that: the model sees eval mode and frozen parameters, the caller's RNG state is restored, and the result is
projected onto the eps-ball (of the given norm) and [0, 1] in the input's dtype. The attack itself runs in
float32 (on a float32 copy of a float64 model), as torchattacks assumes. """

from __future__ import annotations

import copy
from collections.abc import Callable
from types import ModuleType

import torch
from torch import nn

from agkd_bml.attacks.norms import LINF, Norm
from agkd_bml.errors import UserError
from agkd_bml.models.modes import eval_mode, frozen


def torchattacks() -> ModuleType:
    """The torchattacks package, an optional dependency (it pins ``requests~=2.25``, a downgrade for most
    environments): only ``aa-torchattacks``, ``spsa`` and the cross-check tests need it."""
    try:
        import torchattacks as library
    except ImportError as exc:
        raise UserError("this attack runs torchattacks, an optional dependency: pip install "
                        "'agkd-bml[torchattacks]'"
                        ) from exc
    return library


class LogitsOnly(nn.Module):
    """Our models return ``ModelOutput``; torchattacks wants the logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)  # a fresh Module is in train mode; mirror the wrapped model instead

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


def draw_seed(generator: torch.Generator | None) -> int:
    """An integer seed for a library attack, drawn from our generator (0 without one)."""
    if generator is None:
        return 0
    return int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))


def run_library_attack(
    make: Callable[[nn.Module, int], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    generator: torch.Generator | None,
    norm: Norm = LINF,
) -> torch.Tensor:
    """Build an attack with ``make(logits_model, seed)`` and run it on ``x`` under the guarantees above."""
    if x.shape[0] == 0:
        return x
    seed = draw_seed(generator)
    if next(model.parameters()).dtype != torch.float32:
        model = copy.deepcopy(model).float()  # torchattacks builds float32 tensors internally (FAB)
    devices = [x.device] if x.device.type == "cuda" else []
    with eval_mode(model), frozen(model), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        attack = make(LogitsOnly(model), seed)
        adv = attack(x.detach().float(), y)
    return norm.project(adv.detach().to(x.dtype), x.detach(), eps)
