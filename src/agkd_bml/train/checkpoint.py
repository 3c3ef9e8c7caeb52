"""Checkpoints: written atomically, read with ``weights_only=True`` so that no pickled code ever runs.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts: the model, optimizer and
scheduler states, the epoch, the run's config and the dataset spec (enough to rebuild the model).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from agkd_bml.data import DataSpec
from agkd_bml.errors import UserError
from agkd_bml.fileio import atomic_write
from agkd_bml.models import Classifier, build_model

FORMAT = "agkd-bml/1"
LAST, PREV = "last.pt", "prev.pt"


def save_checkpoint(state: dict[str, Any], run_dir: Path) -> Path:
    """Save ``state`` as ``run_dir/last.pt``, keeping the previous one as ``prev.pt``."""
    last = run_dir / LAST
    if last.exists():
        os.replace(last, run_dir / PREV)
    atomic_write(last, lambda f: torch.save({"format": FORMAT, **state}, f))
    return last


def resolve_path(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its newest checkpoint)."""
    p = Path(path)
    if p.is_dir():
        for name in (LAST, PREV):
            if (p / name).is_file():
                return p / name
        raise UserError(f"run directory {str(path)!r} holds no checkpoint ({LAST} or {PREV})")
    if not p.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    return p


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely: tensors and plain data only; anything else is refused unexecuted."""
    p = resolve_path(path)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"refusing to load {p}: it contains pickled objects other than tensors and plain data "
            "(possibly code); only weights-only checkpoints are accepted"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"cannot read checkpoint {p}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{p} is not an agkd-bml checkpoint (no '{FORMAT}' format tag)")
    return ckpt


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[Classifier, dict[str, Any]]:
    """Rebuild the model of a checkpoint (architecture and dataset spec are stored in it), in eval mode."""
    ckpt = load_checkpoint(path)
    spec = DataSpec.from_dict(ckpt["data"])
    model = build_model(ckpt["arch"], spec)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
