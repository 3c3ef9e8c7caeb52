"""``agkd-bml reproduce capacity``: does AGKD-BML's loss to PGD-AT under AutoAttack survive more capacity?

The medium scale answers the paper's AutoAttack claim with a 0.24 M-parameter CNN, 150 times smaller than
the paper's WRN-28-10. This target trains the deciding pair, AT-7 and AGKD-BML-7 (with its label-smoothed
teacher ``T``), on the same recipe at four widths of the small CNN (base width 16, 32, 64, 128: 0.06 M to
3.8 M parameters, 63 times), scores each on the same test images with the same attacks and AutoAttack,
and compares the pair image by image per width. Each width is its own reproduction folder
(``OUT/<size>/runs``, ``OUT/<size>/state``), so a stopped study resumes, and ``--only`` lets parallel
processes (one GPU, several runs) train and score one row each.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from agkd_bml.analysis.plotting import pyplot, save_figure
from agkd_bml.analysis.timing import run_timing
from agkd_bml.cli.multistep import RunSpec, mcnemar, score_rows
from agkd_bml.cli.recipes import Context, Scores
from agkd_bml.errors import UserError
from agkd_bml.evaluation import NotSaved, wilson_interval
from agkd_bml.evaluation.table import WEIGHTS_NOTE
from agkd_bml.fileio import write_text
from agkd_bml.models import build_model

#: (size label, architecture), smallest first: the small CNN at base width 16, 32 (the medium scale's), 64, 128
SIZES = (("w16", "small-cnn-w16"), ("w32", "small-cnn"), ("w64", "small-cnn-w64"), ("w128", "small-cnn-w128"))
ROWS = (RunSpec("AT-7", "pgd-at", 7), RunSpec("AGKD-BML-7", "agkd-bml", 7))
PAIR = ("AT-7", "AGKD-BML-7")
SPECS = "clean,pgd-20"  #: scored besides AutoAttack


@dataclass
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
            raise UserError(f"--only {item!r}: give SIZE:ROW with SIZE one of {', '.join(sorted(sizes))} and ROW one "
                            f"of {', '.join(sorted(rows))} (e.g. w128:AT-7)")
        chosen.add((size, row))
    return chosen


def score_sizes(out: Path, scale: str, progress: bool, only: set[tuple[str, str]] | None) -> list[SizeScores]:
    """Train (or reuse) and score the chosen rows of every width.

    The rows ``--only`` leaves out are shown too where another call has already finished and scored them
    (nothing of theirs is trained or attacked here), so the table a call writes never drops a row that
    was done; widths with no row chosen or done are left out.
    """
    done = []
    for size, arch in SIZES:
        ctx = Context(scale, out / size, progress, arch=arch)
        rows = tuple(r for r in ROWS if only is None or (size, r.label) in only)
        scores: Scores = {}
        if rows:
            print(f"== capacity: {size} ({arch}), {', '.join(r.label for r in rows)}")
            scores = score_rows(ctx, rows, SPECS)
        for row in ROWS:
            if row not in rows:
                scores.update(_saved_scores(ctx, row))
        if scores:
            params = sum(p.numel() for p in build_model(arch, ctx.data.spec).parameters())
            done.append(SizeScores(size, arch, params, ctx, scores))
    return done


def _saved_scores(ctx: Context, row: RunSpec) -> Scores:
    """``row``'s scores when its runs have finished and all its results are saved; nothing otherwise."""
    ctx.saved_only = True
    try:
        scores = score_rows(ctx, (row,), SPECS)
        print(f"== capacity: {ctx.out.name} {row.label}: finished and scored before; shown as saved")
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
    lines = ["| size | parameters | model | clean | PGD-20 | AA | AA gap (AT-7 - AGKD-BML-7) | image by image under AA |",
             "|---" * 8 + "|"]
    for s in done:
        seed = s.ctx.scale.seeds[0]
        aa = {label: s.ctx.flags.get((label, seed, "aa")) for label in PAIR}
        gap = (f"{100 * (float(aa[PAIR[0]].float().mean()) - float(aa[PAIR[1]].float().mean())):+.1f} points"
               if all(f is not None for f in aa.values()) else "-")
        test = mcnemar(s.ctx, *PAIR).removeprefix(f"AutoAttack, image by image, {PAIR[0]} vs {PAIR[1]}: ") or "-"
        for label in PAIR:
            if label not in s.scores:
                continue
            cells = [_cell(s.ctx.flags[(label, seed, name)]) for name in ("clean", "pgd-20", "aa")]
            pair = (gap, test) if label == PAIR[0] else ("", "")  # once per width
            lines.append(f"| {s.size} | {s.params / 1e6:.2f} M | {label} | {' | '.join(cells)} | {' | '.join(pair)} |")
    pending = [f"{size}:{r.label}" for size, _ in SIZES for r in ROWS
               if not any(s.size == size and r.label in s.scores for s in done)]
    if pending:
        lines += ["", f"**Partial table**: {', '.join(pending)} not trained and scored yet; "
                  "`agkd-bml reproduce capacity --scale SCALE --out OUT` resumes and completes it."]
    return "\n".join([*lines, "", note(done)])


def note(done: list[SizeScores]) -> str:
    if not done:
        return ""
    ctx = done[0].ctx
    sc = ctx.scale
    runs = [s.ctx.run_dir(label, sc.seeds[0]) for s in done for label in PAIR if label in s.scores]
    devices = sorted({run_timing(r)["device"] for r in runs if (r / "metrics.jsonl").is_file()})
    images = f"{sc.train_limit} training images" if sc.train_limit else "all training images"
    attacks = "\n".join(f"- {a.describe()}" for a in ctx.attacks("clean,pgd-20,aa"))
    return (f"Scale `{ctx.scale_name}` at each width: the small CNN (4 conv-BN-ReLU layers, base width 16 to 128) on "
            f"{sc.dataset} ({images} after holding out {sc.val_split} for selection), {sc.epochs} epochs (lr {sc.lr} "
            f"decayed x0.1 at {list(sc.milestones)}), batch {sc.batch_size}, training precision `{sc.amp}`, seed "
            f"{sc.seeds[0]}; trained on {', '.join(devices) or '?'}. Weights: {sc.weights} ({WEIGHTS_NOTE[sc.weights]}). "
            "AT-7 and AGKD-BML-7 train with 7 steps of eps/4; the AGKD teacher is a clean run of the same width with "
            f"label smoothing {sc.teacher_smoothing}. Robust accuracy (%) on the first {ctx.test(sc.eval_n)[2]} test "
            f"images (AutoAttack: first {ctx.test(sc.aa_n)[2]}), [95% Wilson interval]; evaluation in float32. "
            "Image by image: exact McNemar test on the images robust for one model only.\n\n" + attacks)


def write_figure(done: list[SizeScores], out: Path) -> list[Path]:
    """``capacity.png`` / ``.pdf`` (clean and AA accuracy against parameters, both models, Wilson intervals) and
    ``capacity.csv`` (the points)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
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
                x, y, lo, hi = (list(v) for v in zip(*pts, strict=True))
                ax.errorbar(x, [100 * v for v in y], yerr=[[100 * (a - b) for a, b in zip(y, lo, strict=True)],
                                                           [100 * (b - a) for a, b in zip(y, hi, strict=True)]],
                            fmt="o" + style, color=colour, capsize=3, label=f"{label} {'AutoAttack' if name == 'aa' else 'clean'}")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("CIFAR-10, small CNN at four widths: clean and AutoAttack accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    write_text(out / "capacity.csv", rows.getvalue())
    return [out / "capacity.csv", *save_figure(fig, out / "capacity")]


def capacity(out: Path, scale: str, *, progress: bool, only: str | None) -> str:
    """Train and score the capacity study (or the ``--only`` rows of it); write ``OUT/capacity.md`` and the figure."""
    done = score_sizes(out, scale, progress, parse_only(only))
    text = render(done) + "\n\n![capacity](capacity.png)\n\nData: `capacity.csv`."
    write_figure(done, out)
    return text
