"""The multi-step comparison the paper's AutoAttack claim rests on (Table 1's multi-step group, Table 5).

Runs are named by method and training attack steps (AT-7, AGKD-BML-7, ...). At a ``multi_step`` scale the AGKD
teacher is its own clean run with the released code's label smoothing (``T``), UM stays the undefended row,
every run holds out ``val_split`` training images, and the tables evaluate the scale's weights (``best``: the
best held-out PGD accuracy; the test set never selects). The pair that decides the question, AT-7 against
AGKD-BML-7, is also compared image by image under AutoAttack (exact McNemar test). """

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from agkd_bml.attacks import PgdAttack, full_length
from agkd_bml.evaluation import stats
from agkd_bml.methods import METHODS
from agkd_bml.reproduction.recipes import Context, Scores, run_config, score_attacks


@dataclass(kw_only=True, frozen=True)
class RunSpec:
    """One model of a multi-step table: its method, training attack steps and run options."""

    label: str
    method: str
    steps: int | None = None
    seeds: int = 1  #: how many of the scale's seeds
    params: dict[str, Any] = field(default_factory=dict)
    init_from_teacher: bool = False
    #: stop this many epochs after the first lr decay (the paper's early stop)
    stop_after_decay: int | None = None


TABLE1_ROWS = (
    RunSpec(label="UM", method="standard"), RunSpec(label="AT-7", method="pgd-at", steps=7, seeds=2),
    RunSpec(label="SML-7", method="sml", steps=7),
    RunSpec(label="TRADES-10", method="trades", steps=10, seeds=2),
    RunSpec(label="MART-10", method="mart", steps=10, seeds=2),
    RunSpec(label="AGKD-BML-2", method="agkd-bml", steps=2),
    RunSpec(label="AGKD-BML-7", method="agkd-bml", steps=7, seeds=2),
)
#: Table 5: the released code's AGKD-BML (10 steps, MART term, student from the teacher, early stop) vs AT-7.
TABLE5_ROWS = (
    RunSpec(label="AT-7", method="pgd-at", steps=7, seeds=2),
    RunSpec(label="AGKD-BML-10+MART", method="agkd-bml", steps=10, params={"mart": True},
            init_from_teacher=True, stop_after_decay=1),
)
DECIDING = ("AT-7", "AGKD-BML-7")  #: the pair compared over 2 seeds and image by image
#: the other adversarial baselines, also compared with AGKD-BML-7 image by image (on each seed they share)
BASELINES = ("SML-7", "TRADES-10", "MART-10")


def teacher(ctx: Context, seed: int) -> Path:
    """The AGKD teacher of a seed: a label-smoothed clean run (``T``), or UM where the scale says so."""
    if ctx.scale.teacher_smoothing is None:
        return train_row(ctx, RunSpec(label="UM", method="standard"), seed)
    run = ctx.run_dir("T", seed)
    cfg = run_config(ctx.scale, "standard", seed, run, None, ctx.data_choice).replace(
        label_smoothing=ctx.scale.teacher_smoothing)
    ctx.train("T (teacher)", seed, cfg)
    return run


def train_row(ctx: Context, row: RunSpec, seed: int) -> Path:
    """Train (or reuse) one row's run of one seed; return its directory."""
    distils = METHODS[row.method].needs_teacher or row.init_from_teacher
    run = ctx.run_dir(row.label, seed)
    cfg = run_config(ctx.scale, row.method, seed, run, teacher(ctx, seed) if distils else None,
                     ctx.data_choice)
    epochs = cfg.optim.epochs
    if row.stop_after_decay is not None and cfg.optim.milestones:
        epochs = min(cfg.optim.epochs, cfg.optim.milestones[0] + row.stop_after_decay)
    # the step size is the library's default for the row's steps
    # (methods.base.default_step_size), as with `train`
    cfg = cfg.replace(steps=row.steps, init_from_teacher=row.init_from_teacher, epochs=epochs)
    ctx.train(row.label, seed, cfg.with_params(**row.params))
    return run


def train_rows(ctx: Context, rows: tuple[RunSpec, ...]) -> dict[tuple[str, int], Path]:
    """Train (or reuse) every row's runs, the deciding pair first: a reproduction stopped part-way, hours into
    a medium run, has the runs that answer the question before the others."""
    order = sorted(rows, key=lambda row: row.label not in DECIDING)  # stable: table order otherwise
    return {(row.label, seed): train_row(ctx, row, seed) for row in order for seed
            in ctx.scale.seeds[: row.seeds]}


def score_rows(ctx: Context, rows: tuple[RunSpec, ...], specs: str) -> Scores:
    """Every row's accuracy under ``specs`` and AutoAttack, with the per-sample worst case over all of them.

    The deciding pair is trained and scored before the other rows are trained, and handed to ``ctx.partial``
    (a partial table), so a medium reproduction stopped hours in already answers the question. PGD-20 is also
    scored at its last iterate (``pgd-20-last``), the paper's and the released code's protocol, so a table
    shows how much of a PGD gap comes from the protocol rather than the model. """
    scores: Scores = {}
    deciding = tuple(row for row in rows if row.label in DECIDING)
    rest = tuple(row for row in rows if row.label not in DECIDING)
    for group in (deciding, rest):
        if group:
            _score_group(ctx, group, specs, scores)
            if group is deciding and rest and ctx.partial is not None:
                ctx.partial(scores)
    return scores


def _score_group(ctx: Context, rows: tuple[RunSpec, ...], specs: str, scores: Scores) -> None:
    """Train (or reuse) ``rows`` and add their scores, the last-iterate PGD-20
    and the worst case to ``scores``."""
    runs = train_rows(ctx, rows)
    scores.update(score_attacks(ctx, runs, specs, aa=True))
    pgd20 = cast(PgdAttack, ctx.attacks("pgd-20")[0])
    last = dataclasses.replace(full_length(pgd20), name="pgd-20-last")
    for (label, seed), run in runs.items():
        ctx.score(scores, label, seed, ctx.model(run), ctx.scale.eval_n, [last])
    names = [*specs.split(","), "aa"]
    n = min(ctx.scale.eval_n, ctx.scale.aa_n)
    for label, seed in runs:
        flags = [ctx.flags[(label, seed, name)][:n] for name in names]
        worst = flags[0].clone()
        for f in flags[1:]:
            worst &= f
        scores[label].setdefault("worst", []).append(100 * float(worst.float().mean()))


def mcnemar(ctx: Context, a: str, b: str) -> str:
    """Image-by-image comparison of two rows under AutoAttack, one line per shared seed (exact McNemar)."""
    lines = []
    for seed in ctx.scale.seeds:
        fa, fb = ctx.flags.get((a, seed, "aa")), ctx.flags.get((b, seed, "aa"))
        if fa is None or fb is None:
            continue
        only_a, only_b, p = stats.mcnemar(fa, fb)
        lines.append(f"seed {seed}: {only_a} images robust only for {a}, {only_b} only for {b} "
                     f"(of {fa.numel()}); exact McNemar p = {p:.3g}")
    return f"AutoAttack, image by image, {a} vs {b}: " + "; ".join(lines) + "." if lines else ""
