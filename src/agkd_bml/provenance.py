"""What produced a result: package and library versions, device, the project's commit, the data's fingerprint.

Every result file (``metrics.jsonl``, ``eval.json``) carries this record, so a number read months later still
says which code, which PyTorch, which machine and which exact data made it. """

from __future__ import annotations

import hashlib
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 of tensors' dtypes, shapes and bytes: the identity of a model's weights or of a data set."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def source_commit() -> str | None:
    """The git commit of the checkout the package runs from (``+dirty`` with uncommitted changes); None for an
    installed wheel or where git is missing."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--",
                                "."],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def provenance(device: torch.device | str | None = None, data: str | None = None) -> dict[str, Any]:
    """The record of what produced a result: ``data`` is a fingerprint
    (:func:`tensor_digest`) of its images."""
    from agkd_bml import __version__
    from agkd_bml.device import device_name

    # plain strings only: the record also goes into checkpoints, which load with weights_only=True
    return {"agkd_bml": __version__, "torch": str(torch.__version__), "cuda": torch.version.cuda,
            "python": platform.python_version(), "device": device_name(torch.device(device or "cpu")),
            "commit": source_commit(), **({"data_sha256": data} if data else {})}
