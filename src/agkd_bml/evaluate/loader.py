"""Loading models and their test data for evaluation and analysis: one loader below the command layer.

Every command that looks at trained models (eval, curves, audit, knn, tsne, attention, report) takes the
same :class:`EvalOptions` and loads through :class:`ModelLoader`, so a new model source or data option is
added once. Loading needs only :mod:`agkd_bml.models.checkpoint`, never the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from agkd_bml.data import Dataset, DataSpec, load_dataset
from agkd_bml.device import resolve_device
from agkd_bml.errors import UserError
from agkd_bml.models import Classifier
from agkd_bml.models.checkpoint import load_model


@dataclass(frozen=True)
class EvalOptions:
    """What every evaluation and analysis command shares: which images, on what, with which randomness."""

    n: int | None = None  #: the first N test images (None: all)
    batch_size: int = 256
    eps: float | None = None  #: L-inf budget (None: the dataset's)
    seed: int = 0  #: random starts and library attacks
    dataset: str | None = None  #: evaluate on this dataset instead of the checkpoint's
    data_dir: str | None = None
    device: str = "auto"
    progress: bool = True
    weights: str = "last"  #: of each run: ``last``, ``best`` (best.pt, held-out PGD) or ``ema``


def require_positive(**values: float | None) -> None:
    """Raise :class:`UserError` for the first given value (option name -> value) that is not positive."""
    for name, v in values.items():
        if v is not None and v <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive; got {v}")


def check_compatible(path: str, own: DataSpec, spec: DataSpec) -> None:
    """A checkpoint can be evaluated on (or attack) data of its own input shape and number of classes."""
    if (own.num_classes, own.channels, own.size) != (spec.num_classes, spec.channels, spec.size):
        raise UserError(
            f"{path} was trained on {own.name} ({own.num_classes} classes, {own.channels}x{own.size}x{own.size}); "
            f"it cannot be used on {spec.name} ({spec.num_classes} classes, {spec.channels}x{spec.size}x{spec.size})"
        )


def _label(path: str, taken: set[str]) -> str:
    """A short row name for a checkpoint: its run directory's name (made unique)."""
    p = Path(path)
    base = p.name if p.is_dir() else (p.parent.name if p.stem in ("last", "prev") else p.stem)
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


class ModelLoader:
    """Checkpoints and their test data for the evaluation commands (each dataset loaded once)."""

    def __init__(self, options: EvalOptions) -> None:
        self.options = options
        self.device = resolve_device(options.device)
        self.datasets: dict[str, Dataset] = {}
        self.sources: dict[str, tuple[Classifier, DataSpec]] = {}
        self.taken: set[str] = set()
        self.configs: dict[str, dict] = {}  #: training config of each loaded checkpoint, by path

    def model(self, path: str) -> tuple[str, Classifier, Dataset, torch.Tensor, torch.Tensor]:
        """(row label, model, dataset, first ``n`` test images, their labels) of a checkpoint."""
        model, ckpt = load_model(path, self.device, self.options.weights)
        saved = self.configs[path] = ckpt.config
        name = self.options.dataset or saved["dataset"]
        if name not in self.datasets:
            data_dir = self.options.data_dir or saved.get("data_dir", "./data")
            self.datasets[name] = load_dataset(name, data_dir=data_dir)
        data = self.datasets[name]
        check_compatible(path, ckpt.data, data.spec)
        total = data.x_test.shape[0]
        n = total if self.options.n is None else min(self.options.n, total)
        label = _label(path, self.taken)
        if self.options.weights != "last":  # the row says which weights it is (best: of which epoch)
            label += f" ({self.options.weights}, epoch {ckpt.epoch})"
        return label, model, data, data.x_test[:n], data.y_test[:n]

    def source(self, path: str) -> Classifier:
        """A transfer source model, loaded once."""
        if path not in self.sources:
            model, ckpt = load_model(path, self.device)
            self.sources[path] = (model, ckpt.data)
        return self.sources[path][0]

    def check_source(self, path: str, spec: DataSpec) -> None:
        """A loaded source model fits the data it attacks."""
        check_compatible(path, self.sources[path][1], spec)

    def eps(self, data: Dataset) -> float:
        return self.options.eps if self.options.eps is not None else data.spec.default_eps
