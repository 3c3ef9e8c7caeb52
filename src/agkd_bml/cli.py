"""Command line: ``agkd-bml {train,eval,curves,audit,knn,tsne,attention,report,quickstart,presets,methods}``.

Bad input never shows a traceback: every :class:`UserError` is printed as one line and the exit code is
2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, NoReturn

from agkd_bml import __version__
from agkd_bml.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (and exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def number(text: str) -> float:
    """A float that may be written as a fraction, e.g. ``8/255``."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (write e.g. 0.031 or 8/255)") from exc


def _add_config_options(p: argparse.ArgumentParser) -> None:
    """One option per :class:`TrainConfig` field, with its help text; unset options stay None."""
    from agkd_bml.config import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        t = str(f.type)
        text = f.metadata["help"]
        if "default" not in text:  # help texts that explain their default say it themselves
            default = "[]" if f.default is dataclasses.MISSING else "none" if f.default is None else f.default
            text += f" (default: {default})"
        kw: dict[str, Any] = {"default": None, "help": text}
        if t.startswith("bool"):
            kw["action"] = argparse.BooleanOptionalAction
        elif t.startswith("list"):
            kw.update(nargs=f.metadata.get("nargs", "*"), type=int, metavar="N")
        elif t.startswith("int"):
            kw.update(type=int, metavar="N")
        elif t.startswith("float"):
            kw.update(type=number, metavar="X")
        else:
            kw["metavar"] = f.name.upper()
        p.add_argument(flag, **kw)


def _add_eval_options(p: argparse.ArgumentParser, n: int | None = None) -> None:
    """Options shared by eval, curves and audit."""
    p.add_argument("--n", type=int, default=n,
                   help=f"use the first N test images (default: {n if n else 'all'})")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--eps", type=number, default=None, help="L-inf budget (default: the dataset's, e.g. 8/255)")
    p.add_argument("--seed", type=int, default=0, help="seed of random starts and library attacks")
    p.add_argument("--dataset", default=None, help="evaluate on this dataset instead of the checkpoint's")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from agkd_bml.attacks import spec_help

    parser = _Parser(prog="agkd-bml", description="AGKD-BML adversarial training, the methods it is compared with, and their evaluation.")
    parser.add_argument("--version", action="version", version=f"agkd-bml {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser(
        "train", help="train a model with one method",
        description="Train a model. Values come from the defaults, then --preset, then --config FILE.yaml, "
        "then the options given here. The run directory gets config.yaml, metrics.jsonl (one JSON line "
        "per epoch) and atomic checkpoints last.pt / prev.pt.",
    )
    t.add_argument("--preset", help="a shipped preset (see `agkd-bml presets`)")
    t.add_argument("--config", metavar="FILE", help="a YAML file of options (keys as below, with _ or -)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a finished or unfinished run in --out")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    t.add_argument("--dry-run", action="store_true", help="check config, data, teacher and run directory, then stop")
    _add_config_options(t)

    e = sub.add_parser("eval", help="robust accuracy of checkpoints under attacks (Table 1)",
                       description="Evaluate checkpoints on the test set of the dataset they were trained on. "
                       "A point counts as robust only if it is right clean and under the attack; the table "
                       "gives each accuracy with its 95%% Wilson interval and every attack's settings.")
    e.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoint files or run directories")
    e.add_argument("--attacks", default="clean,fgsm,pgd-20", help=f"comma-separated specs. {spec_help()}")
    e.add_argument("--step-size", type=number, default=None, help="override the gradient attacks' step size")
    e.add_argument("--restarts", type=int, default=1, help="random restarts of PGD / CW")
    e.add_argument("--targeted", action="store_true",
                   help="gradient attacks target each image's most confusing class instead of being untargeted")
    e.add_argument("--out", default=None, help="also write the table as eval.md, eval.csv, eval.json here")
    _add_eval_options(e)

    c = sub.add_parser("curves", help="accuracy vs PGD steps and vs eps (Figure 5), plotted",
                       description="PGD-k accuracy for k in 1..100 at the dataset's eps, and PGD-20 accuracy for "
                       "eps from 0 to 2.5x the dataset's (0..20/255 on CIFAR-10); writes curves.csv, "
                       "curves.png and curves.pdf.")
    c.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoint files or run directories")
    c.add_argument("--out", default="curves", help="folder for curves.csv / .png / .pdf (default: ./curves)")
    _add_eval_options(c)

    a = sub.add_parser("audit", help="gradient-masking checks with pass/fail lines; exit code 1 on a failure",
                       description="Checks that robustness is not an artefact of masked gradients: non-zero "
                       "input gradients; PGD beats FGSM; accuracy non-increasing in steps and in eps; an "
                       "unbounded attack reaches ~0; PGD has converged (more steps / restarts change little); "
                       "gradient-free attacks (Square, SPSA) and transfer from --source are no stronger than "
                       "PGD. Exit code 0 when all pass, 1 when one fails, 2 on bad input.")
    a.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file or run directory")
    a.add_argument("--source", default=None, metavar="CHECKPOINT",
                   help="a different model (e.g. the clean teacher) to craft transfer AEs on")
    a.add_argument("--square-queries", type=int, default=1000, help="queries of the Square attack (default: 1000)")
    a.add_argument("--spsa-steps", type=int, default=0, help="also run SPSA with this many iterations (slow)")
    a.add_argument("--tolerance", type=number, default=0.01,
                   help="accuracy difference (fraction) a check tolerates (default: 0.01 = 1 point)")
    a.add_argument("--out", default=None, help="also write audit.md and audit.json here")
    _add_eval_options(a, n=500)

    k = sub.add_parser("knn", help="k-NN on penultimate embeddings vs the softmax head (Table 9)",
                       description="Classify clean and attacked test images by a k-NN vote among the embeddings "
                       "of training images, next to the softmax accuracy.")
    k.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    k.add_argument("--k", type=int, default=50, help="neighbours (default: 50)")
    k.add_argument("--metric", default="cosine", help="cosine or l2 (default: cosine)")
    k.add_argument("--index-limit", type=int, default=None, help="index only the first N training images")
    k.add_argument("--attack", default="pgd-20", help="attack spec for the attacked column (default: pgd-20)")
    k.add_argument("--out", default=None, help="also write knn.md / .csv / .json here")
    _add_eval_options(k)

    ts = sub.add_parser("tsne", help="t-SNE of embeddings: clean points by class, one class's AEs in red",
                        description="Figures 3, 6-9: one column per model, one row per chosen class.")
    ts.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    ts.add_argument("--classes", default=None, help="comma-separated class names or indices (default: the first two)")
    ts.add_argument("--per-class", type=int, default=100, help="clean test images per class (default: 100)")
    ts.add_argument("--attack", default="pgd-20")
    ts.add_argument("--out", default="tsne", help="folder for tsne.png / tsne.pdf (default: ./tsne)")
    _add_eval_options(ts)

    at = sub.add_parser("attention", help="attention maps of AEs vs the teacher's, and Grad-CAM (Figures 1, 4)")
    at.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    at.add_argument("--images", type=int, default=8, help="test images shown (default: 8)")
    at.add_argument("--teacher", default=None, help="clean teacher checkpoint (default: the first run's --teacher)")
    at.add_argument("--attack", default="pgd-20")
    at.add_argument("--out", default="attention", help="folder for attention.png and gradcam.png (default: ./attention)")
    _add_eval_options(at)

    r = sub.add_parser("report", help="one Markdown + HTML page: table, curves, k-NN, t-SNE, attention, timing",
                       description="Evaluate the given runs and write report.md / report.html with every figure.")
    r.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or checkpoints)")
    r.add_argument("--out", default="report", help="folder of the report (default: ./report)")
    r.add_argument("--attacks", default="clean,fgsm,pgd-20,cw-20", help="attack specs of the table (add aa for AutoAttack)")
    r.add_argument("--n", type=int, default=1000, help="test images for the table and k-NN (default: 1000)")
    r.add_argument("--curve-n", type=int, default=500, help="test images for the curves (default: 500)")
    r.add_argument("--k", type=int, default=50)
    r.add_argument("--index-limit", type=int, default=10000, help="training images in the k-NN index (default: 10000)")
    r.add_argument("--classes", default=None, help="t-SNE classes (default: the first two)")
    r.add_argument("--per-class", type=int, default=100)
    r.add_argument("--images", type=int, default=6, help="images in the attention figures")
    r.add_argument("--teacher", default=None)
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--eps", type=number, default=None)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="auto")
    r.add_argument("--no-progress", action="store_true")

    rp = sub.add_parser("reproduce", help="train, evaluate and compare with the paper, one table per command",
                        description="Train what a paper table needs (reusing finished runs in OUT/runs, resuming "
                        "unfinished ones), evaluate, and write OUT/TARGET.md with the paper's numbers beside ours. "
                        "Targets: table1 (white-box attacks), table2 (ablation with AutoAttack), table3 (black-box), "
                        "table6 (attention variants; trains 3 more AGKD runs per seed), table7 (training time), table9 "
                        "(k-NN), figure3 (t-SNE), figure4 (attention maps, Grad-CAM), figure5 (accuracy curves); all "
                        "share table2's runs. Scales: small (2 CPU cores, about an hour of training for "
                        "table2, on npz:../shared/data/cifar10.npz), paper (WRN-28-10, 200 epochs; GPUs), tiny "
                        "(a one-minute smoke test of the recipe on digits).")
    rp.add_argument("target", help="table1, table2, table3, table6, table7, table9, figure3, figure4 or figure5")
    rp.add_argument("--scale", default="small", help="small, paper or tiny (default: small)")
    rp.add_argument("--out", default="reproduce", help="folder for the runs and the tables (default: ./reproduce)")
    rp.add_argument("--yes", action="store_true", help="confirm a --scale paper run")
    rp.add_argument("--no-progress", action="store_true")

    q = sub.add_parser("quickstart", help="teacher, AGKD-BML and PGD-AT on the embedded digits; prints a table",
                       description="Trains a standard teacher, an AGKD-BML student and a PGD-AT student on "
                       "scikit-learn's digits (no download), then evaluates clean and PGD-20 accuracy.")
    q.add_argument("--out", default="runs/quickstart", help="folder for the three runs (reused when finished)")
    q.add_argument("--device", default="auto")
    q.add_argument("--no-progress", action="store_true")

    sub.add_parser("presets", help="list the shipped presets")
    sub.add_parser("methods", help="list the training methods")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from agkd_bml.config import FIELDS, resolve
    from agkd_bml.train import train

    overrides = {k: getattr(args, k) for k in FIELDS if getattr(args, k, None) is not None}
    cfg = resolve(args.preset, args.config, overrides)
    path = train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress, dry_run=args.dry_run)
    if not args.dry_run and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        print(f"checkpoint: {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from agkd_bml.commands import evaluate_checkpoints

    evaluate_checkpoints(args)
    return 0


def cmd_curves(args: argparse.Namespace) -> int:
    from agkd_bml.commands import curves

    curves(args)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from agkd_bml.commands import audit_checkpoint

    return audit_checkpoint(args)


def cmd_analysis(args: argparse.Namespace) -> int:
    from agkd_bml.analysis import commands

    getattr(commands, args.command)(args)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from agkd_bml.reproduce import reproduce

    return reproduce(args)


def cmd_quickstart(args: argparse.Namespace) -> int:
    from agkd_bml.commands import quickstart

    quickstart(args.out, device=args.device, progress=not args.no_progress)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from agkd_bml.config import preset_names, preset_path

    for name in preset_names():
        first = preset_path(name).read_text().splitlines()[0].lstrip("# ")
        print(f"{name:24s} {first}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from agkd_bml.methods import METHODS

    for name, cls in METHODS.items():
        teacher = ", needs --teacher" if cls.needs_teacher else ""
        print(f"{name:10s} [{cls.default_steps}-step attacks by default{teacher}] {cls.summary}")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "curves": cmd_curves, "audit": cmd_audit, "knn": cmd_analysis,
            "tsne": cmd_analysis, "attention": cmd_analysis, "report": cmd_analysis, "reproduce": cmd_reproduce,
            "quickstart": cmd_quickstart, "presets": cmd_presets, "methods": cmd_methods}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"agkd-bml: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agkd-bml: interrupted; the last checkpoint is intact (continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
