"""Running a model the way an attack must: eval mode and frozen parameters, both restored afterwards.

Attacks, training steps and analyses all borrow a model for a while; these context managers give it
back exactly as it was (train/eval mode, ``requires_grad`` of each parameter), whatever happens inside.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode (BatchNorm frozen) and restore the train/eval mode of each of its modules.

    Each module's own mode comes back, not the top module's for all: a user's wrapper left in train mode
    (any fresh ``nn.Module`` is) around a model in eval mode must not put that model into train mode.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad for the duration, so a ``.backward()`` cannot fill their ``.grad``."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
