"""Saved training configurations of every release, read back as today's :class:`~agkd_bml.config.TrainConfig`.

A run's ``config.yaml`` and each of its checkpoints store the flat record (:meth:`TrainConfig.to_dict`). What
changed between releases is written down here, and only here: a key renamed (:data:`RENAMED`), a key added
after a record was written (:data:`ADDED`, with the value every run before it trained with), and a key whose
resolved value was not yet recorded (:data:`UNRECORDED`, with what those runs resolved it to). A key a saved
record lacks and that is in none of them had its default of today then too. The method's hyper-parameters a
record lacks are filled in by :func:`agkd_bml.train.settings.complete`, which knows the methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from agkd_bml.config import TrainConfig
from agkd_bml.errors import UserError

#: old flat name -> today's (none has been renamed yet: a rename adds its line here, not a branch elsewhere)
RENAMED: dict[str, str] = {}
#: flat name -> (the release that added it, the value of every run written before it)
ADDED: dict[str, tuple[str, Any]] = {
    "lr_schedule": ("0.2.0", "multistep"),  # the cyclic schedule of fast AT came with 0.2.0
    "tensorboard": ("0.2.0", False),
    "cyclic_peak": ("0.3.0", None),  # None: the peak at epochs * 2 // 5, the only one before
}

#: flat name -> what a run saved with it ``null`` resolved it to, from the run's eps: the training attack's
#: step was recorded from 0.2.0 on, and every run before trained with steps of eps/4, the only default then
UNRECORDED: dict[str, Callable[[float], float]] = {
    "step_size": lambda eps: eps / 4,
}


def migrate(values: Mapping[str, Any]) -> dict[str, Any]:
    """The flat record of today for a saved one: renamed keys under their new names, added keys filled in."""
    out = {RENAMED.get(k, k): v for k, v in values.items()}
    for name, (_release, before) in ADDED.items():
        out.setdefault(name, before)
    return out


def load_config(values: Mapping[str, Any]) -> TrainConfig:
    """The typed record of a saved flat one (a checkpoint's ``config``, a parsed ``config.yaml``)."""
    if not isinstance(values, Mapping):
        raise UserError(f"a saved training config is a mapping of option: value, not {type(values).__name__}")
    return TrainConfig.from_dict(migrate(values))


def read_config_yaml(path: str | Path) -> TrainConfig:
    """A run's ``config.yaml`` as a typed record (``yaml.safe_load``: no code runs)."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read the run config {path}: {str(exc).splitlines()[0]}") from exc
    return load_config(values)
