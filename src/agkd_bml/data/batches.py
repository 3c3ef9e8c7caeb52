"""Batching of in-memory uint8 data and the per-class index used to draw backward samples."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from agkd_bml.data.augment import Augment


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] -> float32 in [0, 1] (the models' input convention); float images, already
    in [0, 1] (the Python API accepts them), come back as a float32 copy."""
    return x.to(torch.float32, copy=True) if x.is_floating_point() else x.float().div_(255.0)


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    device: torch.device,
    order: torch.Generator | None = None,
    augment: Augment | None = None,
    augment_generator: torch.Generator | None = None,
    drop_last: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images in [0,1], labels)`` batches on ``device`` from uint8 tensors held in memory.

    With ``order`` (a CPU generator) the data are shuffled by a permutation drawn from it, so a run
    seeded per epoch sees the same batches after a restart; without it they come in order. Images
    travel to the device as uint8 (4x less traffic) and are converted and augmented there.

    ``shard=(rank, world)`` gives rank ``rank`` every ``world``-th index of the (shuffled) order, cut to an
    equal share: with a per-rank ``batch_size`` of B / world, step k of all ranks together covers exactly the
    k-th global batch of B a single process would see. """
    rank, world = shard
    perm: torch.Tensor | None
    if world > 1:
        full = torch.randperm(x.shape[0], generator=order) if order is not None else torch.arange(x.shape[0])
        share = x.shape[0] // world
        perm = full[rank::world][:share]
    else:
        perm = torch.randperm(x.shape[0], generator=order) if order is not None else None
    n = perm.shape[0] if perm is not None else x.shape[0]
    stop = n - n % batch_size if drop_last else n
    pin = device.type == "cuda"
    for start in range(0, stop, batch_size):
        if perm is None:
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = perm[start : start + batch_size]
            xb, yb = x[idx], y[idx]
        if pin:
            xb, yb = xb.pin_memory(), yb.pin_memory()
        xb = to_float(xb.to(device, non_blocking=True))
        yb = yb.to(device, non_blocking=True)
        if augment is not None:
            xb = augment(xb, augment_generator)
        yield xb, yb


class ClassIndex:
    """Indices of the training set grouped by class, to draw a random image of any class in one gather.

    Kept as one sorted index array plus per-class offsets and counts on the data's device, so drawing ``B``
    samples of ``B`` classes is a few tensor ops: no Python loop over samples, no host-device sync. """

    def __init__(self, labels: torch.Tensor, num_classes: int) -> None:
        labels = labels.long()
        self.order = torch.argsort(labels, stable=True)
        self.counts = torch.bincount(labels, minlength=num_classes)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts
        self.missing = [int(c) for c in torch.nonzero(self.counts == 0).flatten()]

    def sample(self, classes: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return one uniformly random index of class ``classes[i]`` for
        every ``i`` (classes present only)."""
        counts = self.counts[classes]
        u = torch.rand(classes.shape[0], device=classes.device, generator=generator, dtype=torch.float64)
        pos = self.offsets[classes] + (u * counts).long().clamp_max_(counts - 1)
        return self.order[pos]


class ImageSampler:
    """Draws, for each requested class, a random augmented training image of that class.

    AGKD-BML needs, for each sample, a clean image of its most confusing class (the backward sample). The
    uint8 training set lives on the training device, so the draw is one gather plus augmentation. """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, num_classes: int, augment: Augment | None,
        device: torch.device
    ) -> None:
        self.index = ClassIndex(y.to(device), num_classes)
        if self.index.missing:
            raise ValueError(
                f"the training set has no image of class(es) {self.index.missing}; "
                "use more training images (--train-limit)"
            )
        self.x = x.to(device)
        self.y = y.to(device)
        self.augment = augment

    def draw(self, classes: torch.Tensor,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(images in [0, 1], labels)`` with ``labels == classes``."""
        idx = self.index.sample(classes, generator)
        images = to_float(self.x[idx])
        if self.augment is not None:
            images = self.augment(images, generator)
        return images, self.y[idx]
