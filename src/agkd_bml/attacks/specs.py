"""Attack specifications from CLI strings such as ``clean,fgsm,bim-7,pgd-20,cw-20,mim-40``.

A spec is a frozen record of everything a reported number depends on (attack, steps, step size, eps,
random start, restarts), so an evaluation table can print it next to each accuracy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch
from torch import nn

from agkd_bml.attacks.pgd import eval_mode, pgd
from agkd_bml.errors import UserError


@dataclass(frozen=True)
class AttackSpec:
    """One white-box L-inf attack, fully specified."""

    name: str  #: the spec string it came from, e.g. ``pgd-20``
    steps: int
    eps: float
    step_size: float
    random_start: bool
    loss: str = "ce"
    momentum: float = 0.0
    restarts: int = 1

    def describe(self) -> str:
        """Human-readable settings, printed next to every number."""
        if self.steps == 0:
            return "clean"
        start = "random start" if self.random_start else "no random start"
        extra = f", momentum {self.momentum:g}" if self.momentum else ""
        return (
            f"{self.name}: loss {self.loss}, {self.steps} step(s) of {fmt_eps(self.step_size)}, "
            f"eps {fmt_eps(self.eps)}, {start}, {self.restarts} restart(s){extra}"
        )

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Attack ``x``; with restarts keep, per sample, the first restart that fools the model."""
        if self.steps == 0:
            return x
        best, fooled = x, torch.zeros_like(y, dtype=torch.bool)
        for _ in range(self.restarts):
            adv = pgd(
                model, x, y, eps=self.eps, step_size=self.step_size, steps=self.steps,
                random_start=self.random_start, loss=self.loss, momentum=self.momentum, generator=generator,
            )
            if self.restarts == 1:
                return adv
            with torch.no_grad(), eval_mode(model):
                wrong = model(adv).logits.argmax(1) != y
            best = torch.where((wrong & ~fooled)[:, None, None, None], adv, best)
            fooled |= wrong
        return best


def fmt_eps(v: float) -> str:
    """Show a budget as k/255 when it is a small whole number of grey levels (8/255), else as a decimal."""
    k = v * 255
    if abs(k - round(k)) < 1e-6 and 0 < round(k) <= 32:
        return f"{round(k)}/255"
    return f"{v:.4g}"


def _fgsm(steps: int, eps: float) -> AttackSpec:
    return AttackSpec("fgsm", 1, eps, eps, random_start=False)


#: Attack families by name; each builds a spec from (steps, eps). Step sizes: eps/4 (2/255 at 8/255)
#: for BIM, PGD and CW; eps/steps for MIM (Dong et al.); eps for FGSM.
ATTACKS = {
    "clean": lambda steps, eps: AttackSpec("clean", 0, eps, 0.0, random_start=False),
    "fgsm": _fgsm,
    "bim": lambda steps, eps: AttackSpec(f"bim-{steps}", steps, eps, eps / 4, random_start=False),
    "pgd": lambda steps, eps: AttackSpec(f"pgd-{steps}", steps, eps, eps / 4, random_start=True),
    "cw": lambda steps, eps: AttackSpec(f"cw-{steps}", steps, eps, eps / 4, random_start=True, loss="cw"),
    "mim": lambda steps, eps: AttackSpec(
        f"mim-{steps}", steps, eps, eps / steps, random_start=False, momentum=1.0
    ),
}
_STEPLESS = ("clean", "fgsm")
_SPEC = re.compile(r"^([a-z]+)(?:-(\d+))?$")


def parse_attacks(
    text: str, *, eps: float, step_size: float | None = None, restarts: int = 1
) -> list[AttackSpec]:
    """Parse ``clean,fgsm,pgd-20,...`` into specs; ``step_size`` and ``restarts`` override the defaults."""
    if eps < 0:
        raise UserError(f"eps must be >= 0; got {eps}")
    if eps > 1:
        raise UserError(f"eps {eps} is larger than the whole [0, 1] pixel range; did you mean {eps:g}/255?")
    specs = []
    for item in (s.strip().lower() for s in text.split(",") if s.strip()):
        m = _SPEC.match(item)
        if not m or m.group(1) not in ATTACKS:
            raise UserError(
                f"unknown attack spec {item!r}; use clean, fgsm, or bim-K, pgd-K, cw-K, mim-K with K steps"
            )
        family, steps = m.group(1), m.group(2)
        if family in _STEPLESS and steps is not None:
            raise UserError(f"attack {family!r} takes no step count; write {family!r}")
        if family not in _STEPLESS and (steps is None or int(steps) <= 0):
            raise UserError(f"attack {item!r} needs a positive step count, e.g. {family}-20")
        spec = ATTACKS[family](int(steps or 1), eps)
        if step_size is not None and family not in _STEPLESS:
            spec = replace(spec, step_size=step_size)
        if spec.random_start and restarts > 1:
            spec = replace(spec, restarts=restarts)
        specs.append(spec)
    if not specs:
        raise UserError("no attack given; e.g. --attacks clean,fgsm,pgd-20")
    return specs
