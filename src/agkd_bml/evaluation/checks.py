"""Flags raised before and after AutoAttack, like auto-attack's ``checks.py``:
signs an evaluation is unreliable.

Each check is cheap (a few passes on one batch) and returns a one-line warning or nothing. They catch the
classic ways a robustness number is inflated without any attack being wrong: a randomized model (two forwards
differ, so a deterministic attack chases noise), a forward that switches itself to training mode (BatchNorm on
batch statistics), probabilities instead of logits (the losses saturate), input gradients that are zero or not
finite (gradient attacks are blind there), too few classes for the targeted parts, and a black-box attack
(Square) that finds what the white-box parts missed. """

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from agkd_bml.attacks import Attack
from agkd_bml.attacks.autoattack import AutoAttack
from agkd_bml.data import to_float
from agkd_bml.evaluation.robust import AttackResult, evaluate_attacks
from agkd_bml.models.modes import eval_mode

#: Layers that compute something else in training mode (batch statistics, random dropping).
_MODE_DEPENDENT = (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd)
#: Relative change of the logits between two forwards of the same images above which a model is randomized.
RANDOM_TOLERANCE = 1e-4
#: Share of the test points Square may break after the white-box parts before
#: the run is flagged (auto-attack's).
SQUARE_TOLERANCE = 0.002


def model_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, num_classes: int,
                attacks: Sequence[Attack] = (), device: torch.device | str = "cpu",
                batch: int = 64) -> list[str]:
    """Warnings about ``model`` on the first ``batch`` images of ``x`` (uint8 or float in [0, 1])."""
    xb = (to_float(x[:batch]) if not x.is_floating_point() else x[:batch]).to(device)
    yb = y[:batch].to(device)
    flags = []
    with eval_mode(model), torch.no_grad():
        outs = [model(xb).logits.float() for _ in range(3)]
        switched = sorted({type(m).__name__ for m in model.modules() if m.training
                           and isinstance(m, _MODE_DEPENDENT)})
    if switched:
        flags.append(f"the model's forward puts its layers in training mode ({', '.join(switched)}): a "
                     "BatchNorm there normalises each batch by its own statistics, so a prediction depends "
                     "on the other images in its batch, and updates its running statistics while it is "
                     "attacked (a Dropout drops at random); make the forward keep eval mode (the paper "
                     "authors' WideResNet: call it with _eval=True)")
    scale = outs[0].norm(dim=1).clamp_min(1e-10)
    diff = max(float(((o - outs[0]).norm(dim=1) / scale).max()) for o in outs[1:])
    if diff > RANDOM_TOLERANCE:
        flags.append("the model is randomized: three forwards of the same images differ (by up to "
                     f"{diff:.2g} relative), so deterministic attacks such as standard AutoAttack "
                     "overestimate its robustness; fix its randomness or attack the expectation: --attacks "
                     "aa-rand (APGD-CE and APGD-DLR, EoT 20)")
    p = outs[0]
    if p.min() > -1e-5 and p.max() < 1 + 1e-5 and bool(((p.sum(1) - 1).abs() < 1e-3).all()):
        flags.append("the outputs look like probabilities (each row sums to 1), not logits: the attacks' "
                     "losses saturate on them; return the logits (before softmax)")
    flags += _gradient_flags(model, xb, yb)
    if any(isinstance(a, AutoAttack) for a in attacks) and num_classes <= 3:
        flags.append(f"with {num_classes} classes AutoAttack's targeted parts (APGD-T's targeted DLR loss, "
                     "FAB-T) cannot work as designed (they need at least 4 classes)")
    return flags


def _gradient_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[str]:
    xg = x.clone().requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        loss = F.cross_entropy(model(xg).logits.float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg)
    per = grad.flatten(1).abs().sum(1)
    flags = []
    if not bool(torch.isfinite(per).all()):
        flags.append(f"{int((~torch.isfinite(per)).sum())} of {x.shape[0]} images have non-finite input "
                     "gradients: gradient attacks fail on them and their robustness is not measured")
    zero = int((per == 0).sum())
    if zero:
        flags.append(f"{zero} of {x.shape[0]} images have an input gradient of exactly zero (gradient "
                     "masking, or saturated probabilities): gradient-based attacks are blind there")
    return flags


def square_flag(attack: Attack, n: int) -> str | None:
    """After AutoAttack on ``n`` points: a warning when Square broke more than
    0.2% the white-box parts missed."""
    if not isinstance(attack, AutoAttack) or "square" not in attack.components or n == 0:
        return None
    share = attack.fooled_by.get("square", 0) / n
    if share <= SQUARE_TOLERANCE:
        return None
    return (f"Square (black-box) broke {100 * share:.1f}% of the points that the white-box parts of "
            f"{attack.name} left robust: their gradients mislead (gradient masking); run the audit and "
            "stronger black-box attacks")


def warn_stderr(label: str, flags: list[str]) -> None:
    """Print each flag as a ``warning:`` line on stderr."""
    for flag in flags:
        print(f"warning: {label}: {flag}", file=sys.stderr)


def checked_evaluation(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: list[Attack], *, num_classes: int,
    label: str,
    device: torch.device | str = "cpu", warn: Callable[[str, list[str]], None] | None = warn_stderr,
    **options: Any,
) -> tuple[list[AttackResult], list[str]]:
    """:func:`evaluate_attacks` between the checks: the model's flags are shown (``warn``) before any attack
    runs, Square's after; returns the results and all flags. ``options`` go to :func:`evaluate_attacks`."""
    warn = warn or (lambda _label, _flags: None)
    before = model_flags(model, x, y, num_classes=num_classes, attacks=attacks, device=device)
    warn(label, before)
    results = evaluate_attacks(model, x, y, attacks, device=device, desc=f"{label} ", **options)
    after = [f for f in (square_flag(r.attack, r.n) for r in results) if f]
    warn(label, after)
    return results, before + after
