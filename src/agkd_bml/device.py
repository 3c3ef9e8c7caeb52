"""Device selection: CUDA when present, CPU otherwise, overridable by ``--device``."""

from __future__ import annotations

import torch

from agkd_bml.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """Return the device for ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; fail clearly when CUDA is missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but CUDA is not available here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"invalid --device {name!r}; use auto, cpu, cuda or cuda:N") from exc


def device_name(device: torch.device) -> str:
    """What the device is, for timing tables: the GPU's name, or the CPU with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
