"""What the CLI commands do, as functions (so they can be called from Python and tested directly)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from agkd_bml.attacks import Transfer, fmt_eps, parse_attacks
from agkd_bml.config import TrainConfig
from agkd_bml.data import Dataset, DataSpec, load_dataset
from agkd_bml.device import resolve_device
from agkd_bml.errors import UserError
from agkd_bml.evaluate import (
    AttackResult,
    Curves,
    accuracy_curves,
    audit,
    evaluate_attacks,
    format_table,
    verdict,
    write_audit,
    write_curves,
    write_tables,
)
from agkd_bml.models import Classifier
from agkd_bml.train import load_model, train


def _label(path: str, taken: set[str]) -> str:
    """A short row name for a checkpoint: its run directory's name (made unique)."""
    p = Path(path)
    base = p.name if p.is_dir() else (p.parent.name if p.stem in ("last", "prev") else p.stem)
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def _check_compatible(path: str, own: DataSpec, spec: DataSpec) -> None:
    """A checkpoint can be evaluated on (or attack) data of its own input shape and number of classes."""
    if (own.num_classes, own.channels, own.size) != (spec.num_classes, spec.channels, spec.size):
        raise UserError(
            f"{path} was trained on {own.name} ({own.num_classes} classes, {own.channels}x{own.size}x{own.size}); "
            f"it cannot be used on {spec.name} ({spec.num_classes} classes, {spec.channels}x{spec.size}x{spec.size})"
        )


def require_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        v = getattr(args, name, None)
        if v is not None and v <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive; got {v}")


class CheckpointLoader:
    """Checkpoints and their test data for the evaluation commands (each dataset loaded once)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = resolve_device(args.device)
        self.datasets: dict[str, Dataset] = {}
        self.sources: dict[str, tuple[Classifier, DataSpec]] = {}
        self.taken: set[str] = set()
        self.configs: dict[str, dict] = {}  #: training config of each loaded checkpoint, by path

    def model(self, path: str) -> tuple[str, Classifier, Dataset, torch.Tensor, torch.Tensor]:
        """(row label, model, dataset, first ``--n`` test images, their labels) of a checkpoint."""
        model, ckpt = load_model(path, self.device)
        saved = self.configs[path] = ckpt["config"]
        name = self.args.dataset or saved["dataset"]
        if name not in self.datasets:
            self.datasets[name] = load_dataset(name, data_dir=self.args.data_dir or saved.get("data_dir", "./data"))
        data = self.datasets[name]
        _check_compatible(path, DataSpec.from_dict(ckpt["data"]), data.spec)
        n = data.x_test.shape[0] if self.args.n is None else min(self.args.n, data.x_test.shape[0])
        return _label(path, self.taken), model, data, data.x_test[:n], data.y_test[:n]

    def source(self, path: str) -> Classifier:
        """A transfer source model, loaded once."""
        if path not in self.sources:
            model, ckpt = load_model(path, self.device)
            self.sources[path] = (model, DataSpec.from_dict(ckpt["data"]))
        return self.sources[path][0]

    def eps(self, data: Dataset) -> float:
        return self.args.eps if self.args.eps is not None else data.spec.default_eps


def evaluate_checkpoints(args: argparse.Namespace) -> dict[str, list[AttackResult]]:
    """``agkd-bml eval``: each checkpoint on the test set of its dataset (or ``--dataset``)."""
    require_positive(args, "n", "batch_size", "restarts")
    loader = CheckpointLoader(args)
    # Fail on a bad spec (or source checkpoint) before any work.
    parse_attacks(args.attacks, eps=args.eps if args.eps is not None else 8 / 255, load_source=loader.source)
    rows: dict[str, list[AttackResult]] = {}
    for path in args.checkpoints:
        label, model, data, x, y = loader.model(path)
        attacks = parse_attacks(
            args.attacks, eps=loader.eps(data), num_classes=data.spec.num_classes, step_size=args.step_size,
            restarts=args.restarts, targeted=args.targeted, load_source=loader.source,
        )
        for attack in attacks:
            if isinstance(attack, Transfer):
                _check_compatible(attack.source_path, loader.sources[attack.source_path][1], data.spec)
        start = time.perf_counter()
        rows[label] = evaluate_attacks(model, x, y, attacks, batch_size=args.batch_size, device=loader.device,
                                       seed=args.seed, progress=not args.no_progress, desc=f"{label} ")
        print(f"{label}: evaluated in {time.perf_counter() - start:.1f}s on {loader.device}")
    print(format_table(rows))
    if args.out:
        for f in write_tables(rows, args.out):
            print(f"wrote {f}")
    return rows


def curves(args: argparse.Namespace) -> dict[str, Curves]:
    """``agkd-bml curves``: accuracy vs PGD steps and vs eps for each checkpoint, plotted and as CSV."""
    require_positive(args, "n", "batch_size")
    loader = CheckpointLoader(args)
    out: dict[str, Curves] = {}
    for path in args.checkpoints:
        label, model, data, x, y = loader.model(path)
        start = time.perf_counter()
        out[label] = c = accuracy_curves(model, x, y, eps=loader.eps(data), batch_size=args.batch_size,
                                         device=loader.device, seed=args.seed, progress=not args.no_progress,
                                         desc=f"{label} ")
        steps = ", ".join(f"{k}: {100 * r.accuracy:.1f}" for k, r in c.by_steps)
        budgets = ", ".join(f"{fmt_eps(e) if e else 0}: {100 * r.accuracy:.1f}" for e, r in c.by_eps)
        print(f"{label} ({time.perf_counter() - start:.0f}s, n={x.shape[0]})\n  PGD steps -> accuracy %: {steps}"
              f"\n  eps (PGD-20) -> accuracy %: {budgets}")
    for f in write_curves(out, args.out):
        print(f"wrote {f}")
    return out


def audit_checkpoint(args: argparse.Namespace) -> int:
    """``agkd-bml audit``: gradient-masking checks; exit code 1 when one fails."""
    require_positive(args, "n", "batch_size", "square_queries")
    if args.spsa_steps < 0 or not 0 <= args.tolerance < 1:
        raise UserError("--spsa-steps must be >= 0 and --tolerance in [0, 1)")
    loader = CheckpointLoader(args)
    source = loader.source(args.source) if args.source else None
    label, model, data, x, y = loader.model(args.checkpoint)
    if args.source:
        _check_compatible(args.source, loader.sources[args.source][1], data.spec)
    eps = loader.eps(data)
    if not 0 < eps <= 1:
        raise UserError(f"--eps must be in (0, 1]; got {eps}")
    start = time.perf_counter()
    checks = audit(model, x, y, eps=eps, num_classes=data.spec.num_classes, source=source,
                   source_name=args.source or "source", square_queries=args.square_queries,
                   spsa_steps=args.spsa_steps, tolerance=args.tolerance, batch_size=args.batch_size,
                   device=loader.device, seed=args.seed, progress=not args.no_progress)
    lines = [f"audit of {label} ({args.checkpoint}), {time.perf_counter() - start:.0f}s on {loader.device}:"]
    lines += [c.line() for c in checks] + [verdict(checks, x.shape[0], eps)]
    text = "\n".join(lines)
    print(text)
    if args.out:
        for f in write_audit(checks, text, args.out):
            print(f"wrote {f}")
    return 1 if any(c.passed is False for c in checks) else 0


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
    args = argparse.Namespace(
        checkpoints=[str(c.run_dir()) for c in configs], attacks="clean,pgd-20", n=None, batch_size=256, eps=None,
        step_size=None, restarts=1, targeted=False, seed=0, dataset=None, data_dir=None, device=device, out=str(out), no_progress=not progress,
    )
    rows = evaluate_checkpoints(args)
    print(f"quickstart finished in {time.perf_counter() - start:.0f}s")
    return rows
