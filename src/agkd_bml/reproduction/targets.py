"""The reproduction targets: each paper table a record of data, each figure a function, one renderer.

A table is its scorer (which trains or reuses its runs and measures them), its columns, the paper's numbers
and its footnote; :func:`build` writes it as ``OUT/TARGET.md``. The command line (``agkd-bml reproduce``) only
parses arguments and hands in the figures that draw through the analysis commands. """

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agkd_bml.attacks import fmt_eps
from agkd_bml.errors import UserError, unknown_choice
from agkd_bml.evaluation import accuracy_curves, write_curves
from agkd_bml.evaluation.table import WEIGHTS_NOTE
from agkd_bml.fileio import write_text
from agkd_bml.reproduction.capacity import capacity
from agkd_bml.reproduction.multistep import (
    BASELINES,
    DECIDING,
    TABLE1_ROWS,
    TABLE5_ROWS,
    RunSpec,
    mcnemar,
    score_rows,
)
from agkd_bml.reproduction.recipes import (
    SCALES,
    TABLE2,
    TABLE6,
    Context,
    DataChoice,
    Scores,
    score_attacks,
    score_attention_variants,
    score_knn,
    score_timing,
    score_transfer,
)

Row = dict[str, list[float]]  #: one model's scores: column key -> value per seed


def mean_sd(values: list[float]) -> str:
    """One seed as is; several as mean ± sample standard deviation."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


@dataclass(frozen=True)
class Column:
    """A column of our numbers: its header and how a model's row becomes its cell."""

    header: str
    cell: Callable[[str, Row], str]  #: (model label, its scores) -> cell text


def acc(key: str, header: str | None = None) -> Column:
    """Accuracy under one attack (or score key), mean ± sd over seeds."""
    return Column(header or key, lambda _label, row: mean_sd(row[key]))


def pair(first: str, second: str, header: str) -> Column:
    return Column(header, lambda _label, row: f"{mean_sd(row[first])} / {mean_sd(row[second])}")


#: the paper's published numbers, as the tables show them (a data file: a new table is one entry there)
PAPER_FILE = Path(__file__).with_name("paper.yaml")


def published(key: str) -> dict[str, Any]:
    """``paper_headers`` and ``paper`` of :class:`Table` for target ``key``, from :data:`PAPER_FILE`."""
    entry = yaml.safe_load(PAPER_FILE.read_text())[key]
    return {"paper_headers": tuple(entry["headers"]),
            "paper": {label: tuple(str(c) for c in cells) for label, cells in entry["rows"].items()}}


@dataclass(kw_only=True, frozen=True)
class Table:
    """One reproduce target that is a table."""

    score: Callable[[Context], Scores]
    columns: tuple[Column, ...]
    paper_headers: tuple[str, ...]
    paper: dict[str, tuple[str, ...]]  #: model label -> the paper's cells ("-" where it has none)
    note: Callable[[Context], str]  #: the footnote: scale, images, attacks, what the rows are
    rows: tuple[str, ...] = ()  #: row order (default: as scored)
    first: str = "model"

    def render(self, ctx: Context) -> str:
        return self.format(ctx, self.score(ctx))

    def format(self, ctx: Context, scores: Scores) -> str:
        """The table of the rows scored so far; rows not scored yet are named under it."""
        blank = ("-",) * len(self.paper_headers)
        headers = (self.first, *(c.header for c in self.columns), *self.paper_headers)
        lines = ["| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"]
        for label in (label for label in self.rows or tuple(scores) if label in scores):
            cells = (label, *(c.cell(label, scores[label]) for c in self.columns),
                     *self.paper.get(label, blank))
            lines.append("| " + " | ".join(cells) + " |")
        pending = [label for label in self.rows if label not in scores]
        if pending:
            lines += ["",
                      f"**Partial table**: {', '.join(pending)} not trained and scored yet; the same command "
                      "resumes and completes it."]
        return "\n".join([*lines, "", self.note(ctx)])


def _describe(ctx: Context, specs: str) -> str:
    return "\n".join(f"- {a.describe()}" for a in ctx.attacks(specs))


def _seeds(ctx: Context) -> str:
    return f"Scale `{ctx.scale_name}`, seeds {list(ctx.scale.seeds)}"


TABLE1_ATTACKS = "clean,fgsm,bim-7,pgd-20,pgd-100,cw-20,cw-100"
TABLE1_MODELS = ("UM", "AT", "SML", "AGKD-BML")
_T1 = TABLE1_ATTACKS.split(",")

TABLES: dict[str, Table] = {
    "table1": Table(
        score=lambda ctx: score_attacks(ctx, {k: v for k, v in ctx.runs.items() if k[0] in TABLE1_MODELS},
                                        TABLE1_ATTACKS),
        columns=tuple(acc(k) for k in _T1), **published("table1"),
        note=lambda ctx: (f"{_seeds(ctx)} (mean ± standard deviation); robust accuracy (%) on the first "
                          f"{ctx.test(ctx.scale.eval_n)[2]} test images. AutoAttack is in `table2.md`.\n\n"
                          + _describe(ctx, TABLE1_ATTACKS)),
    ),
    "table2": Table(
        score=lambda ctx: score_attacks(ctx, ctx.runs, "clean,fgsm,pgd-20,cw-20", aa=True),
        columns=(acc("clean"), acc("fgsm", "FGSM"), acc("pgd-20", "PGD-20"), acc("cw-20", "CW-20"),
                 acc("aa", "AA")),
        **published("table2"),
        rows=tuple(label for label, _ in TABLE2),
        note=lambda ctx: (
            f"Scale `{ctx.scale_name}`: {ctx.scale.arch} on {ctx.data_name} "
            f"({ctx.scale.train_limit or 'all'} training images), {ctx.scale.epochs} epochs, seeds "
            f"{list(ctx.scale.seeds)} (mean ± standard deviation). Robust accuracy (%) on the first "
            f"{ctx.scale.eval_n} test images (AutoAttack: first {ctx.scale.aa_n}); L-inf eps "
            f"{fmt_eps(ctx.eps)}. FGSM: one step of eps; PGD-20 / CW-20: 20 steps of eps/4 from a random "
            "start, 1 restart; AA: standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square-5000). Each method "
            "trains with its paper attack steps (AT and SML 7, BML, AGKD and AGKD-BML 2), of eps/4, or of "
            "2.5 eps/steps capped at eps below 4 steps (runs trained before 2026-12-04: eps/4; each run's "
            "config.yaml says). The AGKD teacher is the UM run of the same seed. Training took "
            f"{ctx.trained_s / 60:.1f} min here (0 when all runs were already finished)."),
    ),
    "table3": Table(
        score=score_transfer,
        columns=(acc("transfer", "black-box (PGD-20 from UM)"), acc("pgd-20", "white-box PGD-20")),
        **published("table3"),
        note=lambda ctx: (f"{_seeds(ctx)}; first {ctx.test(ctx.scale.eval_n)[2]} test images. Black-box AEs: "
                          "PGD-20 run for all 20 steps on the UM (natural) model of the same seed, as the "
                          "paper's Table 3 does with natural models. White-box: "
                          f"{ctx.attacks('pgd-20')[0].describe()}."),
    ),
    "table6": Table(
        score=score_attention_variants, first="distilled map",
        columns=(Column("kind", lambda label,
                        _row: "class-relevant" if label.startswith("GC") else "class-irrelevant"),
                 acc("clean"), acc("pgd-20", "PGD-20")),
        **published("table6"),
        rows=tuple(label for label, _ in TABLE6),
        note=lambda ctx: (f"{_seeds(ctx)}; AGKD without metric learning, 2-step training attacks, the UM run "
                          f"of the same seed as teacher; first {ctx.test(ctx.scale.eval_n)[2]} test images; "
                          f"{ctx.attacks('pgd-20')[0].describe()}. GC-orig / GC-false: Grad-CAM of the true "
                          "class / of the class the AE is attacked towards."),
    ),
    "table7": Table(
        score=score_timing,
        columns=(Column("attack steps", lambda _l, r: f"{r['steps'][0]:.0f}"),
                 Column("median s/epoch (seeds)", lambda _l,
                        r: " / ".join(f"{v:.1f}" for v in r["median_seconds_per_epoch"])),
                 Column("epochs", lambda _l, r: f"{r['epochs'][0]:.0f}"),
                 Column("images/s", lambda _l, r: f"{statistics.mean(r['images_per_s']):.0f}")),
        **published("table7"),
        rows=tuple(label for label, _ in TABLE2),
        note=lambda ctx: (f"Scale `{ctx.scale_name}` ({ctx.scale.arch}, {ctx.scale.train_limit or 'all'} "
                          f"training images, batch {ctx.scale.batch_size}) on {ctx.device}. The median over "
                          "epochs ignores an epoch slowed by other work on the machine. The paper trains "
                          "WRN-28-10 on 50,000 images on one V100: compare the ratios between methods, not "
                          "the seconds."),
    ),
    "table9": Table(
        score=score_knn,
        columns=(pair("knn clean", "softmax clean", "clean k-NN / softmax"),
                 pair("knn pgd-20", "softmax pgd-20", "PGD-20 k-NN / softmax")),
        **published("table9"),
        note=lambda ctx: (f"{_seeds(ctx)}; accuracy (%) on the first {ctx.test(ctx.scale.eval_n)[2]} test "
                          f"images, attacked or not; k=50, cosine, index = the {ctx.train_images} training "
                          "images' embeddings; AEs: PGD-20 run for all 20 steps."),
    ),
}


def _multi_note(ctx: Context, rows: tuple[RunSpec, ...], specs: str) -> str:
    sc = ctx.scale
    seeds = ", ".join(f"{r.label} {r.seeds}" for r in rows)
    images = f"{sc.train_limit} training images" if sc.train_limit else "all training images"
    return (f"Scale `{ctx.scale_name}`: {sc.arch} on {ctx.data_name} ({images} after holding out "
            f"{sc.val_split} for selection), {sc.epochs} epochs (lr decay at {list(sc.milestones)}), "
            f"weights: {sc.weights} ({WEIGHTS_NOTE[sc.weights]}). Seeds per row: {seeds} (2 seeds: mean ± "
            f"sd). Robust accuracy (%) on the first {ctx.test(sc.eval_n)[2]} test images (AutoAttack: first "
            f"{ctx.test(sc.aa_n)[2]}); worst: right under every attack of the row, per image. Each row "
            "trains with the attack steps its name gives, of eps/4 (fewer than 4 steps: 2.5 eps/steps, "
            "capped at eps, i.e. eps for AGKD-BML-2); the AGKD teacher is a clean run with label smoothing "
            f"{sc.teacher_smoothing} (the released code's). The paper's TRADES and MART rows are with CAS "
            "(channel-wise activation suppressing).\n\n"
            + _describe(ctx, specs + ",aa") + "\n- pgd-20 last it.: the same PGD-20 scored at its last "
                                              "iterate (the "
            "paper's and the released code's protocol; ours keeps each image's first fooling iterate); not "
            "in worst\n\n" + "\n\n".join(filter(None, (mcnemar(ctx, *DECIDING),
                                                *(mcnemar(ctx, b, DECIDING[1]) for b in BASELINES)))))


MULTI_ATTACKS = "clean,fgsm,bim-7,pgd-20,pgd-100,cw-20,cw-100"
_M = MULTI_ATTACKS.split(",")
MULTI_TABLES: dict[str, Table] = {
    "table1": Table(
        score=lambda ctx: score_rows(ctx, TABLE1_ROWS, MULTI_ATTACKS),
        columns=(*(acc(k) for k in _M), acc("pgd-20-last", "pgd-20 last it."), acc("aa", "AA"), acc("worst")),
        **published("multi-step table1"),
        rows=tuple(r.label for r in TABLE1_ROWS),
        note=lambda ctx: _multi_note(ctx, TABLE1_ROWS, MULTI_ATTACKS),
    ),
    "table5": Table(
        score=lambda ctx: score_rows(ctx, TABLE5_ROWS, "clean,pgd-20"),
        columns=(acc("clean"), acc("pgd-20", "PGD-20"), acc("pgd-20-last", "PGD-20 last it."),
                 acc("aa", "AA"),
                 acc("worst")),
        **published("multi-step table5"),
        rows=tuple(r.label for r in TABLE5_ROWS),
        note=lambda ctx: (_multi_note(ctx, TABLE5_ROWS, "clean,pgd-20").replace(
            "\n\n",
            " AGKD-BML-10+MART: the released code (10-step targeted attack, MART term, student initialised "
            "from the teacher), stopped one epoch after the first lr decay.\n\n", 1)
            + "\n\n" + mcnemar(ctx, "AT-7", "AGKD-BML-10+MART")),
    ),
}


def figure5(ctx: Context) -> str:
    """Accuracy vs PGD steps and vs eps for UM, AT and AGKD-BML of the first seed (``figure5.png``)."""
    seed = ctx.scale.seeds[0]
    x, y, n = ctx.test(ctx.scale.aa_n)
    curves = {label: accuracy_curves(ctx.model(ctx.runs[(label, seed)]), x, y, eps=ctx.eps, seed=seed,
                                     progress=ctx.progress, desc=f"{label} ")
              for label in ("UM", "AT", "AGKD-BML")}
    files = write_curves(curves, ctx.out, stem="figure5")
    return (f"![Figure 5]({files[1].name})\n\nSeed {seed}, first {n} test images; data in `{files[0].name}`. "
            "The paper's Figure 5 compares AGKD-BML, FS and AT on WRN-28-10.")


#: the figures this layer draws itself; the command line adds those drawn by its analysis commands
FIGURES: dict[str, Callable[[Context], str]] = {"figure5": figure5}
#: every target ``build`` knows, in the order ``--help`` lists them
TARGETS = (*TABLES, "table5", "figure3", "figure4", "figure5", "capacity")


def build(target: str, *, scale: str = "small", out: str | Path = "reproduce", yes: bool = False,
          progress: bool = True, only: str | None = None, data: DataChoice = DataChoice(),
          figures: dict[str, Callable[[Context], str]] | None = None) -> str:
    """Build one target, write ``OUT/TARGET.md`` and return its text (``figures``: more figure functions).

    The data are checked (loaded) before anything is trained or any folder is made. """
    figures = {**FIGURES, **(figures or {})}
    if target not in TARGETS:
        raise unknown_choice("reproduction target", target, TARGETS)
    if scale not in SCALES:
        raise unknown_choice("scale", scale, SCALES)
    if scale == "paper" and not yes:
        raise UserError("--scale paper trains WRN-28-10 for 200 epochs "
                        "per run (days on one GPU); add --yes to start")
    if only and target != "capacity":
        raise UserError("--only chooses rows of the capacity study; other targets train all their rows")
    ctx = Context(scale_name=scale, out=Path(out), progress=progress, data_choice=data)
    print(f"data: {ctx.data.spec.name} ({ctx.data.x_train.shape[0]} training, {ctx.data.x_test.shape[0]} "
          "test images)",
          file=sys.stderr)
    if target == "capacity":
        if not ctx.scale.multi_step:
            raise UserError("capacity is a multi-step comparison: use --scale medium (or tiny-medium)")
        text = capacity(Path(out), scale, progress=progress, only=only, data=ctx.data_choice)
        _write(ctx, target, text)
        return text
    tables = {**TABLES, **MULTI_TABLES} if ctx.scale.multi_step else TABLES
    if target not in tables and target not in figures:
        raise UserError(f"{target} is the multi-step comparison: use --scale medium (or tiny-medium)")
    if target in tables:
        ctx.partial = lambda scores: _write(ctx, target, tables[target].format(ctx, scores),
                                            " (partial: the rows that decide the question; the others "
                                            "follow)")
    text = tables[target].render(ctx) if target in tables else figures[target](ctx)
    _write(ctx, target, text)
    return text


def _write(ctx: Context, target: str, text: str, remark: str = "") -> None:
    write_text(ctx.out / f"{target}.md", text + "\n")
    print(text)
    print(f"wrote {ctx.out / (target + '.md')}{remark}", file=sys.stderr)


