"""The training loop; checkpoints are :mod:`agkd_bml.models.checkpoint`
(re-exported here for training code)."""

from agkd_bml.models.checkpoint import Checkpoint, load_checkpoint, load_model, save_checkpoint
from agkd_bml.train.settings import preset_names, preset_path, resolve
from agkd_bml.train.trainer import TrainingDiverged, build, finished_without_checkpoint, train

__all__ = [
    "Checkpoint",
    "TrainingDiverged",
    "build",
    "finished_without_checkpoint",
    "load_checkpoint",
    "load_model",
    "preset_names",
    "preset_path",
    "resolve",
    "save_checkpoint",
    "train",
]
