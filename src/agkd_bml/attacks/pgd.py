"""One projected-gradient routine: FGSM, BIM, PGD, MIM, targeted or not, CE or CW-margin loss.

Why one routine: every attack the paper trains or evaluates with is a special case (FGSM = one step of size
eps without random start, BIM = no random start, PGD = random start, MIM = momentum), so the properties that
matter (eval-mode model, outputs inside the ball and [0, 1], no change to the model's parameter gradients)
hold in one place. The threat model's parts (random start, step direction, projection) come from
:class:`~agkd_bml.attacks.norms.Norm`. """

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from agkd_bml.attacks.base import Attack, fmt_eps
from agkd_bml.attacks.norms import LINF, Norm
from agkd_bml.attacks.ops import LOSSES, TARGETED_LOSSES, LossFn, most_confusing_class
from agkd_bml.models.base import unwrap
from agkd_bml.models.external import as_model
from agkd_bml.models.modes import eval_mode


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    random_start: bool = True,
    targeted: bool = False,
    loss: str | LossFn = "ce",
    momentum: float = 0.0,
    init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    stop_when_fooled: bool = False,
    norm: Norm = LINF,
    keep_mode: bool = False,
) -> torch.Tensor:
    """Return adversarial examples of ``x`` (in [0, 1]) inside the ``norm`` ball of radius ``eps``.

    ``labels`` are the true labels (untargeted: the loss is ascended) or the targets (``targeted=True``:
    the loss is descended). ``init`` overrides the random start with a given perturbation (used to check
    that batched and separate attacks agree). ``momentum`` > 0 gives MIM: the gradient is L1-normalised
    per sample and accumulated. The model runs in eval mode (BatchNorm statistics frozen, restored
    afterwards) and only input gradients are asked of autograd, so parameter ``.grad`` stay untouched.

    ``stop_when_fooled`` (untargeted evaluation) drops an image from the batch at the first iterate the
    model misclassifies and returns that iterate: the attack is at least as strong (a point counts as
    broken at its worst iterate, not only at the last) and later steps run on fewer images.

    ``keep_mode`` runs the model in the mode it is in instead of eval mode: a training attack of a model in
    train mode then sees BatchNorm on batch statistics (and updates its running statistics), as the fast
    adversarial training of Wong et al. (2020) does; evaluation never wants it. """
    if stop_when_fooled and targeted:
        raise ValueError("stop_when_fooled needs the true labels (an untargeted attack)")
    if eps < 0 or steps < 0:
        raise ValueError(f"eps and steps must be non-negative; got eps={eps}, steps={steps}")
    loss_fn = (TARGETED_LOSSES if targeted else LOSSES)[loss] if isinstance(loss, str) else loss
    model = as_model(unwrap(model))
    x = x.detach()
    if init is not None:
        x_adv = norm.project(x + init.to(x), x, eps)
    elif random_start and eps > 0:
        x_adv = norm.project(x + norm.random_start(x, eps, generator), x, eps)
    else:
        x_adv = x.clone()
    direction = -1.0 if targeted else 1.0
    velocity = torch.zeros_like(x) if momentum else None
    # stop_when_fooled: indices still attacked; a fooled image keeps the iterate that fooled it
    idx = torch.arange(x.shape[0], device=x.device) if stop_when_fooled else None
    with nullcontext() if keep_mode else eval_mode(model):
        for _ in range(steps):
            cur = (x_adv if idx is None else x_adv[idx]).detach().requires_grad_(True)
            lab = labels if idx is None else labels[idx]
            with torch.enable_grad():
                logits = model(cur).logits
                objective = loss_fn(logits, lab).sum()
            (grad,) = torch.autograd.grad(objective, cur)
            cur = cur.detach()
            if idx is not None:
                keep = logits.detach().argmax(1) == lab
                idx, cur, grad = idx[keep], cur[keep], grad[keep]
                if idx.numel() == 0:
                    break
            if velocity is not None:
                l1 = grad.abs().mean(dim=tuple(range(1, grad.ndim)), keepdim=True).clamp_min(1e-12)
                v = momentum * (velocity if idx is None else velocity[idx]) + grad / l1
                velocity = v if idx is None else velocity.index_copy(0, idx, v)
                grad = v
            new = norm.project(cur + direction * step_size * norm.step(grad), x if idx is None else x[idx],
                               eps)
            x_adv = new if idx is None else x_adv.index_copy(0, idx, new)
    return x_adv.detach()


@dataclass(kw_only=True, frozen=True)
class PgdAttack(Attack):
    """FGSM, BIM, PGD, CW or MIM as one :func:`pgd` configuration, with optional random restarts."""

    name: str
    steps: int
    eps: float
    step_size: float
    random_start: bool
    loss: str = "ce"
    momentum: float = 0.0
    restarts: int = 1
    targeted: bool = False
    early_stop: bool = False  #: stop per image once fooled (see :func:`pgd`); untargeted only
    norm: Norm = LINF

    def settings(self) -> dict[str, Any]:
        return {
            "attack": "pgd", "loss": self.loss, "steps": self.steps, "step_size": self.step_size,
            "eps": self.eps,
            "random_start": self.random_start, "restarts": self.restarts, "momentum": self.momentum,
            "targeted": self.targeted, "early_stop": self.early_stop and not self.targeted,
        }

    def describe(self) -> str:
        start = "random start" if self.random_start else "no random start"
        extra = (f", momentum {self.momentum:g}" if self.momentum else "") + (
            ", targeted at the most confusing class" if self.targeted else
            ", each image kept at its first fooling iterate" if self.early_stop else
            ", each image scored at its last iterate" if self.steps > 1 else "")
        kind = "" if self.norm is LINF else f"{self.norm.title}-normalised "
        return (f"{self.name}: {self.loss.upper()} loss, {self.steps} {kind}step(s) of "
                f"{fmt_eps(self.step_size)}, "
                f"{self.norm.title} eps {fmt_eps(self.eps)}, {start}, {self.restarts} restart(s){extra}")

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Attack ``x``; with restarts keep, per sample, the first restart that fools the model.

        Targeted, the target of each image is its most confusing class (highest wrong logit on the clean
        image), the choice BML makes for its forward AEs.
        """
        best, fooled = x, torch.zeros_like(y, dtype=torch.bool)
        if self.targeted:
            with torch.no_grad():
                labels = most_confusing_class(model(x).logits, y)
        else:
            labels = y
        for _ in range(self.restarts):
            adv = pgd(
                model, x, labels, eps=self.eps, step_size=self.step_size, steps=self.steps,
                targeted=self.targeted,
                random_start=self.random_start, loss=self.loss, momentum=self.momentum, generator=generator,
                stop_when_fooled=self.early_stop and not self.targeted, norm=self.norm,
            )
            if self.restarts == 1:
                return adv
            with torch.no_grad():
                wrong = model(adv).logits.argmax(1) != y
            best = torch.where((wrong & ~fooled)[:, None, None, None], adv, best)
            fooled |= wrong
        return best
