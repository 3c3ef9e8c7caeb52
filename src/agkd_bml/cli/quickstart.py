"""``agkd-bml quickstart``: a clean teacher, AGKD-BML and PGD-AT on the embedded digits, then a table."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from agkd_bml.cli.options import add_progress, command_handler
from agkd_bml.config import TrainConfig
from agkd_bml.evaluation import AttackResult, EvalOptions
from agkd_bml.evaluation.runs import evaluate_checkpoints
from agkd_bml.train import train


def quickstart_configs(out: str | Path, device: str = "auto") -> list[TrainConfig]:
    """The runs of the quickstart: a clean teacher, then AGKD-BML and PGD-AT students, on digits.

    Each student's run is named after its training attack steps: AGKD-BML with its paper 2 steps, PGD-AT with
    its paper 7 and, for a comparison at equal cost in attack steps, with 2. """
    out = Path(out)
    common = dict(dataset="digits", arch="small-cnn", batch_size=64, lr=0.05, val_n=200, device=device)
    teacher = TrainConfig.of(method="standard", epochs=10, milestones=[8], label_smoothing=0.5,
                             out=str(out / "teacher"), **common)
    students = dict(epochs=12, milestones=[10], **common)
    return [
        teacher,
        TrainConfig.of(method="agkd-bml", teacher=str(out / "teacher"), out=str(out / "agkd-bml-2"),
                       **students),
        TrainConfig.of(method="pgd-at", out=str(out / "pgd-at-7"), **students),
        TrainConfig.of(method="pgd-at", steps=2, out=str(out / "pgd-at-2"), **students),
    ]


#: AutoAttack runs on the first AA_N test images only, so the whole demo stays under 3 minutes on 2 cores.
AA_N = 100


def quickstart(
    out: str | Path = "runs/quickstart", *, device: str = "auto", aa_n: int = AA_N, progress: bool = True
) -> dict[str, list[AttackResult]]:
    """``agkd-bml quickstart``: train (or reuse) the runs, then print clean and
    PGD-20 accuracy, and AutoAttack's.

    Returns the clean / PGD-20 rows.
    """
    start = time.perf_counter()
    configs = quickstart_configs(out, device)
    for cfg in configs:
        print(f"== {cfg.method} -> {cfg.run_dir()}", file=sys.stderr)
        train(cfg, resume=True, start_if_none=True, progress=progress)
    runs = [str(c.run_dir()) for c in configs]
    options = EvalOptions(device=device, progress=progress)
    rows = evaluate_checkpoints(runs, attacks="clean,pgd-20", out=str(out), options=options)
    print(f"\nAutoAttack on the first {aa_n} test images:")
    evaluate_checkpoints(runs, attacks="clean,aa", out=str(Path(out) / "aa"),
                         options=dataclasses.replace(options, n=aa_n))
    print("Rows: run name = method-<training attack steps> (the teacher trains on clean images). AGKD-BML-2 "
          "is the paper's 2-step method; PGD-AT-7 the paper's baseline; PGD-AT-2 the baseline at AGKD-BML's "
          f"cost in attack steps.\nquickstart finished in {time.perf_counter() - start:.0f}s")
    return rows


def add_parsers(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("quickstart",
                       help="teacher, AGKD-BML and PGD-AT on the embedded digits; prints a table",
                       description="Trains a standard teacher, an AGKD-BML student (2-step attacks) and "
                                   "PGD-AT students (7 and 2 steps) on scikit-learn's digits (no download), "
                                   "then evaluates clean, PGD-20 and AutoAttack accuracy.")
    q.add_argument("--out", default="runs/quickstart",
                   help="folder for the four runs: teacher, agkd-bml-2, "
                        "pgd-at-7, pgd-at-2 (reused when finished)")
    q.add_argument("--device", default="auto")
    q.add_argument("--aa-n", type=int, default=AA_N,
                   help=f"test images for AutoAttack (default: {AA_N}, to stay "
                   "under 3 minutes on 2 cores; all 450 take about 5)")
    add_progress(q)
    q.set_defaults(handler=command_handler(quickstart))
