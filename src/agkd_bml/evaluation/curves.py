"""Accuracy vs PGD steps and vs eps (the paper's Figure 5), as CSV and a two-panel plot.

A robust model that does not mask gradients loses accuracy monotonically as the attack gets more steps or a
larger budget; a curve that flattens early or rises again is a warning sign (see ``audit``). """

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

from agkd_bml.attacks import PgdAttack, fmt_eps
from agkd_bml.evaluation.robust import AttackResult, evaluate_attacks
from agkd_bml.fileio import atomic_write, write_text

STEPS = (1, 2, 3, 5, 7, 10, 20, 50, 100)
#: Budgets as multiples of the dataset's eps: 0 .. 2.5 eps in 10 steps (0 .. 20/255 at 8/255).
EPS_FACTORS = tuple(k / 4 for k in range(11))
EPS_CURVE_STEPS = 20


def pgd_attack(steps: int, eps: float, restarts: int = 1) -> PgdAttack:
    """PGD as in the tables: step eps/4 from a uniform random start."""
    suffix = f"x{restarts}" if restarts > 1 else ""
    return PgdAttack(name=f"pgd-{steps}@{fmt_eps(eps)}{suffix}", steps=steps, eps=eps, step_size=eps / 4,
                     random_start=True, restarts=restarts)


@dataclass
class Curves:
    """Accuracy of one model along both axes."""

    by_steps: list[tuple[int, AttackResult]]
    by_eps: list[tuple[float, AttackResult]]


def accuracy_curves(
    model: nn.Module,  # called on images in [0, 1], returns ModelOutput
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: tuple[int, ...] = STEPS,
    eps_levels: tuple[float, ...] | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    desc: str = "",
) -> Curves:
    """PGD-k at ``eps`` for k in ``steps``, and PGD-20 at each of ``eps_levels`` (default 0 .. 2.5 eps)."""
    levels = eps_levels if eps_levels is not None else tuple(f * eps for f in EPS_FACTORS)
    by_steps = evaluate_attacks(model, x, y, [pgd_attack(k, eps) for k in steps], batch_size=batch_size,
                                device=device, seed=seed, progress=progress, desc=desc)
    by_eps = evaluate_attacks(model, x, y, [pgd_attack(EPS_CURVE_STEPS, e) for e in levels],
                              batch_size=batch_size,
                              device=device, seed=seed, progress=progress, desc=desc)
    return Curves(list(zip(steps, by_steps, strict=True)), list(zip(levels, by_eps, strict=True)))


def curves_csv(curves: dict[str, Curves]) -> str:
    """One row per (model, axis, point) with accuracy and its 95% Wilson interval."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "axis", "steps", "eps", "step_size", "accuracy", "ci95_low", "ci95_high", "n",
                "seed"])
    for name, c in curves.items():
        for axis, points in (("steps", c.by_steps), ("eps", c.by_eps)):
            for _, r in points:
                a = cast(PgdAttack, r.attack)  # the curves are PGD's
                lo, hi = r.wilson()
                w.writerow([name, axis, a.steps, a.eps, a.step_size, r.accuracy, lo, hi, r.n, r.seed])
    return buf.getvalue()


def plot_curves(curves: dict[str, Curves], stem: Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf``: accuracy vs steps (log axis) and vs eps, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(10, 4))
    for name, c in curves.items():
        ax_s.plot([k for k, _ in c.by_steps], [100 * r.accuracy for _, r in c.by_steps], marker="o",
                  label=name)
        ax_e.plot([255 * e for e, _ in c.by_eps], [100 * r.accuracy for _, r in c.by_eps], marker="o",
                  label=name)
    first = next(iter(curves.values()))
    eps, n = first.by_steps[0][1].attack.eps, first.by_steps[0][1].n
    ax_s.set(xscale="log", xlabel="PGD steps", ylabel="accuracy (%)",
             title=f"PGD, eps {fmt_eps(eps)}, step eps/4")
    ax_e.set(xlabel="eps (x/255)", ylabel="accuracy (%)", title=f"PGD-{EPS_CURVE_STEPS}, step eps/4")
    for ax in (ax_s, ax_e):
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 100)
        ax.legend()
    fig.suptitle(f"Robust accuracy on n={n} test images (random start, 1 restart)")
    fig.tight_layout()
    paths = []
    for ext in ("png", "pdf"):
        path = stem.with_suffix(f".{ext}")
        atomic_write(path, functools.partial(fig.savefig, format=ext, dpi=120))
        paths.append(path)
    plt.close(fig)
    return paths


def write_curves(curves: dict[str, Curves], out_dir: str | Path, stem: str = "curves") -> list[Path]:
    """CSV plus PNG and PDF plots in ``out_dir``."""
    out = Path(out_dir)
    write_text(out / f"{stem}.csv", curves_csv(curves))
    return [out / f"{stem}.csv", *plot_curves(curves, out / stem)]
