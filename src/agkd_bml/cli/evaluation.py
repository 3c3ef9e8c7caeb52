"""``agkd-bml eval``, ``curves`` and ``audit``: robust accuracy, accuracy curves and the masking audit."""

from __future__ import annotations

import argparse

from agkd_bml.attacks import spec_help
from agkd_bml.cli.options import add_eval_options, command_handler, number
from agkd_bml.evaluation.runs import audit_checkpoint, curves, evaluate_checkpoints

CHECKPOINTS_HELP = ("checkpoint files or run directories of this project, or any model: py:FILE.py:FACTORY "
                    "(or py:package.module:FACTORY; runs your code) with --model-weights, an exported "
                    "program (.pt2, torch.export.save) or a TorchScript file; foreign models need --dataset "
                    "and take inputs in [0, 1] (else add --normalize)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="robust accuracy of checkpoints under attacks (Table 1)",
                       description="Evaluate checkpoints on the test set of the dataset they were trained "
                                   "on. "
                       "A point counts as robust only if it is right clean and under the attack; the table "
                       "gives each accuracy with its 95% Wilson interval and every attack's settings.")
    e.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help=CHECKPOINTS_HELP)
    e.add_argument("--attacks", default="clean,fgsm,pgd-20", help=f"comma-separated specs. {spec_help()}")
    e.add_argument("--step-size", type=number, default=None, help="override the gradient attacks' step size")
    e.add_argument("--restarts", type=int, default=1, help="random restarts of PGD / CW")
    e.add_argument("--targeted", action="store_true",
                   help="gradient attacks target each image's most "
                        "confusing class instead of being untargeted")
    e.add_argument("--last-iterate", action="store_true",
                   help="score each image at the last PGD iterate, as the paper's code does (default: at the "
                        "first iterate that fools the model, which is never weaker)")
    e.add_argument("--out", default=None,
                   help="also write the table as eval.md, eval.csv, eval.json here (and save "
                   "the evaluation's progress in OUT/state, so the same command resumes after a crash)")
    e.add_argument("--state", metavar="DIR", default=None,
                   help="save per-sample results here as they are computed (default with --out: OUT/state); "
                        "the same command run again skips finished work; a folder written with other "
                        "settings is refused")
    e.add_argument("--name", dest="names", metavar="NAME", action="append", default=None,
                   help="the row's name, once per CHECKPOINT in order "
                        "(default: the run folder's or factory's name)")
    e.add_argument("--norm", choices=("linf", "l2"), default="linf",
                   help="threat model of every attack: linf (default; eps default the dataset's, 8/255 on "
                        "CIFAR-10) or l2 (eps default 0.5 on 3x32x32 images, scaled by sqrt(pixels) on "
                        "others; FGSM is then FGM, PGD / CW / BIM take normalised-gradient steps of eps/4, "
                        "aa is AutoAttack's L2 version)")
    add_eval_options(e, foreign=True)
    e.set_defaults(handler=command_handler(evaluate_checkpoints))

    c = sub.add_parser("curves", help="accuracy vs PGD steps and vs eps (Figure 5), plotted",
                       description="PGD-k accuracy for k in 1..100 at the dataset's eps, and PGD-20 "
                                   "accuracy for eps from 0 to 2.5x the dataset's (0..20/255 on CIFAR-10); "
                                   "writes curves.csv, curves.png and curves.pdf.")
    c.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help=CHECKPOINTS_HELP)
    c.add_argument("--out", default="curves", help="folder for curves.csv / .png / .pdf (default: ./curves)")
    add_eval_options(c, foreign=True)
    c.set_defaults(handler=command_handler(curves))

    a = sub.add_parser("audit", help="gradient-masking checks with pass/fail lines; exit code 1 on a failure",
                       description="Checks that robustness is not an artefact of masked gradients: non-zero "
                       "input gradients; PGD beats FGSM; accuracy non-increasing in steps and in eps; an "
                       "unbounded attack reaches ~0; PGD has converged (more steps / restarts change "
                       "little); gradient-free attacks (Square, SpsaAttack) and transfer from --source are "
                       "no stronger than PGD. Exit code 0 when all pass, 1 when one fails, 2 on bad input.")
    a.add_argument("checkpoint", metavar="CHECKPOINT",
                   help=CHECKPOINTS_HELP.replace("files or run directories", "file or run directory"))
    a.add_argument("--source", default=None, metavar="CHECKPOINT",
                   help="a different model (e.g. the clean teacher) to craft transfer AEs on")
    a.add_argument("--square-queries", type=int, default=1000,
                   help="queries of the Square attack (default: 1000)")
    a.add_argument("--spsa-steps", type=int, default=0,
                   help="also run SpsaAttack with this many iterations (slow)")
    a.add_argument("--tolerance", type=number, default=0.01,
                   help="accuracy difference (fraction) a check tolerates (default: 0.01 = 1 point)")
    a.add_argument("--out", default=None, help="also write audit.md and audit.json here")
    add_eval_options(a, n=500, foreign=True)
    a.set_defaults(handler=command_handler(audit_checkpoint, status=True))
