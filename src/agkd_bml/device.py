"""Device selection: CUDA when present, CPU otherwise, overridable by ``--device``."""

from __future__ import annotations

import platform
from pathlib import Path

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


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: a CUDA GPU with bf16, or
    a CPU with AVX512-BF16 or AMX-BF16.

    Elsewhere PyTorch emulates bf16 on the CPU, and a bf16 training step costs more than a float32 one
    (1.7x for the small CNN's PGD-AT-7 on a 2-core Ice Lake without AVX512-BF16, where it is 2.2x faster
    on a core that has it).
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    caps = torch.cpu.get_capabilities()
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's word for it: timings differ by CPU, and
    whether bf16 is native changes which precision is faster, so a timing table names it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """What the device is, for timing tables: the GPU's name, or the CPU's model, thread count and bf16."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    bf16 = "native bf16" if native_bf16(device) else "bf16 emulated"
    return f"cpu {cpu_model()} ({torch.get_num_threads()} threads, {bf16})"
