"""The evaluator as a Python function: ``agkd_bml.evaluate(model, x, y)`` for any ``nn.Module``.

The same attacks, per-sample worst case, Wilson intervals, checks and resumable state as ``agkd-bml
eval``, without the command line: the model is any module from images in [0, 1] to logits (or wrapped
with ``normalize``), the data are tensors. :func:`benchmark` is the RobustBench-style entry that loads a
dataset by name or ``.npz`` path first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from agkd_bml.attacks import parse_attacks
from agkd_bml.attacks.norms import NORMS, dataset_eps, default_eps
from agkd_bml.data import load_dataset, to_float
from agkd_bml.device import resolve_device
from agkd_bml.errors import UserError
from agkd_bml.evaluation import AttackResult, EvalState, format_table, write_tables
from agkd_bml.evaluation.checks import checked_evaluation
from agkd_bml.evaluation.table import combined, robustbench_record
from agkd_bml.models.base import Classifier
from agkd_bml.models.external import External

DEFAULT_ATTACKS = ("clean", "pgd-20", "aa")


@dataclass
class Evaluation:
    """The result of :func:`evaluate`: per attack, accuracy, 95% Wilson interval and per-sample flags."""

    name: str
    results: list[AttackResult]
    flags: list[str] = field(default_factory=list)  #: warnings of the checks (randomized model, probabilities, ...)
    dataset: str = ""

    @property
    def accuracy(self) -> dict[str, float]:
        """Robust accuracy (fraction) per attack name, and ``worst-case`` over all of them."""
        acc = {r.attack.name: r.accuracy for r in self.results}
        acc["worst-case"] = self.worst_case.accuracy
        return acc

    @property
    def robust(self) -> dict[str, torch.Tensor]:
        """Per-sample flags (bool, one per image): right clean and under the attack."""
        return {r.attack.name: r.correct for r in self.results}

    @property
    def worst_case(self) -> AttackResult:
        """Right under every attack at once (the number to report)."""
        return combined(self.results)

    def wilson(self) -> dict[str, tuple[float, float]]:
        return {r.attack.name: r.wilson() for r in self.results}

    def robustbench(self) -> dict:
        """A RobustBench-style record (clean and AutoAttack accuracy, threat model, eps, number of images)."""
        return robustbench_record(self.name, self.results, self.dataset)

    def table(self) -> str:
        """The Markdown table ``agkd-bml eval`` prints."""
        return format_table({self.name: self.results})

    def write(self, out: str | Path) -> list[Path]:
        """Write ``eval.md``, ``eval.csv`` and ``eval.json`` into ``out``, as ``agkd-bml eval --out`` does."""
        return write_tables({self.name: self.results}, out, flags={self.name: self.flags},
                            datasets={self.name: self.dataset})


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attacks: Sequence[str] | str = DEFAULT_ATTACKS,
    eps: float | None = None,
    norm: str = "linf",
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    num_classes: int | None = None,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    seed: int = 0,
    state: str | Path | None = None,
    out: str | Path | None = None,
    name: str = "model",
    progress: bool = False,
    dataset: str = "",
) -> Evaluation:
    """Attack ``model`` on images ``x`` (N, C, H, W; uint8, or float in [0, 1]) with labels ``y``.

    ``attacks``: specs as on the command line (``clean``, ``fgsm``, ``pgd-20``, ``cw-20``, ``aa``, ...).
    ``norm``: the threat model, ``linf`` or ``l2``; ``eps`` defaults by the images' shape (:func:`~agkd_bml.attacks.norms.default_eps`): L-inf 0.3 on
    1x28x28 (MNIST-like) images and 8/255 on others, L2 0.5 on 3x32x32 images (scaled by the square root of the
    number of pixel values on others); :func:`benchmark` takes the dataset's own.
    ``normalize=(mean, std)`` wraps a model that expects normalised inputs. ``state``: a folder where
    per-sample results are saved as they come, so a rerun after a crash continues (same result).
    ``out``: also write the tables. The checks' warnings (randomized model, probabilities instead of
    logits, zero gradients, Square beating the white-box parts) are printed and kept in ``flags``.
    """
    if norm not in NORMS:
        raise UserError(f"norm {norm!r} is not available; use 'linf' or 'l2'")
    specs = attacks if isinstance(attacks, str) else ",".join(attacks)
    x, y = _check_data(x, y)
    dev = resolve_device(str(device))
    net = model if isinstance(model, (Classifier, External)) and normalize is None else External(
        model, mean=normalize[0] if normalize else None, std=normalize[1] if normalize else None)
    net = net.to(dev)
    with torch.no_grad():
        classes = net(to_float(x[:2]).to(dev)).logits.shape[1]
    if num_classes is not None and num_classes != classes:
        raise UserError(f"the model gives {classes} outputs per image; num_classes={num_classes}")
    if int(y.max()) >= classes:
        raise UserError(f"label {int(y.max())} does not exist for a model of {classes} outputs")
    if eps is None:
        eps = default_eps(norm, channels=x.shape[1], size=x.shape[2])
    parsed = parse_attacks(specs, eps=eps, num_classes=classes, norm=norm)
    results, flags = checked_evaluation(net, x, y, parsed, num_classes=classes, label=name, device=dev,
                                        batch_size=batch_size, seed=seed, progress=progress,
                                        state=EvalState(state) if state else None)
    result = Evaluation(name, results, flags, dataset)
    if out is not None:
        result.write(out)
    return result


def benchmark(
    model: nn.Module, *, dataset: str = "cifar10", n: int | None = 1000, data_dir: str = "./data",
    **options: object,
) -> Evaluation:
    """RobustBench-style: load ``dataset`` (a name such as ``cifar10``, or ``npz:PATH``), evaluate the first ``n``
    test images (all with ``None``). ``options`` are :func:`evaluate`'s."""
    data = load_dataset(dataset, data_dir=data_dir)
    count = data.x_test.shape[0] if n is None else min(n, data.x_test.shape[0])
    options.setdefault("eps", dataset_eps(data.spec, str(options.get("norm", "linf"))))
    return evaluate(model, data.x_test[:count], data.y_test[:count], dataset=data.spec.name,
                    num_classes=data.spec.num_classes, **options)  # type: ignore[arg-type]


def _check_data(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as (N, C, H, W) uint8 or float in [0, 1], labels as int64 (N,), or a one-line error."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise UserError("x and y must be torch tensors (use torch.from_numpy for arrays)")
    if x.ndim != 4:
        raise UserError(f"x must be a batch of images (N, C, H, W); got shape {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise UserError(f"y must hold one label per image, shape ({x.shape[0]},); got {tuple(y.shape)}")
    if x.is_floating_point() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise UserError("float images must lie in [0, 1] (the models' input convention); normalise inside the model "
                        "or pass normalize=(mean, std)")
    if not x.is_floating_point() and x.dtype != torch.uint8:
        raise UserError(f"x must be uint8 (0..255) or float in [0, 1]; got {x.dtype}")
    return x.cpu(), y.long().cpu()
