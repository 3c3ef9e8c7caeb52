"""Checkpoints: written atomically, read with ``weights_only=True`` so that no pickled code ever runs.

On disk a checkpoint is a plain dict of tensors, numbers, strings, lists and dicts: the model, optimizer and
scheduler states, the epoch, the run's config, the dataset spec (enough to rebuild the model) and a SHA-256 of
the model weights, checked on every load. In code it is a :class:`Checkpoint` record, so a misspelt key is an
attribute error where it is written, not a ``KeyError`` in another command. A run directory keeps the last two
(``last.pt``, ``prev.pt``), so a damaged newest checkpoint still leaves one to resume from. Loading a model
for evaluation needs only this module, not the trainer. """

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agkd_bml.config import TrainConfig
from agkd_bml.data import DataSpec
from agkd_bml.errors import UserError
from agkd_bml.fileio import atomic_write, unreadable
from agkd_bml.migration import load_config
from agkd_bml.models import Classifier, build_model
from agkd_bml.models.external import bare_state_dict

FORMAT = "agkd-bml/1"
LAST, PREV, BEST = "last.pt", "prev.pt", "best.pt"
#: Which weights of a run to use: the last epoch's, the best on held-out data (``--val-split``), or the EMA.
WEIGHTS = ("last", "best", "ema")


def weights_checksum(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict, in order."""
    h = hashlib.sha256()
    for name, t in state_dict.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(kw_only=True)
class Checkpoint:
    """What a checkpoint holds; the training state is empty ({}) in one written for evaluation only."""

    arch: str
    data: DataSpec
    config: TrainConfig  #: the run's configuration (stored flat; read back through :mod:`agkd_bml.migration`)
    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)  #: absent before mixed precision existed
    metrics: dict[str, Any] = field(default_factory=dict)  #: the last epoch's line of ``metrics.jsonl``
    ema: dict[str, Any] = field(default_factory=dict)  #: ``--ema``: decay, updates and the averaged weights
    #: ``--val-split``: epoch and held-out PGD of ``best.pt``
    best: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The on-disk form (format tag and weights checksum included)."""
        return {"format": FORMAT, "arch": self.arch, "data": self.data.to_dict(),
                "config": self.config.to_dict(),
                "epoch": self.epoch, "model": self.model, "optimizer": self.optimizer,
                "scheduler": self.scheduler,
                "scaler": self.scaler, "metrics": self.metrics, "ema": self.ema, "best": self.best,
                "checksum": weights_checksum(self.model),
                "ema_checksum": weights_checksum(self.ema["weights"]) if self.ema else ""}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Checkpoint:
        """The record of an on-disk dict, written by this version or an earlier one (missing parts empty)."""
        return cls(arch=d["arch"], data=DataSpec.from_dict(d["data"]), config=load_config(d["config"]),
                   epoch=int(d["epoch"]),
                   model=d["model"],
                   **{k: d.get(k) or {} for k in ("optimizer", "scheduler", "scaler", "metrics", "ema",
                                                  "best")})


def save_checkpoint(ckpt: Checkpoint, run_dir: Path) -> Path:
    """Save ``ckpt`` as ``run_dir/last.pt``, keeping the previous one as ``prev.pt``.

    A write that fails (a full disk ends ``torch.save`` in an internal ``enforce fail`` error) becomes one
    line that names the last good checkpoint and how to go on: nothing is lost, ``prev.pt`` holds the epoch
    before and ``--resume`` continues from it.
    """
    last = run_dir / LAST
    if last.exists():
        os.replace(last, run_dir / PREV)
    payload = ckpt.to_dict()
    try:
        atomic_write(last, lambda f: torch.save(payload, f))
    except (RuntimeError, UserError) as exc:
        free = shutil.disk_usage(run_dir).free / 2**20
        good = run_dir / PREV if (run_dir / PREV).exists() else None
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"could not write the checkpoint of epoch {ckpt.epoch} to {last} ({reason}; "
                        f"{free:.0f} MiB free there: is the disk full?). "
                        + (f"The last good checkpoint is {good} (epoch {ckpt.epoch - 1}): free some space, "
                           "then run the same train command with --resume." if good else
                           "No earlier checkpoint exists: free some space and start again.")) from exc
    return last


def save_best(ckpt: Checkpoint, run_dir: Path) -> Path:
    """Save ``ckpt`` (weights for evaluation, no training state) as ``run_dir/best.pt``, atomically."""
    best = run_dir / BEST
    payload = ckpt.to_dict()
    atomic_write(best, lambda f: torch.save(payload, f))
    return best


def resolve_weights(path: str | Path, weights: str) -> Path:
    """The file that holds ``weights`` of a run directory or checkpoint (EMA weights live in ``last.pt``)."""
    if weights not in WEIGHTS:
        raise UserError(f"unknown weights {weights!r}; choose one of: {', '.join(WEIGHTS)}")
    p = Path(path)
    if weights != "best" or p.name == BEST:
        return resolve_path(p)
    best = (p if p.is_dir() else p.parent) / BEST
    if not best.is_file():
        raise UserError(f"{path} has no {BEST}: only runs trained with --val-split N keep the best weights")
    return best


def resolve_path(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its newest checkpoint)."""
    p = Path(path)
    if p.is_dir():
        for name in (LAST, PREV):
            if (p / name).is_file():
                return p / name
        if (p / BEST).is_file():  # a committed reproduction keeps the evaluated weights only
            raise UserError(f"run directory {str(path)!r} keeps only its best weights ({BEST}, not {LAST}): "
                            "use --weights best, or give the file")
        raise UserError(f"run directory {str(path)!r} holds no checkpoint ({LAST} or {PREV})")
    if not p.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    return p


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint safely: tensors and plain data only; anything else is refused unexecuted."""
    p = resolve_path(path)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # not a pickle that names classes or functions: not a pickle at all
        if "global" not in str(exc).lower():
            raise UserError(f"{p} is not an agkd-bml checkpoint, an exported program (.pt2) or a TorchScript "
                            "archive: the weights-only torch.load cannot read it (nothing in it was "
                            "run)") from exc
        raise UserError(unreadable(p, exc)) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(unreadable(p, exc)) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        if bare_state_dict(ckpt) is not None:
            raise UserError(f"{p} holds bare weights (a state dict), not an agkd-bml checkpoint: give the "
                            "model as py:FILE.py:FACTORY (a function that builds it) with --model-weights "
                            f"{p} and --dataset")
        raise UserError(f"{p} is not an agkd-bml checkpoint (no '{FORMAT}' format tag)")
    if ckpt.get("checksum") != weights_checksum(ckpt["model"]):
        raise UserError(f"checkpoint {p} is corrupt: its weights do not match their SHA-256 checksum")
    if ckpt.get("ema") and ckpt.get("ema_checksum") != weights_checksum(ckpt["ema"]["weights"]):
        raise UserError(f"checkpoint {p} is corrupt: its EMA weights do not match their SHA-256 checksum")
    try:
        return Checkpoint.from_dict(ckpt)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{p} is an agkd-bml checkpoint with a missing or malformed part ({exc})") from exc


def newest_valid(run_dir: Path, log: Any = print) -> Checkpoint | None:
    """The newest checkpoint of ``run_dir`` that loads and passes its checksum.

    Returns None when the directory has no checkpoint; raises :class:`UserError` when it has some but none is
    valid (a run is never silently restarted over checkpoints that could not be read). """
    problems = []
    for name in (LAST, PREV):
        if not (run_dir / name).is_file():
            continue
        try:
            ckpt = load_checkpoint(run_dir / name)
        except UserError as exc:
            log(f"skipping {run_dir / name}: {exc}")
            problems.append(str(exc))
            continue
        log(f"resuming from {run_dir / name} (epoch {ckpt.epoch})")
        return ckpt
    if problems:
        raise UserError(f"no valid checkpoint to resume in {run_dir} ({'; '.join(problems)}); use "
                        "--overwrite to start again")
    return None


def load_model(
    path: str | Path, device: torch.device | str = "cpu", weights: str = "last"
) -> tuple[Classifier, Checkpoint]:
    """Rebuild the model of a checkpoint (architecture and dataset spec are stored in it), in eval mode.

    ``weights``: ``last`` (the newest checkpoint), ``best`` (``best.pt``) or ``ema`` (the average kept
    in the newest checkpoint by ``--ema``).
    """
    ckpt = load_checkpoint(resolve_weights(path, weights))
    if weights == "ema" and not ckpt.ema:
        raise UserError(f"{path} has no EMA weights: train with --ema DECAY to keep them")
    model = build_model(ckpt.arch, ckpt.data)
    try:
        model.load_state_dict(ckpt.ema["weights"] if weights == "ema" else ckpt.model)
    except RuntimeError as exc:
        raise UserError(f"checkpoint {path}: its weights do not fit a {ckpt.arch} for "
                        f"{ckpt.data.name}") from exc
    return model.to(device).eval(), ckpt
