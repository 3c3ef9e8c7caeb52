"""The evaluator as a Python function: ``agkd_bml.evaluate(model, x, y)`` for any ``nn.Module``.

The same attacks, per-sample worst case, Wilson intervals, checks and resumable state as ``agkd-bml eval``,
without the command line: the model is any module from images in [0, 1] to logits (or wrapped with
``normalize``), the data are tensors. :func:`attack` returns the adversarial images of one attack;
:func:`evaluate_dataset` loads a dataset by name or ``.npz`` path first. """

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from agkd_bml.attacks import AutoAttack, parse_attacks
from agkd_bml.attacks.norms import NORMS, dataset_eps, default_eps
from agkd_bml.data import load_dataset, to_float
from agkd_bml.device import resolve_device
from agkd_bml.errors import UserError
from agkd_bml.evaluation import AttackResult, EvalState, format_table, write_tables
from agkd_bml.evaluation.checks import checked_evaluation
from agkd_bml.evaluation.robust import batch_generator
from agkd_bml.evaluation.table import combined, robustbench_record
from agkd_bml.models.base import Classifier
from agkd_bml.models.external import External, as_model
from agkd_bml.models.modes import eval_mode
from agkd_bml.provenance import provenance, tensor_digest

DEFAULT_ATTACKS = ("clean", "pgd-20", "aa")


@dataclass(frozen=True, kw_only=True)
class AttackOutput:
    """What :func:`attack` returns: the adversarial images and, per image, what became of it."""

    #: (N, C, H, W) float in [0, 1] on the CPU; an image the model got wrong clean stays clean
    images: torch.Tensor
    clean_correct: torch.Tensor  #: bool (N,): the model is right on the clean image
    fooled: torch.Tensor  #: bool (N,): the model is wrong on ``images``
    broken_by: list[str | None] | None  #: AutoAttack only: the part that broke each image (None: none did)
    #: AutoAttack only: wall seconds spent in each part, in the cascade's
    #: order (the reference's log shows them)
    seconds_by: dict[str, float] | None = None
    attack: str  #: the attack's full description (steps, step size, eps, restarts)

    @property
    def robust(self) -> torch.Tensor:
        """bool (N,): right clean and right on the adversarial image (the robust-accuracy convention)."""
        return self.clean_correct & ~self.fooled

    @property
    def accuracy(self) -> float:
        """Robust accuracy: the fraction of images that are :attr:`robust`."""
        return float(self.robust.float().mean()) if self.robust.numel() else float("nan")


def attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: str = "pgd-20",
    *,
    eps: float | None = None,
    norm: str = "linf",
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 256,
    seed: int = 0,
) -> AttackOutput:
    """Attack ``model`` on images ``x`` with labels ``y`` and return the adversarial images.

    ``model``: any module from images in [0, 1] to logits (a tensor, a tuple or list led by the logits, a
    dict or an object with ``logits``); ``normalize=(mean, std)`` for one that expects normalised inputs.
    ``attack``: one spec as on the command line (``fgsm``, ``pgd-20``, ``cw-20``, ``aa``, ``aa-bf16``, ...).
    Only the images the model classifies right are attacked, in batches seeded as :func:`evaluate` seeds
    them, so ``attack(...).robust`` equals ``evaluate(...).robust`` for the same attack, seed and batch size.

    >>> import torch, agkd_bml
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    >>> out = agkd_bml.attack(net, torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]), "pgd-5", eps=8 / 255)
    >>> out.images.shape, out.fooled.dtype
    (torch.Size([4, 3, 8, 8]), torch.bool)
    """
    if norm not in NORMS:
        raise UserError(f"norm {norm!r} is not available; use 'linf' or 'l2'")
    x, y = _check_data(x, y)
    dev = resolve_device(str(device))
    net = as_model(model, normalize=normalize).to(dev)
    images = to_float(x)
    clean = torch.zeros_like(y, dtype=torch.bool)
    with torch.no_grad(), eval_mode(net):
        for start in range(0, x.shape[0], batch_size):
            logits = net(images[start:start + batch_size].to(dev)).logits
            clean[start:start + batch_size] = (logits.argmax(1) == y[start:start + batch_size].to(dev)).cpu()
    classes = int(logits.shape[1])
    if int(y.max()) >= classes:
        raise UserError(f"label {int(y.max())} does not exist for a model of {classes} outputs")
    if eps is None:
        eps = default_eps(norm, channels=x.shape[1], size=x.shape[2])
    parsed = parse_attacks(attack, eps=eps, num_classes=classes, norm=norm)
    if len(parsed) != 1:
        raise UserError(f"attack() takes one attack; got {attack!r} (use evaluate() for several)")
    atk = parsed[0]
    fooled, broken = ~clean, list[str | None]([None] * x.shape[0])
    idx = clean.nonzero().squeeze(1)
    for b, start in enumerate(range(0, idx.numel(), batch_size)):
        rows = idx[start:start + batch_size]
        out = atk(net, images[rows].to(dev), y[rows].to(dev), batch_generator(dev, seed, b))
        images[rows], fooled[rows] = out.images.cpu().to(images.dtype), out.fooled.cpu()
        if isinstance(atk, AutoAttack):
            for i, part in zip(rows.tolist(), atk.broken_by(), strict=True):
                broken[i] = part
    cascade = atk if isinstance(atk, AutoAttack) else None
    return AttackOutput(images=images, clean_correct=clean, fooled=fooled,
                        broken_by=broken if cascade else None,
                        seconds_by={p: cascade.seconds_by.get(p, 0.0) for p in cascade.components} if cascade
                        else None,
                        attack=atk.describe())


@dataclass(kw_only=True)
class Evaluation:
    """The result of :func:`evaluate`: per attack, accuracy, 95% Wilson interval and per-sample flags."""

    name: str
    results: list[AttackResult]
    #: warnings of the checks (randomized model, probabilities, ...)
    flags: list[str] = field(default_factory=list)
    dataset: str = ""
    provenance: dict = field(default_factory=dict)  #: versions, device, commit and the images' fingerprint

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
                            datasets={self.name: self.dataset}, provenance=self.provenance or None)


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
    ``norm``: the threat model, ``linf`` or ``l2``; ``eps`` defaults by the images' shape
    (:func:`~agkd_bml.attacks.norms.default_eps`): L-inf 0.3 on 1x28x28 (MNIST-like) images and 8/255 on
    others, L2 0.5 on 3x32x32 images (scaled by the square root of the number of pixel values on others);
    :func:`evaluate_dataset` takes the dataset's own. ``normalize=(mean, std)`` wraps a model that expects
    normalised inputs. ``state``: a folder where per-sample results are saved as they come, so a rerun after a
    crash continues (same result). ``out``: also write the tables. The checks' warnings (randomized model,
    probabilities instead of logits, zero gradients, Square beating the white-box parts)
    are printed and kept in ``flags``.
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
    result = Evaluation(name=name, results=results, flags=flags, dataset=dataset,
                        provenance=provenance(dev, tensor_digest(x, y)))
    if out is not None:
        result.write(out)
    return result


def evaluate_dataset(
    model: nn.Module, *, dataset: str = "cifar10", n: int | None = 1000, data_dir: str | None = None,
    **options: object,
) -> Evaluation:
    """:func:`evaluate` on a dataset by name (``cifar10``, ...) or ``npz:PATH``: the first ``n`` test images
    (all with ``None``). ``options`` are :func:`evaluate`'s. (RobustBench's ``benchmark``:
    :mod:`agkd_bml.compat`.)"""
    data = load_dataset(dataset, data_dir=data_dir)
    count = data.x_test.shape[0] if n is None else min(n, data.x_test.shape[0])
    options.setdefault("eps", dataset_eps(data.spec, str(options.get("norm", "linf"))))
    return evaluate(model, data.x_test[:count], data.y_test[:count], dataset=data.spec.name,
                    num_classes=data.spec.num_classes, **options)  # type: ignore[arg-type]  # evaluate() checks them


def _check_data(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as (N, C, H, W) uint8 or float in [0, 1], labels as int64 (N,), or a one-line error."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise UserError("x and y must be torch tensors (use torch.from_numpy for arrays)")
    if x.ndim != 4:
        raise UserError(f"x must be a batch of images (N, C, H, W); got shape {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise UserError(f"y must hold one label per image, shape ({x.shape[0]},); got {tuple(y.shape)}")
    if x.is_floating_point() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise UserError("float images must lie in [0, 1] (the models' input convention); normalise inside "
                        "the model or pass normalize=(mean, std)")
    if not x.is_floating_point() and x.dtype != torch.uint8:
        raise UserError(f"x must be uint8 (0..255) or float in [0, 1]; got {x.dtype}")
    return x.cpu(), y.long().cpu()
