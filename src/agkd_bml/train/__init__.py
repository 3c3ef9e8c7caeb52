"""The training loop and checkpoints."""

from agkd_bml.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from agkd_bml.train.trainer import TrainingDiverged, build, train

__all__ = ["TrainingDiverged", "build", "load_checkpoint", "load_model", "save_checkpoint", "train"]
