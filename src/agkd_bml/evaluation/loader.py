"""Loading models and their test data for evaluation and analysis: one loader below the command layer.

Every command that looks at trained models (eval, curves, audit, knn, tsne, attention, report) takes the same
:class:`EvalOptions` and loads through :class:`ModelLoader`, so a new model source or data option is added
once. Loading needs only :mod:`agkd_bml.models.checkpoint`, never the trainer. Besides this project's
checkpoints and run folders, a model may come from anywhere (:mod:`agkd_bml.models.external`: a Python
factory, an exported program, TorchScript); it is checked against the data before any attack runs. """

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from agkd_bml.attacks.norms import dataset_eps
from agkd_bml.config import TrainConfig
from agkd_bml.data import Dataset, DataSpec, load_dataset, to_float
from agkd_bml.device import resolve_device
from agkd_bml.errors import UserError
from agkd_bml.models import Classifier
from agkd_bml.models.checkpoint import load_model
from agkd_bml.models.external import is_external, load_external, parse_normalize


@dataclass(kw_only=True, frozen=True)
class EvalOptions:
    """What every evaluation and analysis command shares: which images, on what, with which randomness."""

    n: int | None = None  #: the first N test images (None: all)
    batch_size: int = 256
    #: the budget (None: the dataset's, see :func:`~agkd_bml.attacks.norms.dataset_eps`)
    eps: float | None = None
    seed: int = 0  #: random starts and library attacks
    dataset: str | None = None  #: evaluate on this dataset instead of the checkpoint's
    data_dir: str | None = None
    device: str = "auto"
    progress: bool = True
    weights: str = "last"  #: of each run: ``last``, ``best`` (best.pt, held-out PGD) or ``ema``
    #: state dicts for the ``py:`` factories' models: one for all, or one per ``py:`` model in the given order
    model_weights: tuple[str, ...] = ()
    #: wrap a foreign model in this normalisation (``dataset``, ``M,S``, per channel)
    normalize: str | None = None
    norm: str = "linf"  #: the threat model of the attacks: ``linf`` or ``l2``


def require_positive(**values: float | None) -> None:
    """Raise :class:`UserError` for the first given value (option name -> value) that is not positive."""
    for name, v in values.items():
        if v is not None and v <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive; got {v}")


def check_compatible(path: str, own: DataSpec, spec: DataSpec) -> None:
    """A checkpoint can be evaluated on (or attack) data of its own input shape and number of classes."""
    if (own.num_classes, own.channels, own.size) != (spec.num_classes, spec.channels, spec.size):
        raise UserError(
            f"{path} was trained on {own.name} ({own.num_classes} classes, "
            f"{own.channels}x{own.size}x{own.size}); it cannot be used on {spec.name} ({spec.num_classes} "
            f"classes, {spec.channels}x{spec.size}x{spec.size})"
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


def describe_foreign(source: str, weights: str | None,
                     normalize: tuple[Sequence[float], Sequence[float]] | None) -> str:
    """What a foreign model's row is, for the table's footnote: a figure must say which weights it scored, and
    a factory's model without ``--model-weights`` has whatever weights the
    factory gives it (random ones, often)."""
    if weights:
        digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:12]
        held = f"weights {weights} (sha256 {digest})"
    elif source.startswith("py:"):
        held = "the weights its factory gives it (no --model-weights)"
    else:
        held = "the weights saved in it"
    if normalize is None:
        inputs = "inputs in [0, 1] as they are (no --normalize)"
    else:
        mean, std = (", ".join(f"{v:.4g}" for v in values) for values in normalize)
        inputs = f"inputs normalised in front with mean ({mean}) and std ({std})"
    return f"{source}, {held}, {inputs}"


def _note_stderr(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def check_fits(label: str, model: torch.nn.Module, data: Dataset, device: torch.device) -> None:
    """A foreign model takes the data's images and gives one logit per class, or a one-line error says why."""
    spec = data.spec
    x = to_float(data.x_test[:2]).to(device)
    shape = f"{spec.channels}x{spec.size}x{spec.size}"
    try:
        with torch.no_grad():
            logits = model(x).logits
    except UserError:
        raise
    except Exception as exc:  # the user's forward failed on our images: say on what, in one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{label} cannot take the {shape} images of {spec.name}: {first}") from exc
    if logits.shape[1] != spec.num_classes:
        raise UserError(f"{label} gives {logits.shape[1]} outputs per image but {spec.name} has "
                        f"{spec.num_classes} classes")


class ModelLoader:
    """Checkpoints (or foreign models) and their test data for the evaluation
    commands (each dataset loaded once).

    ``features``: the command needs the last feature map and embedding (attention maps, k-NN, t-SNE),
    which only this project's models provide.
    """

    def __init__(self, options: EvalOptions, *, features: bool = False,
                 note: Callable[[str], None] = _note_stderr) -> None:
        self.options = options
        self.features = features
        self.note = note  #: where a remark on a model goes (not an error: the run goes on)
        self.foreign: dict[str, str] = {}  #: each foreign model's row label -> :func:`describe_foreign`
        self.device = resolve_device(options.device)
        self.datasets: dict[str, Dataset] = {}
        self.sources: dict[str, tuple[Classifier, DataSpec]] = {}
        self.taken: set[str] = set()
        self.configs: dict[str, TrainConfig] = {}  #: training config of each loaded checkpoint, by path
        self.factories = 0  #: ``py:`` models loaded so far (the next one takes ``model_weights[factories]``)

    def model(self, path: str,
              name: str | None = None) -> tuple[str, torch.nn.Module, Dataset, torch.Tensor, torch.Tensor]:
        """(row label, model, dataset, first ``n`` test images, their labels) of a checkpoint or foreign
        model; ``name`` replaces the row label (which is otherwise the run folder's or the factory's name)."""
        if name is not None:
            if name in self.taken:
                raise UserError(f"--name {name!r} is given to two rows; each row needs its own name")
            self.taken.add(name)
        if is_external(path):
            label, model, data = self._external(path, name)
        else:
            if self.options.model_weights or self.options.normalize:
                raise UserError("--model-weights and --normalize apply to py:, .pt2 and TorchScript models; "
                                f"{path} "
                                "is a checkpoint of this project, which holds its weights and normalisation")
            model, ckpt = load_model(path, self.device, self.options.weights)
            saved = self.configs[path] = ckpt.config
            data = self._data(self.options.dataset or saved.data.dataset, saved.data.data_dir)
            check_compatible(path, ckpt.data, data.spec)
            label = name or _label(path, self.taken)
            if self.options.weights != "last":  # the row says which weights it is (best: of which epoch)
                label += f" ({self.options.weights}, epoch {ckpt.epoch})"
        total = data.x_test.shape[0]
        n = total if self.options.n is None else min(self.options.n, total)
        return label, model, data, data.x_test[:n], data.y_test[:n]

    def _data(self, name: str, saved_dir: str | None = None) -> Dataset:
        if name not in self.datasets:
            self.datasets[name] = load_dataset(name, data_dir=self.options.data_dir or saved_dir)
        return self.datasets[name]

    def _factory_weights(self, path: str) -> str | None:
        """The ``--model-weights`` file of the ``py:`` model ``path`` (the
        next in order, or the one for all)."""
        if not path.startswith("py:") or not self.options.model_weights:
            return None
        given = self.options.model_weights
        index, self.factories = self.factories, self.factories + 1
        if len(given) == 1:
            return given[0]
        if index >= len(given):
            raise UserError(f"--model-weights gives {len(given)} files but there are more py: models; give "
                            "one file for all of them, or one per py: model in their order")
        return given[index]

    def _external(self, path: str, name: str | None = None) -> tuple[str, torch.nn.Module, Dataset]:
        """A model this project did not train, checked against the data it is evaluated on."""
        if self.features:
            raise UserError(f"{path}: this command needs a model's feature maps and embeddings, which only "
                            "this project's checkpoints provide; evaluate foreign models with eval, audit or "
                            "curves")
        if not self.options.dataset:
            raise UserError(f"{path} is a model of its own: say which data to evaluate it on with --dataset")
        if self.options.weights != "last":
            raise UserError("--weights best / ema choose among the weights of this project's runs; "
                            "give a foreign model's weights with --model-weights")
        data = self._data(self.options.dataset)
        given = self.options.normalize
        normalize = parse_normalize(given, (data.spec.mean, data.spec.std)) if given else None
        weights = self._factory_weights(path)
        if weights is None and self.options.model_weights and not path.startswith("py:"):
            raise UserError("--model-weights applies to py: factories only (an exported or TorchScript model "
                            "holds its weights)")
        model = load_external(path, weights=weights, device=self.device, normalize=normalize)
        target = path[3:].rpartition(":")[2] if path.startswith("py:") else Path(path).stem
        label = name or _label(target, self.taken)
        check_fits(label, model, data, self.device)
        self.foreign[label] = describe_foreign(path, weights, normalize)
        if path.startswith("py:") and not weights:
            self.note(f"{label}: no --model-weights, so {path} is evaluated with the weights its factory "
                      "gives it (random ones unless the factory loads some)")
        return label, model, data

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
        return self.options.eps if self.options.eps is not None else dataset_eps(data.spec, self.options.norm)
