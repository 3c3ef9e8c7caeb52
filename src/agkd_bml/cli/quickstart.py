"""``agkd-bml quickstart``: a clean teacher, AGKD-BML and PGD-AT on the embedded digits, then a table."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from agkd_bml.cli.evaluation import evaluate_checkpoints
from agkd_bml.cli.options import add_progress, command_handler
from agkd_bml.config import TrainConfig
from agkd_bml.evaluate import AttackResult, EvalOptions
from agkd_bml.train import train


def quickstart_configs(out: str | Path, device: str = "auto") -> list[TrainConfig]:
    """The three runs of the quickstart: a clean teacher, then AGKD-BML and PGD-AT students, on digits."""
    out = Path(out)
    common = dict(dataset="digits", arch="small-cnn", batch_size=64, lr=0.05, val_n=200, device=device)
    teacher = TrainConfig(method="standard", epochs=10, milestones=[8], label_smoothing=0.5, out=str(out / "teacher"), **common)
    students = dict(epochs=12, milestones=[10], **common)
    return [
        teacher,
        TrainConfig(method="agkd-bml", teacher=str(out / "teacher"), out=str(out / "agkd-bml"), **students),
        TrainConfig(method="pgd-at", out=str(out / "pgd-at"), **students),
    ]


def quickstart(out: str | Path = "runs/quickstart", *, device: str = "auto", progress: bool = True) -> dict[str, list[AttackResult]]:
    """``agkd-bml quickstart``: train (or reuse) the three runs, then print clean and PGD-20 accuracy."""
    start = time.perf_counter()
    configs = quickstart_configs(out, device)
    for cfg in configs:
        print(f"== {cfg.method} -> {cfg.run_dir()}")
        train(cfg, resume=True, progress=progress)
    rows = evaluate_checkpoints([str(c.run_dir()) for c in configs], attacks="clean,pgd-20", out=str(out),
                                options=EvalOptions(device=device, progress=progress))
    print(f"quickstart finished in {time.perf_counter() - start:.0f}s")
    return rows


def add_parsers(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("quickstart", help="teacher, AGKD-BML and PGD-AT on the embedded digits; prints a table",
                       description="Trains a standard teacher, an AGKD-BML student and a PGD-AT student on "
                       "scikit-learn's digits (no download), then evaluates clean and PGD-20 accuracy.")
    q.add_argument("--out", default="runs/quickstart", help="folder for the three runs (reused when finished)")
    q.add_argument("--device", default="auto")
    add_progress(q)
    q.set_defaults(handler=command_handler(quickstart))
