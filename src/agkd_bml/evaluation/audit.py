"""Gradient-masking audit: the paper's section 4.5 and the standard checklist (Athalye et al. 2018,
Carlini et al. 2019) as pass/fail checks with the numbers behind them.

A defense that only *hides* its gradients looks robust to gradient attacks and is not. The symptoms are all
measurable: one-step attacks do as well as iterative ones, more steps or a bigger budget stop helping, even an
unbounded attack fails, gradient-free or transferred attacks beat white-box ones, or the input gradients are
simply zero. Each check compares attacks on the *same* images with the same seed, so small differences are
real; ``tolerance`` absorbs the rest. """

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from agkd_bml.attacks import Attack, PgdAttack, SpsaAttack, SquareAttack, TransferAttack, cw_margin, fmt_eps
from agkd_bml.data import iterate_batches
from agkd_bml.evaluation.curves import pgd_attack
from agkd_bml.evaluation.robust import AttackResult, evaluate_attacks
from agkd_bml.fileio import write_text
from agkd_bml.models.modes import eval_mode

STEP_LADDER = (1, 5, 10, 20, 50)
EPS_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
LARGE_EPS = 1.0  #: the whole pixel range: an honest model must fall to (near) 0
ZERO_GRAD_LIMIT = 0.01  #: largest share of points with an all-zero input gradient


@dataclass
class Check:
    """One line of the audit: ``passed`` is None when the check was skipped."""

    name: str
    passed: bool | None
    detail: str

    def line(self) -> str:
        status = {True: "PASS", False: "FAIL", None: "SKIP"}[self.passed]
        return f"{status}  {self.name}: {self.detail}"


def _pct(r: AttackResult) -> str:
    return f"{100 * r.accuracy:.1f}%"


def zero_gradient_share(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, device: torch.device
) -> float:
    """Share of images whose input gradient of the CW margin is exactly zero everywhere.

    The margin (logit difference) is used, not cross-entropy: CE's gradient underflows to zero on very
    confident points of any model, while a zero margin gradient means the network is flat in its input. """
    zero, total = 0, 0
    with eval_mode(model):
        for xb, yb in iterate_batches(x, y, batch_size, device=device):
            xb.requires_grad_(True)
            with torch.enable_grad():
                loss = cw_margin(model(xb).logits, yb, margin=float("inf")).sum()
            (grad,) = torch.autograd.grad(loss, xb)
            flat = ~torch.isfinite(grad).all(dim=(1, 2, 3)) | (grad.abs().amax(dim=(1, 2, 3)) == 0)
            zero += int(flat.sum())
            total += xb.shape[0]
    return zero / max(total, 1)


def audit(
    model: nn.Module,  # called on images in [0, 1], returns ModelOutput
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    num_classes: int,
    source: nn.Module | None = None,
    source_name: str = "source",
    square_queries: int = 1000,
    spsa_steps: int = 0,
    tolerance: float = 0.01,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> list[Check]:
    """Run every check on uint8 test images ``x``; see the module docstring."""
    device = torch.device(device)
    tol = f"tolerance {100 * tolerance:g} point(s)"
    fgsm = PgdAttack(name="fgsm", steps=1, eps=eps, step_size=eps, random_start=False)
    ladder = {k: pgd_attack(k, eps) for k in STEP_LADDER}
    budgets = {f: pgd_attack(20, f * eps) if f != 1.0 else ladder[20] for f in EPS_FACTORS}
    longer, restarted = pgd_attack(100, eps), pgd_attack(20, eps, restarts=3)
    unbounded = pgd_attack(20, LARGE_EPS)
    attacks: list[Attack] = [fgsm, *ladder.values(), *(a for f, a in budgets.items() if f != 1.0), longer,
                             restarted,
                             unbounded,
                             SquareAttack(name=f"square-{square_queries}", eps=eps, queries=square_queries)]
    if spsa_steps:
        attacks.append(SpsaAttack(name=f"spsa-{spsa_steps}", steps=spsa_steps, eps=eps))
    if source is not None:
        attacks.append(TransferAttack(name=f"transfer:{source_name}", source_path=source_name,
                                      inner=ladder[20], source=source))
    results = evaluate_attacks(model, x, y, attacks, batch_size=batch_size, device=device, seed=seed,
                               progress=progress, desc="audit ")
    r = {a.name: res for a, res in zip(attacks, results, strict=True)}
    pgd20 = r[ladder[20].name]
    checks = []

    share = zero_gradient_share(model, x, y, batch_size=batch_size, device=device)
    checks.append(Check("gradients are non-zero", share <= ZERO_GRAD_LIMIT,
                        f"{100 * share:.1f}% of {x.shape[0]} images have an all-zero (or non-finite) input "
                        f"gradient of the CW margin (limit {100 * ZERO_GRAD_LIMIT:g}%)"))

    beats = pgd20.accuracy < r["fgsm"].accuracy or r["fgsm"].accuracy <= tolerance
    checks.append(Check("iterative attacks beat one-step", beats,
                        f"PGD-20 {_pct(pgd20)} vs FGSM {_pct(r['fgsm'])} (PGD-20 must be lower unless FGSM "
                        "is at ~0)"))

    def monotone(points: list[tuple[str, AttackResult]], what: str) -> Check:
        rises = [f"{a} -> {b}" for (a, ra),
                 (b, rb) in zip(points, points[1:], strict=False) if rb.accuracy > ra.accuracy + tolerance]
        text = ", ".join(f"{label} {_pct(res)}" for label, res in points)
        return Check(f"accuracy is non-increasing in {what}", not rises,
                     text + (f"; rises at {'; '.join(rises)}" if rises else "") + f" ({tol})")

    checks.append(monotone([(f"PGD-{k}", r[a.name]) for k, a in ladder.items()], "steps"))
    checks.append(monotone([(f"eps {fmt_eps(f * eps)}", r[a.name]) for f, a in budgets.items()], "eps"))

    big = r[unbounded.name]
    checks.append(Check("an unbounded attack breaks the model", big.accuracy <= tolerance,
                        f"PGD-20 at eps {LARGE_EPS:g} (whole pixel range): {_pct(big)} (limit "
                        f"{100 * tolerance:g}%)"))

    strongest = min(r[longer.name].accuracy, r[restarted.name].accuracy)
    checks.append(Check("the attack has converged", pgd20.accuracy - strongest <= 2 * tolerance,
                        f"PGD-20 {_pct(pgd20)}, PGD-100 {_pct(r[longer.name])}, PGD-20 x3 restarts "
                        f"{_pct(r[restarted.name])} (limit {200 * tolerance:g} points below PGD-20)"))

    free = [a for a in attacks if isinstance(a, SquareAttack | SpsaAttack)]
    for a in free:
        checks.append(Check(f"gradient-free {a.name} is no stronger than PGD-20",
                            r[a.name].accuracy >= pgd20.accuracy - tolerance,
                            f"{a.name} {_pct(r[a.name])} vs PGD-20 {_pct(pgd20)} ({tol})"))
    if source is None:
        checks.append(Check("transfer is no stronger than white-box", None,
                            "give --source CHECKPOINT (e.g. the clean "
                            "teacher) to craft PGD-20 AEs on another model"))
    else:
        t = r[f"transfer:{source_name}"]
        checks.append(Check("transfer is no stronger than white-box",
                            t.accuracy >= pgd20.accuracy - tolerance,
                            f"PGD-20 from {source_name}: {_pct(t)} vs white-box PGD-20 {_pct(pgd20)} "
                            f"({tol})"))
    return checks


def verdict(checks: list[Check], n: int, eps: float) -> str:
    """The audit's last line."""
    failed = [c.name for c in checks if c.passed is False]
    passed = sum(c.passed is True for c in checks)
    skipped = sum(c.passed is None for c in checks)
    head = (f"on n={n} test images, eps {fmt_eps(eps)}: {passed} passed, {len(failed)} failed, {skipped} "
            "skipped")
    if failed:
        return (f"verdict: FAIL {head}. Signs of gradient masking; failed: {'; '.join(failed)}. Do not trust "
                "gradient-based robustness numbers of this model.")
    return f"verdict: PASS {head}. No sign of gradient masking."


def write_audit(checks: list[Check], text: str, out_dir: str | Path) -> list[Path]:
    """``audit.md`` (the printed report) and ``audit.json`` (the checks) in ``out_dir``."""
    out = Path(out_dir)
    write_text(out / "audit.md", text + "\n")
    write_text(out / "audit.json", json.dumps([asdict(c) for c in checks], indent=2) + "\n")
    return [out / "audit.md", out / "audit.json"]
