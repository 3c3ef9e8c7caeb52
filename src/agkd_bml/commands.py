"""What the CLI commands do, as functions (so they can be called from Python and tested directly)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from agkd_bml.attacks import Transfer, parse_attacks
from agkd_bml.config import TrainConfig
from agkd_bml.data import Dataset, DataSpec, load_dataset
from agkd_bml.device import resolve_device
from agkd_bml.errors import UserError
from agkd_bml.evaluate import AttackResult, evaluate_attacks, format_table, write_tables
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


def evaluate_checkpoints(args: argparse.Namespace) -> dict[str, list[AttackResult]]:
    """``agkd-bml eval``: each checkpoint on the test set of its dataset (or ``--dataset``)."""
    for name in ("n", "batch_size", "restarts"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive; got {v}")
    device = resolve_device(args.device)
    sources: dict[str, tuple[Classifier, DataSpec]] = {}

    def load_source(path: str) -> Classifier:
        if path not in sources:
            source, ckpt = load_model(path, device)
            sources[path] = (source, DataSpec.from_dict(ckpt["data"]))
        return sources[path][0]

    # Fail on a bad spec (or source checkpoint) before any work.
    parse_attacks(args.attacks, eps=args.eps if args.eps is not None else 8 / 255, load_source=load_source)
    datasets: dict[str, Dataset] = {}
    rows: dict[str, list[AttackResult]] = {}
    taken: set[str] = set()
    for path in args.checkpoints:
        model, ckpt = load_model(path, device)
        saved = ckpt["config"]
        name = args.dataset or saved["dataset"]
        if name not in datasets:
            datasets[name] = load_dataset(name, data_dir=args.data_dir or saved.get("data_dir", "./data"))
        data = datasets[name]
        spec = data.spec
        _check_compatible(path, DataSpec.from_dict(ckpt["data"]), spec)
        attacks = parse_attacks(
            args.attacks, eps=args.eps if args.eps is not None else data.spec.default_eps, num_classes=spec.num_classes,
            step_size=args.step_size, restarts=args.restarts, targeted=args.targeted, load_source=load_source,
        )
        for attack in attacks:
            if isinstance(attack, Transfer):
                _check_compatible(attack.source_path, sources[attack.source_path][1], spec)
        n = data.x_test.shape[0] if args.n is None else min(args.n, data.x_test.shape[0])
        label = _label(path, taken)
        start = time.perf_counter()
        rows[label] = evaluate_attacks(model, data.x_test[:n], data.y_test[:n], attacks, batch_size=args.batch_size,
                                       device=device, seed=args.seed, progress=not args.no_progress, desc=f"{label} ")
        print(f"{label}: evaluated in {time.perf_counter() - start:.1f}s on {device}")
    print(format_table(rows))
    if args.out:
        for f in write_tables(rows, args.out):
            print(f"wrote {f}")
    return rows


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
