"""``agkd-bml reproduce TARGET --scale small|medium|paper|tiny``: argument parsing for
:mod:`agkd_bml.reproduction`.

The targets live in the reproduction layer; the two figures drawn by the analysis commands (t-SNE and
attention maps, as a user would draw them) are handed in from here. """

from __future__ import annotations

import argparse

from agkd_bml.cli.analysis import attention, tsne
from agkd_bml.cli.options import add_progress, command_handler
from agkd_bml.evaluation import EvalOptions
from agkd_bml.reproduction.recipes import SCALES, Context, DataChoice
from agkd_bml.reproduction.targets import TARGETS, build


def figure3(ctx: Context) -> str:
    """t-SNE of clean embeddings and of cat / ship AEs for UM, AT and AGKD-BML (``figure3/tsne.png``)."""
    seed = ctx.scale.seeds[0]
    section = tsne([str(ctx.runs[(m, seed)]) for m in ("UM", "AT", "AGKD-BML")], classes="3,8",
                   out=str(ctx.out / "figure3"), options=EvalOptions(seed=seed, progress=ctx.progress))
    return section.replace("](", "](figure3/", 1)


def figure4(ctx: Context) -> str:
    """Attention maps of AEs against the teacher's (``figure4/attention.png``) and Grad-CAM (Figure 1)."""
    seed = ctx.scale.seeds[0]
    section = attention([str(ctx.runs[(m, seed)]) for m in ("UM", "AT", "AGKD-BML")], images=6,
                        teacher=str(ctx.runs[("UM", seed)]), out=str(ctx.out / "figure4"),
                        options=EvalOptions(seed=seed, progress=ctx.progress))
    return section.replace("](", "](figure4/")


def reproduce(target: str, *, scale: str = "small", out: str = "reproduce", yes: bool = False,
              progress: bool = True,
              only: str | None = None, dataset: str | None = None, data_dir: str | None = None,
              download: bool = False) -> str:
    """``agkd-bml reproduce``: build one target (see :func:`agkd_bml.reproduction.targets.build`)."""
    return build(target, scale=scale, out=out, yes=yes, progress=progress, only=only,
                 data=DataChoice(dataset=dataset, data_dir=data_dir, download=download),
                 figures={"figure3": figure3, "figure4": figure4})


def add_parsers(sub: argparse._SubParsersAction) -> None:
    rp = sub.add_parser("reproduce", help="train, evaluate and compare with the paper, one table per command",
                        description="Train what a paper table needs (reusing finished runs in OUT/runs, "
                                    "resuming unfinished ones), evaluate, and write OUT/TARGET.md with "
                                    "the paper's numbers beside ours. Targets: table1 (white-box "
                                    "attacks), table2 (ablation with AutoAttack), table3 (black-box), "
                                    "table6 (attention variants; trains 3 more AGKD runs per seed), "
                                    "table7 (training time), table9 (k-NN), figure3 (t-SNE), figure4 "
                                    "(attention maps, Grad-CAM), figure5 (accuracy curves); all share "
                                    "table2's runs. At --scale medium, table1 is the multi-step "
                                    "comparison (UM, AT-7, SML-7, TRADES-10, MART-10, AGKD-BML-2, "
                                    "AGKD-BML-7 with AutoAttack on held-out-selected weights) and table5 "
                                    "the released code's AGKD-BML-10+MART against AT-7; capacity trains "
                                    "AT-7 and AGKD-BML-7 at four widths of the small CNN (0.06 M to 3.8 "
                                    "M parameters) and asks whether the gap under AutoAttack shrinks "
                                    "with capacity (a GPU job at --scale medium). Scales: small (2 CPU "
                                    "cores, about an hour of training for table2, on CIFAR-10 from "
                                    "--dataset), medium (all 50,000 training images; hours, resumable: "
                                    "run it in the background), paper (WRN-28-10, 200 epochs; GPUs), "
                                    "tiny and tiny-medium (smoke tests of the recipes on digits).")
    rp.add_argument("target", help=", ".join(TARGETS))
    rp.add_argument("--scale", default="small", help=f"{', '.join(SCALES)} (default: small)")
    rp.add_argument("--out", default="reproduce",
                    help="folder for the runs and the tables (default: ./reproduce)")
    rp.add_argument("--yes", action="store_true", help="confirm a --scale paper run")
    rp.add_argument("--only", metavar="SIZE:ROW,...",
                    help="capacity only: train and score just these rows (e.g. w128:AT-7,w128:AGKD-BML-7), "
                    "so parallel processes can share one GPU; its table also shows the other rows already "
                    "finished and scored (read from their saved results, nothing rerun); a run without it "
                    "trains and scores every row left and writes the whole table")
    rp.add_argument("--dataset", default=None,
                    help="the data of the small, medium and capacity scales: cifar10 "
                    "(torchvision's files in --data-dir) or npz:PATH (a file of x_train, y_train, x_test, "
                    "y_test; docs/data.md); default: the scale's own (digits for tiny scales)")
    rp.add_argument("--data-dir", default=None,
                    help="where datasets by name live (default: $AGKD_BML_DATA, else ~/.cache/agkd-bml/data)")
    rp.add_argument("--download", action="store_true",
                    help="let torchvision download a dataset by name into --data-dir")
    add_progress(rp)
    rp.set_defaults(handler=command_handler(reproduce))
