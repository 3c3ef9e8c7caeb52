"""``agkd-bml reproduce capacity``: does AGKD-BML's loss to PGD-AT under AutoAttack survive more capacity?

The medium scale answers the paper's AutoAttack claim with a 0.24 M-parameter CNN, 150 times smaller than the
paper's WRN-28-10. This target trains the deciding pair, AT-7 and AGKD-BML-7 (with its label-smoothed teacher
``T``), on the same recipe at four widths of the small CNN (base width 16, 32, 64, 128: 0.06 M to 3.8 M
parameters, 63 times), scores each on the same test images with the same attacks and AutoAttack, and compares
the pair image by image per width. Each width is its own reproduction folder (``OUT/<size>/runs``,
``OUT/<size>/state``), so a stopped study resumes, and ``--only`` lets parallel processes (one GPU, several
runs) train and score one row each. """

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agkd_bml.analysis.plotting import pyplot, save_figure
from agkd_bml.analysis.timing import run_timing
from agkd_bml.errors import UserError
from agkd_bml.evaluation import NotSaved, wilson_interval
from agkd_bml.evaluation.stats import Gap, Trend, log_linear_trend, paired_gap
from agkd_bml.evaluation.table import WEIGHTS_NOTE
from agkd_bml.fileio import write_text
from agkd_bml.models import build_model
from agkd_bml.reproduction.multistep import RunSpec, mcnemar, score_rows
from agkd_bml.reproduction.recipes import Context, DataChoice, Scores

#: (size label, architecture), smallest first: the small CNN at base width
#: 16, 32 (the medium scale's), 64, 128
SIZES = (("w16", "small-cnn-w16"), ("w32", "small-cnn"), ("w64", "small-cnn-w64"), ("w128", "small-cnn-w128"))
ROWS = (RunSpec(label="AT-7", method="pgd-at", steps=7),
        RunSpec(label="AGKD-BML-7", method="agkd-bml", steps=7))
PAIR = ("AT-7", "AGKD-BML-7")
SPECS = "clean,pgd-20"  #: scored besides AutoAttack
PAPER_ARCH = "wrn-28-10"  #: the paper's model, where the gap's trend is carried for comparison


@dataclass(kw_only=True)
class SizeScores:
    """One width's scores, per-image flags and what it ran on."""

    size: str
    arch: str
    params: int
    ctx: Context
    scores: Scores


def parse_only(only: str | None) -> set[tuple[str, str]] | None:
    """``--only w128:AT-7,w64:AGKD-BML-7`` as a set of (size, row); ``None``: every size and row."""
    if not only:
        return None
    sizes, rows = {s for s, _ in SIZES}, {r.label for r in ROWS}
    chosen = set()
    for item in only.split(","):
        size, _, row = item.strip().partition(":")
        if size not in sizes or row not in rows:
            raise UserError(f"--only {item!r}: give SIZE:ROW with SIZE one of {', '.join(sorted(sizes))} and "
                            f"ROW one of {', '.join(sorted(rows))} (e.g. w128:AT-7)")
        chosen.add((size, row))
    return chosen


def score_sizes(out: Path, scale: str, progress: bool, only: set[tuple[str, str]] | None,
                data: DataChoice = DataChoice()) -> list[SizeScores]:
    """Train (or reuse) and score the chosen rows of every width.

    The rows ``--only`` leaves out are shown too where another call has already finished and scored them
    (nothing of theirs is trained or attacked here), so the table a call writes never drops a row that was
    done; widths with no row chosen or done are left out. """
    done = []
    for size, arch in SIZES:
        ctx = Context(scale_name=scale, out=out / size, progress=progress, data_choice=data, arch=arch)
        rows = tuple(r for r in ROWS if only is None or (size, r.label) in only)
        scores: Scores = {}
        if rows:
            print(f"== capacity: {size} ({arch}), {', '.join(r.label for r in rows)}", file=sys.stderr)
            scores = score_rows(ctx, rows, SPECS)
        for row in ROWS:
            if row not in rows:
                scores.update(_saved_scores(ctx, row))
        if scores:
            params = sum(p.numel() for p in build_model(arch, ctx.data.spec).parameters())
            done.append(SizeScores(size=size, arch=arch, params=params, ctx=ctx, scores=scores))
    return done


def _saved_scores(ctx: Context, row: RunSpec) -> Scores:
    """``row``'s scores when its runs have finished and all its results are saved; nothing otherwise."""
    ctx.saved_only = True
    try:
        scores = score_rows(ctx, (row,), SPECS)
        print(f"== capacity: {ctx.out.name} {row.label}: finished and scored before; shown as saved",
              file=sys.stderr)
        return scores
    except NotSaved:
        for key in [k for k in ctx.flags if k[0] == row.label]:  # the points it had before one was missing
            del ctx.flags[key]
        return {}
    finally:
        ctx.saved_only = False


def _cell(flags: torch.Tensor) -> str:
    lo, hi = wilson_interval(float(flags.float().mean()), flags.numel())
    return f"{100 * float(flags.float().mean()):.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def render(done: list[SizeScores]) -> str:
    """The capacity table (clean, PGD-20, AA with Wilson intervals, the AA gap, McNemar) and its note."""
    lines = ["| size | parameters | model | clean | PGD-20 | AA | AA gap (AT-7 - AGKD-BML-7) | image by "
             "image under AA |",
             "|---" * 8 + "|"]
    gaps = {s.size: g for s, g in aa_gaps(done)}
    for s in done:
        seed = s.ctx.scale.seeds[0]
        gap = f"{100 * gaps[s.size].value:+.1f} points" if s.size in gaps else "-"
        test = mcnemar(s.ctx, *PAIR).removeprefix(f"AutoAttack, image by image, {PAIR[0]} vs {PAIR[1]}: "
                                                  "") or "-"
        for label in PAIR:
            if label not in s.scores:
                continue
            cells = [_cell(s.ctx.flags[(label, seed, name)]) for name in ("clean", "pgd-20", "aa")]
            pair = (gap, test) if label == PAIR[0] else ("", "")  # once per width
            lines.append(f"| {s.size} | {s.params / 1e6:.2f} M | {label} | {' | '.join(cells)} | "
                         f"{' | '.join(pair)} |")
    pending = [f"{size}:{r.label}" for size, _ in SIZES for r in ROWS
               if not any(s.size == size and r.label in s.scores for s in done)]
    if pending:
        lines += ["", f"**Partial table**: {', '.join(pending)} not trained and scored yet; "
                  "`agkd-bml reproduce capacity --scale SCALE --out OUT` resumes and completes it."]
    trend = trend_text(done)
    return "\n".join([*lines, *(["", trend] if trend else []), "", note(done)])


def aa_gaps(done: list[SizeScores]) -> list[tuple[SizeScores, Gap]]:
    """Each width's AutoAttack gap (AT-7 - AGKD-BML-7, the same images), where both rows are scored."""
    out = []
    for s in done:
        seed = s.ctx.scale.seeds[0]
        a, b = (s.ctx.flags.get((label, seed, "aa")) for label in PAIR)
        if a is not None and b is not None:
            out.append((s, paired_gap(a, b)))
    return out


def _points(gap: Gap) -> str:
    lo, hi = gap.ci95
    return f"{100 * gap.value:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def trend_text(done: list[SizeScores]) -> str:
    """The AA gap per width with its paired interval, the line through log-parameters and where it leads.

    Says in words whether the gap shrinks, stays or grows (the slope's interval below, across or above 0), and
    carries the line to the paper's WRN-28-10 as a labelled extrapolation. """
    gaps = aa_gaps(done)
    if not gaps:
        return ""
    per = ", ".join(f"{s.size} {_points(g)}" for s, g in gaps)
    text = (f"**The AA gap ({PAIR[0]} - {PAIR[1]}, points) by width**, [95% interval of the paired "
            f"difference over the same test images]: {per}.")
    trend = log_linear_trend([s.params for s, _ in gaps], [g for _, g in gaps])
    if trend is None:
        return text
    return f"{text} {_trend_sentences(trend, gaps)}"


def _trend_sentences(trend: Trend, gaps: list[tuple[SizeScores, Gap]]) -> str:
    lo, hi = trend.slope_ci95
    verdict = ("the gap shrinks as the models grow" if hi < 0 else "the gap grows as the models grow" if lo
               > 0
               else "no change of the gap with size can be told apart "
                    "from the images' sampling at this precision")
    params = [s.params for s, _ in gaps]
    span = max(params) / min(params)
    text = (f"A straight line in log-parameters through the {trend.sizes} widths (each gap weighted by its "
            f"inverse variance): {100 * trend.slope:+.1f} points per 4-fold parameters [{100 * lo:+.1f}, "
            f"{100 * hi:+.1f}], so {verdict}.")
    if trend.residual_p is not None:
        text += (f" The gaps scatter about the line with chi-square {trend.chi2:.1f} on {trend.sizes - 2} "
                 f"degree(s) of freedom (p = {trend.residual_p:.2g}; a small p says the widths differ by "
                 "more than a line and image sampling explain: seed-to-seed variation, or a bend).")
    paper = sum(p.numel() for p in build_model(PAPER_ARCH, gaps[0][0].ctx.data.spec).parameters())
    g, g_lo, g_hi = trend.at(paper)
    text += (f" Carried to the paper's {PAPER_ARCH} ({paper / 1e6:.1f} M parameters, "
             f"{paper / max(params):.0f} times the largest width here), the line gives {100 * g:+.1f} points "
             f"[{100 * g_lo:+.1f}, {100 * g_hi:+.1f}]: an extrapolation of a line fitted over a "
             f"{span:.0f}-fold span, and another architecture, so a guide to what larger widths should show, "
             "not a prediction of the paper's number. The intervals count the test images' sampling only: "
             "each width is one training seed.")
    return text


def note(done: list[SizeScores]) -> str:
    if not done:
        return ""
    ctx = done[0].ctx
    sc = ctx.scale
    runs = [s.ctx.run_dir(label, sc.seeds[0]) for s in done for label in PAIR if label in s.scores]
    devices = sorted({run_timing(r)["device"] for r in runs if (r / "metrics.jsonl").is_file()})
    images = f"{sc.train_limit} training images" if sc.train_limit else "all training images"
    attacks = "\n".join(f"- {a.describe()}" for a in ctx.attacks("clean,pgd-20,aa"))
    return (f"Scale `{ctx.scale_name}` at each width: the small CNN (4 conv-BN-ReLU layers, base width 16 to "
            f"128) on {ctx.data_name} ({images} after holding out {sc.val_split} for selection), {sc.epochs} "
            f"epochs (lr {sc.lr} decayed x0.1 at {list(sc.milestones)}), batch {sc.batch_size}, training "
            f"precision `{sc.amp}`, seed {sc.seeds[0]}; trained on {', '.join(devices) or '?'}. Weights: "
            f"{sc.weights} ({WEIGHTS_NOTE[sc.weights]}). AT-7 and AGKD-BML-7 train with 7 steps of eps/4; "
            f"the AGKD teacher is a clean run of the same width with label smoothing {sc.teacher_smoothing}. "
            f"Robust accuracy (%) on the first {ctx.test(sc.eval_n)[2]} test images (AutoAttack: first "
            f"{ctx.test(sc.aa_n)[2]}), [95% Wilson interval]; evaluation in float32. Image by image: exact "
            "McNemar test on the images robust for one model only.\n\n" + attacks)


def write_figure(done: list[SizeScores], out: Path) -> list[Path]:
    """``capacity.png`` / ``.pdf`` (left: clean and AA accuracy against parameters, both models, Wilson
    intervals; right: the AA gap with its paired interval and the line of :func:`trend_text` over the widths
    measured) and ``capacity.csv`` (the accuracy points)."""
    plt = pyplot()
    fig, (ax, gap_ax) = plt.subplots(1, 2, figsize=(11, 4))
    rows = io.StringIO()
    w = csv.writer(rows)
    w.writerow(["size", "arch", "parameters", "model", "attack", "accuracy", "ci95_low", "ci95_high", "n"])
    for label, colour in zip(PAIR, ("tab:blue", "tab:red"), strict=True):
        for name, style in (("clean", "--"), ("aa", "-")):
            pts = []
            for s in done:
                f = s.ctx.flags.get((label, s.ctx.scale.seeds[0], name))
                if f is None:
                    continue
                acc = float(f.float().mean())
                lo, hi = wilson_interval(acc, f.numel())
                pts.append((s.params, acc, lo, hi))
                w.writerow([s.size, s.arch, s.params, label, name, acc, lo, hi, f.numel()])
            if pts:
                xs, ys, los, his = (list(v) for v in zip(*pts, strict=True))
                ax.errorbar(xs, [100 * v for v in ys],
                            yerr=[[100 * (a - b) for a, b in zip(ys, los, strict=True)],
                                  [100 * (b - a) for a, b in zip(ys, his, strict=True)]],
                            fmt="o" + style, color=colour, capsize=3,
                            label=f"{label} {'AutoAttack' if name == 'aa' else 'clean'}")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("CIFAR-10, small CNN by width: clean and AutoAttack accuracy", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _gap_panel(gap_ax, aa_gaps(done))
    write_text(out / "capacity.csv", rows.getvalue())
    return [out / "capacity.csv", *save_figure(fig, out / "capacity")]


def _gap_panel(ax: Any, gaps: list[tuple[SizeScores, Gap]]) -> None:
    """The AA gap per width (95% paired interval) and, from two widths on, the fitted line over their span."""
    if gaps:
        x = [s.params for s, _ in gaps]
        y = [100 * g.value for _, g in gaps]
        err = [[100 * (g.value - g.ci95[0]) for _, g in gaps], [100 * (g.ci95[1] - g.value) for _, g in gaps]]
        ax.errorbar(x, y, yerr=err, fmt="o", color="black", capsize=3, label="measured (95% paired interval)")
        trend = log_linear_trend(x, [g for _, g in gaps])
        if trend is not None:
            ends = [min(x), max(x)]
            ax.plot(ends, [100 * trend.at(p)[0] for p in ends], "--", color="grey",
                    label=f"line: {100 * trend.slope:+.1f} points per 4x parameters")
        ax.legend(fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"AA gap, {PAIR[0]} - {PAIR[1]} (points)")
    ax.set_title("AutoAttack gap by width", fontsize=10)
    ax.grid(alpha=0.3)


def capacity(out: Path, scale: str, *, progress: bool, only: str | None,
             data: DataChoice = DataChoice()) -> str:
    """Train and score the capacity study (or the ``--only`` rows of it); write
    ``OUT/capacity.md`` and the figure."""
    done = score_sizes(out, scale, progress, parse_only(only), data)
    text = render(done) + "\n\n![capacity](capacity.png)\n\nData: `capacity.csv`."
    write_figure(done, out)
    return text
