"""APGD (Croce & Hein 2020): APGD-CE, APGD-DLR and the multi-targeted APGD-T
of AutoAttack, L-inf or L2, batched.

``eot`` > 1 averages each iteration's gradient over that many forward-backward passes (Expectation over
Transformation), for randomized models: AutoAttack's ``rand`` version runs APGD-CE and APGD-DLR with 20.

The iteration is the reference one (``autopgd_base.py`` of AutoAttack, also in torchattacks): a random
start scaled to the eps-ball's surface, step size 2 eps halved at checkpoints (first after 22% of the
iterations, then at shrinking intervals) where the loss oscillated or stopped improving, momentum 0.75,
and the best iterate kept. The threat model (:class:`~agkd_bml.attacks.norms.Norm`) gives the start
(uniform noise for L-inf, Gaussian for L2, scaled to the surface), the step direction (signed or
normalised gradient) and the projection; nothing else differs between the reference's two versions.

Three things make it cheaper without changing what it finds:

- an image leaves the batch at the first iterate that the model misclassifies (that iterate is the
  result, as the reference's ``x_best_adv``); every image's trajectory depends on itself only, so the
  others continue exactly as before;
- APGD-T's later targets skip the images an earlier one broke, as in the reference; on a GPU (and in
  bf16 on a CPU) several targets are stacked in one batch (:func:`over_targets`), and once one target breaks
  an image all its copies leave the batch;
- the caller may pass a model prepared by
:func:`agkd_bml.models.inference.inference_copy`. """

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from agkd_bml.attacks.base import Progress, fmt_eps, found_so_far, restore_found
from agkd_bml.attacks.norms import LINF, Norm
from agkd_bml.attacks.on_inference_copy import InferenceCopyAttack
from agkd_bml.models.inference import channels_last

#: The reference setting of AutoAttack's standard version.
APGD_STEPS = 100
TARGET_CLASSES = 9
RHO = 0.75  #: a checkpoint halves the step where the loss rose in at most RHO of the last interval's steps
MOMENTUM = 0.75


def dlr_targeted(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted difference-of-logits ratio: ``-(z_y - z_t) / (z_1 - (z_3 + z_4) / 2)`` (sorted logits)."""
    z = logits.float()
    top = z.sort(dim=1).values
    own, target = z.gather(1, labels[:, None]).squeeze(1), z.gather(1, targets[:, None]).squeeze(1)
    return -(own - target) / (top[:, -1] - 0.5 * (top[:, -3] + top[:, -4]) + 1e-12)


def dlr(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Untargeted difference-of-logits ratio: ``-(z_y - max_{i != y} z_i) / (z_1 - z_3)`` (sorted logits)."""
    z = logits.float()
    top, order = z.sort(dim=1)
    own = z.gather(1, labels[:, None]).squeeze(1)
    other = torch.where(order[:, -1] == labels, top[:, -2], top[:, -1])
    return -(own - other) / (top[:, -1] - top[:, -3] + 1e-12)


def target_classes(logits: torch.Tensor, count: int) -> torch.Tensor:
    """(N, count): the classes with the 2nd, 3rd, ... highest logit of each image, AutoAttack's targets."""
    return logits.argsort(dim=1, descending=True)[:, 1 : count + 1]


def _oscillated(loss_steps: torch.Tensor, i: int, k: int) -> torch.Tensor:
    """Per image: did the loss rise in at most RHO * k of the last k steps?
    (Python's wrap-around at -1 kept.)"""
    rises = torch.stack([(loss_steps[i - c] > loss_steps[i - c - 1]).float() for c in range(k)]).sum(0)
    return rises <= k * RHO


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-row mask shaped to broadcast over images like ``like``."""
    return mask.view(-1, *[1] * (like.ndim - 1))


def _initial_state(x: torch.Tensor, x_adv: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor,
                   eps: float) -> dict[str, torch.Tensor]:
    """Every per-row tensor APGD carries, at its start (step size 2 eps);
    rows are dropped from all at once."""
    m = x.shape[0]
    return {
        "x0": x, "x_adv": x_adv, "x_old": x_adv, "grad": grad, "x_best": x_adv, "grad_best": grad,
        "loss_best": loss,
        "step": torch.full((m, *[1] * (x.ndim - 1)), 2 * eps, device=x.device, dtype=x.dtype),
        "best_last_check": loss, "reduced_last": torch.ones(m, dtype=torch.bool, device=x.device),
    }


def _momentum_step(s: dict[str, torch.Tensor], eps: float, a: float, norm: Norm) -> torch.Tensor:
    """APGD's step: a steepest-ascent step of the current size, then momentum ``a`` towards it (in place)."""
    with torch.no_grad():
        z = norm.project(s["x_adv"] + s["step"] * norm.step(s["grad"]), s["x0"], eps)
        new = norm.project(s["x_adv"] + (z - s["x_adv"]) * a + (s["x_adv"] - s["x_old"]) * (1 - a), s["x0"],
                           eps)
    s["x_old"], s["x_adv"] = s["x_adv"], new
    return new


def _keep_best(s: dict[str, torch.Tensor], loss: torch.Tensor) -> None:
    """Remember, per row, the point (and its gradient) of the highest loss so far."""
    better = loss > s["loss_best"]
    s["x_best"] = torch.where(_rows(better, s["x_adv"]), s["x_adv"], s["x_best"])
    s["grad_best"] = torch.where(_rows(better, s["x_adv"]), s["grad"], s["grad_best"])
    s["loss_best"] = torch.where(better, loss, s["loss_best"])


def _check_step_size(s: dict[str, torch.Tensor], oscillated: torch.Tensor) -> None:
    """At a checkpoint: halve the step and restart from the best point where progress stalled."""
    halve = oscillated | (~s["reduced_last"] & (s["best_last_check"] >= s["loss_best"]))
    s["reduced_last"], s["best_last_check"] = halve, s["loss_best"]
    h4 = _rows(halve, s["x_adv"])
    s["step"] = torch.where(h4, s["step"] / 2, s["step"])
    s["x_adv"] = torch.where(h4, s["x_best"], s["x_adv"])
    s["grad"] = torch.where(h4, s["grad_best"], s["grad"])


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int = APGD_STEPS,
    targets: torch.Tensor | None = None,
    owner: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
    loss_name: str = "ce",
    eot: int = 1,
    norm: Norm = LINF,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run per row of ``x``: ``loss_name`` (``ce`` or ``dlr``), or targeted DLR towards ``targets``;
    returns (adv, fooled). ``eot``: gradient averaged over this many passes (randomized models).

    ``owner`` groups rows that attack the same image (APGD-T's copies, one per target): once one row of a
    group fools the model, the whole group stops. ``model`` must return :class:`ModelOutput` and is used as
    given (eval mode and frozen parameters are the caller's job). ``start`` replaces the random start (tests
    use it to rerun an image from the same start in another batch). """
    m = x.shape[0]
    owner = torch.arange(m, device=x.device) if owner is None else owner
    out = x.clone()
    fooled = torch.zeros(m, dtype=torch.bool, device=x.device)
    if m == 0 or steps == 0:
        return out, fooled

    def loss_and_grad(xa: torch.Tensor,
                      rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xa = xa.detach().requires_grad_(True)
        total_loss: torch.Tensor | float = 0.0
        total_grad: torch.Tensor | float = 0.0
        for _ in range(eot):  # the reference: mean gradient and loss, the last pass's prediction
            with torch.enable_grad():
                logits = model(xa).logits
                if targets is not None:
                    loss = dlr_targeted(logits, y[rows], targets[rows])
                elif loss_name == "dlr":
                    loss = dlr(logits, y[rows])
                else:
                    loss = F.cross_entropy(logits.float(), y[rows], reduction="none")
            (grad,) = torch.autograd.grad(loss.sum(), xa)
            total_loss, total_grad = total_loss + loss.detach(), total_grad + grad.detach()
        assert isinstance(total_loss, torch.Tensor) and isinstance(total_grad, torch.Tensor)  # eot >= 1
        return total_loss / eot, total_grad / eot, logits.detach().argmax(1) != y[rows]

    rows = torch.arange(m, device=x.device)
    x_adv = channels_last(norm.surface_start(x, eps, generator) if start is None else start)
    loss, grad, wrong = loss_and_grad(x_adv, rows)
    state = _initial_state(x, x_adv, loss, grad, eps)
    loss_steps = torch.zeros(steps, m, device=x.device)
    k, k_min, decrease = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    since_check = 0

    def drop_fooled(wrong: torch.Tensor) -> torch.Tensor:
        """Record rows that fool the model and remove their whole group; the kept mask over ``rows``."""
        nonlocal rows, loss_steps
        out[rows[wrong]] = state["x_adv"][wrong].to(out.dtype)
        fooled[rows[wrong]] = True
        done = torch.zeros(m, dtype=torch.bool, device=x.device)
        done[owner[rows[wrong]]] = True
        keep = ~done[owner[rows]]
        rows, loss_steps = rows[keep], loss_steps[:, keep]
        for key, value in state.items():
            state[key] = value[keep]
        return keep

    if wrong.any():
        keep = drop_fooled(wrong)
        loss = loss[keep]
    for i in range(steps):
        if rows.numel() == 0:
            break
        new = _momentum_step(state, eps, MOMENTUM if i > 0 else 1.0, norm)
        loss, state["grad"], wrong = loss_and_grad(new, rows)
        loss_steps[i] = loss
        if wrong.any():
            keep = drop_fooled(wrong)
            loss = loss[keep]
            if rows.numel() == 0:
                break
        _keep_best(state, loss)
        since_check += 1
        if since_check == k:
            _check_step_size(state, _oscillated(loss_steps, i, k))
            since_check, k = 0, max(k - decrease, k_min)
    return out, fooled


#: (x, y, targets, owner) -> (adv, fooled): one targeted attack over rows grouped by ``owner``.
TargetedRun = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                       tuple[torch.Tensor, torch.Tensor]]


def target_rows(device: torch.device) -> int:
    """How many (image, target) rows one batch of a multi-target attack should hold.

    On a GPU, stacking targets fills the device (512 rows: two targets of a 256-image evaluation batch,
    which keeps a WRN-28-10 input-gradient pass within about 40 GB). On a CPU in float32 a wider batch
    gains nothing (9 targets of 100 images ran slower stacked than one after another on 2 cores; a PreAct
    ResNet-18's input-gradient pass costs the same per image at 56 and 112 rows, a small CNN's 4% more),
    so the targets run one after another there, each on the images no earlier target broke, as in the
    reference. Under bf16 autocast a CPU pass of 56 rows is short of work (the bf16 kernels are 2x as fast
    and the per-layer overhead is not): 112-168 rows cost 10-15% less per image on that ResNet and 5% less
    on the small CNN, so targets go in groups of about :data:`CPU_BF16_ROWS` rows. Lower ``--batch-size``
    of ``eval`` if a GPU runs out of memory.
    """
    if device.type == "cuda":
        return 512
    return CPU_BF16_ROWS if torch.is_autocast_enabled(device.type) else 1


#: Rows of a multi-target batch on a CPU under bf16 autocast (:func:`target_rows`).
CPU_BF16_ROWS = 160


def over_targets(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, count: int, run: TargetedRun, *,
    max_rows: int | None = None,
    generator: torch.Generator | None = None, progress: Progress | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attack each image towards its ``count`` most likely wrong classes; returns (adv, fooled).

    Targets go in groups whose rows fit ``max_rows`` (default :func:`target_rows`); only the images no earlier
    group broke join the next one, and within a group an image stops once any target broke it. With
    ``progress``, each finished group is reported (next target, results so far, the state of the ``generator``
    that ``run`` draws from) and a saved report is continued at its next target. """
    with torch.no_grad():
        targets = target_classes(model(x).logits, count)
    max_rows = target_rows(x.device) if max_rows is None else max_rows
    out, fooled = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    k = 0
    if progress is not None and progress.saved is not None:
        restore_found(progress.saved, out, fooled, generator, "multi-target run")
        k = int(progress.saved["target"])
    while k < count:
        idx = (~fooled).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        group = max(1, min(count - k, max_rows // idx.numel()))
        owner = torch.arange(idx.numel(), device=x.device).repeat(group)
        adv, hit = run(x[idx].repeat(group, *[1] * (x.ndim - 1)), y[idx].repeat(group),
                       targets[idx, k : k + group].T.reshape(-1), owner)
        first = torch.full((idx.numel(),), -1, dtype=torch.long, device=x.device)
        rows = hit.nonzero().squeeze(1)
        first[owner[rows]] = rows  # any breaking row of each image will do
        won = first >= 0
        out[idx[won]] = adv[first[won]]
        fooled[idx[won]] = True
        k += group
        if progress is not None and k < count:
            progress.report({"target": k, **found_so_far(out, fooled, generator)})
    return out, fooled


def apgd_multitarget(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int, count: int,
    generator: torch.Generator | None, max_rows: int | None = None, norm: Norm = LINF,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD-T: targeted DLR towards each of the ``count`` most likely wrong classes."""
    def run(xs: torch.Tensor, ys: torch.Tensor, ts: torch.Tensor,
            owner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return apgd(model, xs, ys, eps=eps, steps=steps, targets=ts, owner=owner, generator=generator,
                    norm=norm)

    return over_targets(model, x, y, count, run, max_rows=max_rows, generator=generator, progress=progress)


def num_targets(num_classes: int) -> int:
    """The reference attacks at most 9 target classes, also when there are 100 classes."""
    return min(TARGET_CLASSES, num_classes - 1)


@dataclass(kw_only=True, frozen=True)
class ApgdAttack(InferenceCopyAttack):
    """``apgd-ce`` / ``apgd-dlr`` (untargeted) or ``apgd-t`` (targeted DLR, 9
    targets), 100 iterations, 1 restart."""

    name: str
    eps: float
    num_classes: int
    targeted: bool = False
    steps: int = APGD_STEPS
    loss: str = "ce"  #: the untargeted loss: ``ce`` or ``dlr``
    eot: int = 1  #: passes averaged per gradient (20 in AutoAttack's rand version)
    norm: Norm = LINF

    def settings(self) -> dict[str, Any]:
        extra = {"eot": self.eot} if self.eot > 1 else {}
        if self.targeted:
            return {"attack": "apgd-t", "eps": self.eps, "steps": self.steps, "restarts": 1,
                    "loss": "dlr-targeted",
                    "target_classes": num_targets(self.num_classes), "early_stop": True, **extra}
        return {"attack": f"apgd-{self.loss}", "eps": self.eps, "steps": self.steps, "restarts": 1,
                "loss": self.loss,
                "early_stop": True, **extra}

    def describe(self) -> str:
        what = (f"targeted DLR, {num_targets(self.num_classes)} targets" if self.targeted
                else self.loss.upper())
        eot = f", EoT {self.eot}" if self.eot > 1 else ""
        return (f"{self.name}: APGD ({what}), {self.steps} iterations{eot}, {self.norm.title} eps "
                f"{fmt_eps(self.eps)}, 1 restart")

    def run_prepared(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(adv, fooled) on a model from :func:`inference_copy` (AutoAttack
        prepares it once for all parts)."""
        return self._run(model, x, y, generator, None)

    def run_prepared_staged(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None,
        progress: Progress,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """APGD-T reports after each target; one untargeted run (a tenth of APGD-T's work) just runs."""
        return self._run(model, x, y, generator, progress)

    def _run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None,
        progress: Progress | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.targeted:
            if self.num_classes < 4:
                raise ValueError("APGD-T's DLR loss needs at least 4 classes")
            return apgd_multitarget(model, x, y, eps=self.eps, steps=self.steps,
                                    count=num_targets(self.num_classes),
                                    generator=generator, norm=self.norm, progress=progress)
        if self.loss == "dlr" and self.num_classes < 3:
            raise ValueError("APGD-DLR needs at least 3 classes")
        return apgd(model, x, y, eps=self.eps, steps=self.steps, generator=generator, loss_name=self.loss,
                    eot=self.eot,
                    norm=self.norm)
