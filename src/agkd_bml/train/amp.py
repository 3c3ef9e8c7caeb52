"""Automatic mixed precision: which autocast dtype, and a GradScaler only where fp16 needs one.

bf16 keeps fp32's exponent range, so it needs no loss scaling; fp16 does. Attacks stay exact under
autocast: their iterates, gradients w.r.t. the input and the projection are float32 (the input is
float32), only the network's matmuls run in low precision, and losses are upcast (``attacks.pgd.upcast``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from agkd_bml.device import native_bf16
from agkd_bml.errors import UserError

AMP_CHOICES = ("auto", "bf16", "native-bf16", "fp16", "off")
__all__ = ["AMP_CHOICES", "amp_dtype", "autocast", "grad_scaler", "native_bf16", "precision_name"]


def amp_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp choice`` on ``device`` (None: full precision).

    ``auto`` is bf16 on a CUDA device that supports it, fp16 on an older one, and off on the CPU (where
    bf16 autocast is slower than fp32 on most machines); ask for ``bf16`` explicitly there.
    ``native-bf16`` is bf16 where the hardware computes it (:func:`native_bf16`) and full precision
    elsewhere: the choice for a recipe that must run fast on whatever machine resumes it.
    """
    if choice not in AMP_CHOICES:
        raise UserError(f"unknown --amp {choice!r}; choose one of: {', '.join(AMP_CHOICES)}")
    if choice == "native-bf16":
        return torch.bfloat16 if native_bf16(device) else None
    if choice == "off" or (choice == "auto" and device.type != "cuda"):
        return None
    if choice == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if choice == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
    return torch.bfloat16 if choice == "bf16" else torch.float16


def precision_name(dtype: torch.dtype | None) -> str:
    """How an epoch's passes ran, as recorded in ``metrics.jsonl``: ``bf16``, ``fp16`` or ``fp32``."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32") if dtype is not None else "fp32"


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context without AMP."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A GradScaler that is enabled only for fp16 (a disabled scaler passes everything through)."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
