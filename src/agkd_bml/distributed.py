"""Multi-process jobs through ``torchrun`` (nccl on CUDA, gloo on CPU): training with DDP, and evaluation.

``torchrun --nproc_per_node=N -m agkd_bml train|eval ...`` sets WORLD_SIZE / RANK / LOCAL_RANK; everything
else is here: the process group, the rank's device, and the few collectives the training loop and the
sharded evaluation need. Rank 0 alone logs and writes files; every rank reads them on a resume.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from agkd_bml.errors import UserError


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False  #: this process created the process group (and destroys it)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> tuple[Dist, str]:
    """Join the torchrun job if there is one; return it and the device this rank should use."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    cuda = torch.cuda.is_available() and not device.startswith("cpu")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return Dist(dist.get_rank(), dist.get_world_size(), owns), device


def current() -> Dist:
    """The job this process is part of (rank 0 of 1 when no process group is up)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Dist(dist.get_rank(), dist.get_world_size())
    return Dist()


def gather_objects(obj: object, d: Dist) -> list[object]:
    """``obj`` of every rank, in rank order, on every rank (CPU tensors and plain Python values)."""
    if not d.enabled:
        return [obj]
    out: list[object] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def teardown(d: Dist) -> None:
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (so all ranks skip or stop together)."""
    if not d.enabled:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_over_ranks(values: list[float], d: Dist, device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks."""
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def check_in_sync(model: torch.nn.Module, d: Dist, device: torch.device, where: str) -> None:
    """Raise if the ranks' parameters differ (a float64 fingerprint of every parameter, compared exactly).

    Buffers are left out: BatchNorm's running statistics are per rank until DDP broadcasts rank 0's at the
    next forward, and rank 0's are the ones checkpointed.
    """
    if not d.enabled:
        return
    with torch.no_grad():
        tensors = list(model.parameters())
        weights = torch.arange(1, len(tensors) + 1, dtype=torch.float64, device=device)
        fp = (torch.stack([t.double().sum() for t in tensors]) * weights).sum().reshape(1)
    gathered = [torch.zeros_like(fp) for _ in range(d.world)]
    dist.all_gather(gathered, fp)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise UserError(f"ranks hold different weights {where}: {[float(g) for g in gathered]}")
