"""Models this project did not train: any ``nn.Module`` from images in [0, 1] to logits, under our contract.

Attacks and evaluation expect :class:`~agkd_bml.models.base.ModelOutput`; :class:`External` gives a
foreign model that contract (logits only: its features are unknown, so the analyses that need attention
maps or embeddings refuse it). Three sources are read:

- ``py:FILE.py:FACTORY`` or ``py:package.module:FACTORY``: a function returning the module. This imports
  and runs the user's code, by design; our own checkpoints never execute code (``weights_only=True``).
- an exported program (``torch.export.save``, ``.pt2``): the graph and weights without the code.
- a TorchScript archive (``torch.jit.save``; deprecated in PyTorch 2.14, still common). Its TorchScript
  code runs when called, like any model's forward.

``normalize`` wraps a model that expects normalised inputs, so users need not edit it. """

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agkd_bml.errors import UserError
from agkd_bml.fileio import unreadable
from agkd_bml.models.base import Classifier, ModelOutput, normalise

PY_PREFIX = "py:"


class External(nn.Module):
    """A foreign model with an optional normalisation in front; its forward returns :class:`ModelOutput`.

    ``features`` and ``embedding`` are empty (0 channels): only the logits of a foreign model are known. """

    def __init__(self, net: nn.Module, *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.mean: torch.Tensor  # buffers, registered below when given
        self.std: torch.Tensor
        self.net = net
        self.normalized = mean is not None
        if mean is not None and std is not None:
            self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """The wrapped model's logits (see :func:`output_logits`), with empty features and embedding."""
        if self.normalized:
            x = normalise(x, self.mean, self.std)
        logits = output_logits(self.net(x))
        empty = logits.new_zeros(logits.shape[0], 0)
        return ModelOutput(logits, empty.view(logits.shape[0], 0, 1, 1), empty)

    def train(self, mode: bool = True) -> External:
        """Set the mode of the wrapped model; an exported program keeps the mode it was exported in."""
        self.training = mode
        with contextlib.suppress(NotImplementedError):  # torch.export programs refuse .train() / .eval()
            self.net.train(mode)
        return self


def as_model(model: nn.Module, *,
             normalize: tuple[Sequence[float], Sequence[float]] | None = None) -> nn.Module:
    """The one adapter at the attack boundary: any module becomes one whose forward returns ``ModelOutput``.

    Our own models (and ones already adapted) pass through unchanged; anything else (a module returning a
    tensor, a tuple or list led by the logits, a dict or an object with ``logits``) is wrapped in
    :class:`External`, so attacks read ``model(x).logits`` whatever the user's model returns.
    ``normalize=(mean, std)`` puts a normalisation in front of a model that expects normalised inputs. """
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if normalize is None and (isinstance(inner, (Classifier,
                                                 External)) or getattr(inner, "returns_model_output", False)):
        return model
    mean, std = normalize if normalize is not None else (None, None)
    return External(inner, mean=mean, std=std)


def output_logits(out: Any) -> torch.Tensor:
    """The logits in a model's output: a tensor, ``.logits`` (Hugging Face
    style), ``["logits"]`` or ``out[0]``."""
    if isinstance(out, torch.Tensor):
        logits = out
    elif isinstance(getattr(out, "logits", None), torch.Tensor):
        logits = out.logits
    elif isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        logits = out["logits"]
    elif isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        logits = out[0]
        if logits.ndim != 2:
            shapes = ", ".join(str(tuple(o.shape)) if isinstance(o, torch.Tensor) else type(o).__name__ for o
                               in out)
            raise UserError(f"the model returned a tuple of {shapes}; its first element must be the logits "
                            "(batch, classes): wrap the network in a module in your factory whose forward "
                            "returns them")
    else:
        raise UserError(f"the model returned {type(out).__name__}; it must return logits (a tensor), a tuple "
                        "that starts with them, or an object with .logits")
    if logits.ndim != 2:
        raise UserError(f"the model's logits have shape {tuple(logits.shape)}; expected (batch, classes)")
    return logits


def is_external(source: str) -> bool:
    """Whether ``source`` names a foreign model (a factory, an exported program or TorchScript)."""
    if source.startswith(PY_PREFIX) or source.endswith(".pt2"):
        return True
    return Path(source).is_file() and _is_torchscript(Path(source))


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive holds ``<name>/code/`` and ``constants.pkl``; a ``torch.save`` file does not."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def load_external(source: str, *, weights: str | None = None, device: torch.device | str = "cpu",
                  normalize: tuple[Sequence[float], Sequence[float]] | None = None) -> External:
    """The model named by ``source`` (see the module docstring), with
    ``weights`` (a state dict file) loaded."""
    if source.startswith(PY_PREFIX):
        net = _from_factory(source[len(PY_PREFIX):])
    elif weights:
        raise UserError("--model-weights applies to py: factories only (an exported or TorchScript model "
                        "holds its weights)")
    elif source.endswith(".pt2"):
        net = _read(source, _exported_module, "an exported program (torch.export.save)")
    else:
        net = _read(source, lambda p: torch.jit.load(p, map_location="cpu"), "a TorchScript archive")
    if weights:
        _load_weights(net, weights)
    mean, std = normalize if normalize else (None, None)
    return External(net, mean=mean, std=std).to(device).eval()


class FixedBatch(nn.Module):
    """Runs a model that takes exactly ``batch`` images on any number of them, ``batch`` at a time.

    ``torch.export`` fixes every dimension it is not told is dynamic, the batch included, so a program
    exported with one example image accepts one image per call. Attacks call the model on batches of every
    size; the last chunk is padded with copies of its last image and the padding's logits are dropped, so each
    image's logits and input gradient are the ones the program gives it alone. """

    def __init__(self, net: nn.Module, batch: int) -> None:
        super().__init__()
        self.net, self.batch = net, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for chunk in x.split(self.batch):
            short = self.batch - chunk.shape[0]
            padded = torch.cat([chunk,
                                chunk[-1:].detach().expand(short, *chunk.shape[1:])]) if short else chunk
            outs.append(output_logits(self.net(padded))[: chunk.shape[0]])
        return torch.cat(outs)


def _exported_module(path: str) -> nn.Module:
    """The module of an exported program, wrapped in :class:`FixedBatch` when its batch size is static."""
    program = torch.export.load(path)
    net = program.module()
    first = next((node for node in program.graph.nodes if node.op == "placeholder"
                  and node.name in program.graph_signature.user_inputs), None)
    shape = getattr(first.meta.get("val"), "shape", None) if first is not None else None
    if shape and isinstance(shape[0], int):  # a static batch; a dynamic one is a SymInt
        print(f"note: {path} was exported for batches of exactly {shape[0]} image(s), so it runs {shape[0]} "
              "at a time (slower); export with dynamic_shapes=({0: torch.export.Dim('batch')},) to run whole "
              "batches", file=sys.stderr)
        return FixedBatch(net, int(shape[0]))
    return net


def _read(path: str, read: Any, what: str) -> nn.Module:
    if not Path(path).is_file():
        raise UserError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):  # both formats are zip archives; say so before torch logs a traceback
        raise UserError(f"{path} is not {what}: not a zip archive")
    quiet = logging.getLogger("torch.export")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # torch.export logs a full traceback before raising on a foreign file
    try:
        return read(path)
    except Exception as exc:  # torch raises many kinds for a file of the wrong kind; name the file instead
        raise UserError(f"{path} is not {what}: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    finally:
        quiet.setLevel(level)


def _importable(folder: Path) -> None:
    """Put ``folder`` first on ``sys.path`` (once), as Python does for a
    script's folder and ``python -m`` for the
    working directory: a factory file imports the model code beside it, and is left able to (lazy imports)."""
    entry = str(folder.resolve())
    if entry not in sys.path:
        sys.path.insert(0, entry)


def _from_factory(spec: str) -> nn.Module:
    """Import ``FILE.py:FACTORY`` or ``module:FACTORY`` and call the factory (user code runs here)."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise UserError(f"py:{spec}: expected py:FILE.py:FACTORY or py:package.module:FACTORY")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise UserError(f"py:{spec}: no such file {target}")
        _importable(path.parent)
        mod_spec = importlib.util.spec_from_file_location(f"agkd_bml_user_{path.stem}", path)
        if mod_spec is None or mod_spec.loader is None:
            raise UserError(f"py:{spec}: {target} cannot be imported")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[mod_spec.name] = module  # dataclasses and pickling look their module up here
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:
            raise UserError(f"py:{spec}: importing {target} failed: {type(exc).__name__}: {exc}") from exc
    else:
        _importable(Path.cwd())
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise UserError(f"py:{spec}: cannot import module {target}: {exc}") from exc
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UserError(f"py:{spec}: {target} has no function {name}")
    try:
        net = factory()
    except Exception as exc:
        raise UserError(f"py:{spec}: {name}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise UserError(f"py:{spec}: {name}() returned {type(net).__name__}, not a torch.nn.Module")
    return net


#: The keys under which training scripts commonly save a state dict, with
#: epoch, accuracy and optimizer beside it.
_STATE_KEYS = ("state_dict", "model", "net")


def bare_state_dict(saved: Any) -> dict[str, torch.Tensor] | None:
    """The state dict in what ``torch.load`` read (itself, or under one of :data:`_STATE_KEYS`), or None."""
    for key in _STATE_KEYS:
        if isinstance(saved, dict) and isinstance(saved.get(key), dict):
            saved = saved[key]
    if isinstance(saved, dict) and saved and all(isinstance(v, torch.Tensor) for v in saved.values()):
        return saved
    return None


#: Key prefixes that wrappers add: ``nn.DataParallel`` / DDP (``module.``) and
#: ``torch.compile`` (``_orig_mod.``).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _unwrapped(state: dict[str, Any], expected: set[str]) -> dict[str, Any]:
    """``state`` with its keys re-rooted to fit the model's: the prefix that a wrapper added to every key
    removed when the model's own keys lack it (weights saved from a DataParallel model, as most robustness
    code bases save them), and, when the factory wraps the network in a module of
    its own (to pick the logits out of a
    tuple, say) so that every key of the model starts with one attribute name, that name put in front."""
    stripped = True
    while stripped and state:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in expected):
                state, stripped = {k[len(prefix):]: v for k, v in state.items()}, True
    roots = {k.partition(".")[0] for k in expected}
    if set(state) != expected and len(roots) == 1 and all("." in k for k in expected):
        rooted = {f"{next(iter(roots))}.{k}": v for k, v in state.items()}
        if set(rooted) == expected:
            return rooted
    return state


def _mismatch(state: dict[str, Any], expected: set[str], error: RuntimeError) -> str:
    """Why a state dict does not fit, in one line: the keys it lacks and has in excess, a few of each."""
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    if not missing and not extra:  # the same keys: a shape differs
        return next((ln.strip() for ln in str(error).splitlines()[1:] if "size mismatch" in ln),
                    str(error).splitlines()[0])
    return "; ".join(part for part in (f"{len(missing)} key(s) missing: {some(missing)}" if missing else "",
                                       f"{len(extra)} unexpected: {some(extra)}" if extra else "") if part)


def _load_weights(net: nn.Module, path: str) -> None:
    """Load a state dict (``weights_only=True``; found by :func:`bare_state_dict`, its keys re-rooted by
    :func:`_unwrapped`)."""
    if not Path(path).is_file():
        raise UserError(f"--model-weights: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"--model-weights: {unreadable(path, exc)}") from exc
    found = bare_state_dict(state)
    if found is None:
        raise UserError(f"--model-weights {path} holds {type(state).__name__}, not a state dict")
    state = found
    expected = set(net.state_dict())
    state = _unwrapped(state, expected)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"--model-weights {path} does not fit the model: "
                        f"{_mismatch(state, expected, exc)}") from exc


def parse_normalize(text: str,
                    dataset_stats: tuple[Sequence[float],
                                         Sequence[float]]) -> tuple[list[float], list[float]]:
    """``--normalize``: ``dataset`` (the data's own mean and std), ``M,S`` or ``M1,..,Mc,S1,..,Sc``."""
    if text == "dataset":
        return list(dataset_stats[0]), list(dataset_stats[1])
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or len(values) % 2 or any(s <= 0 for s in values[len(values) // 2:]):
        raise UserError(f"--normalize {text!r}: give `dataset`, MEAN,STD or one mean per channel then one "
                        "std per channel (e.g. 0.4914,0.4822,0.4465,0.2471,0.2435,0.2616), stds positive")
    half = len(values) // 2
    return values[:half], values[half:]
