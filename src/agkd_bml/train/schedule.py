"""Learning-rate schedules by ``--lr-schedule`` name, and whether each steps per batch or per epoch."""

from __future__ import annotations

import numpy as np
import torch

from agkd_bml.config import TrainConfig

#: the cyclic schedule peaks at this fraction of the epochs (Wong et al. 2020: ``epochs * 2 // 5``)
CYCLIC_PEAK = 2 / 5


def lr_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer,
                 steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler of ``cfg.optim.lr_schedule``; :func:`per_step` says when the trainer steps it.

    ``cyclic`` is the triangle of fast adversarial training: linear from 0 to ``--lr`` at epoch
    ``--cyclic-peak`` (default ``epochs * 2 // 5``), back to 0 at the end, evaluated after each batch (the lr
    of step k is that of ``(k + 1) / steps_per_epoch`` epochs, as in their code). """
    if cfg.optim.lr_schedule == "cyclic":
        total = cfg.optim.epochs * steps_per_epoch
        peak = (round(cfg.optim.cyclic_peak * steps_per_epoch) if cfg.optim.cyclic_peak is not None
                else int(cfg.optim.epochs * CYCLIC_PEAK) * steps_per_epoch)
        corners_x, corners_y = [0, peak, total], [0.0, 1.0, 0.0]
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda k: float(np.interp(k + 1, corners_x, corners_y)))
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.optim.milestones,
                                                gamma=cfg.optim.gamma)


def per_step(cfg: TrainConfig) -> bool:
    """Whether the schedule advances after every batch (cyclic) rather than after every epoch."""
    return cfg.optim.lr_schedule == "cyclic"
