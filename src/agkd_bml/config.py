"""The training configuration: one typed record, at the bottom of the package (it imports only ``errors``).

Every field carries its ``--help`` text, so the CLI options, the YAML keys and the saved ``config.yaml``
of a run are the same names with the same meaning. A method's own hyper-parameters are not fields: each
method declares them (:class:`HyperParam`), and the record keeps their values in ``params``. Building a
record from defaults < preset < YAML < CLI flags is :mod:`agkd_bml.train.settings`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agkd_bml.errors import UserError


def _opt(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - "help" reads best in the table below
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


#: ``--lr-schedule`` values (see :func:`agkd_bml.train.schedule.lr_scheduler`)
LR_SCHEDULES = ("multistep", "cyclic")


@dataclass(kw_only=True)
class TrainConfig:
    """Everything that determines a training run (saved as the run's ``config.yaml``)."""

    method: str = _opt("agkd-bml", "training method (see `agkd-bml methods`)")
    dataset: str = _opt("digits", "digits (embedded), npz:PATH, cifar10, cifar100, svhn, mnist, fashion-mnist, tiny-imagenet")
    data_dir: str | None = _opt(None, "where datasets by name live (default: $AGKD_BML_DATA, else ~/.cache/agkd-bml/data)")
    download: bool = _opt(False, "let torchvision download the dataset into --data-dir")
    train_limit: int | None = _opt(None, "train on this many training images, a fixed random subset (default: all)")
    arch: str = _opt("small-cnn", "small-cnn (small-cnn-wN: base width N, 32 by default), wrn-D-K (wrn-16-4, wrn-28-10, wrn-34-10), preact-resnet18 (preact-resnet18-wN: first-stage width N, 64 by default), resnet50")
    teacher: str | None = _opt(None, "checkpoint (or run directory) of a `standard` model: the frozen teacher of AGKD (required by the methods that distil)")
    init_from_teacher: bool = _opt(False, "start the student from the teacher's weights (the released code does)")
    epochs: int = _opt(10, "number of training epochs")
    batch_size: int = _opt(128, "mini-batch size (clean images per step)")
    lr: float = _opt(0.1, "initial SGD learning rate")
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(2e-4, "SGD weight decay")
    milestones: list[int] = _opt([], "epochs at which the learning rate is multiplied by --gamma", nargs="*")
    gamma: float = _opt(0.1, "learning-rate decay factor at each milestone")
    lr_schedule: str = _opt("multistep", "multistep (--lr, times --gamma at each of --milestones) or cyclic (per step, "
                            "linear from 0 up to --lr at 2/5 of the epochs and back to 0: Wong et al. 2020's fast AT)",
                            choices=("multistep", "cyclic"))
    eps: float | None = _opt(None, "L-inf budget of training attacks in [0,1] units (default: the dataset's, 8/255 for CIFAR)")
    step_size: float | None = _opt(None, "attack step size (default eps/4, i.e. 2/255 at eps 8/255; with fewer than 4 steps 2.5*eps/steps, at most eps, so the steps can cross the ball)")
    steps: int | None = _opt(None, "attack steps", per_method="default_steps")
    label_smoothing: float | None = _opt(None, "Feature-Scattering label smoothing", per_method="default_smoothing")
    val_n: int = _opt(500, "without --val-split: the first N test images give the per-epoch clean / PGD accuracy (a trace only: the test set never selects weights)")
    val_split: int = _opt(0, "hold out N training images (a fixed, class-balanced draw) for the per-epoch clean / PGD "
                          "accuracy, and keep the weights best on them as best.pt; 0: no hold-out, no best.pt")
    ema: float = _opt(0.0, "also keep an exponential moving average of the weights and BN statistics with this "
                      "decay (e.g. 0.999, warm-up min(decay, (1+t)/(10+t))), saved in each checkpoint; 0: off")
    val_steps: int = _opt(10, "PGD steps of the per-epoch robust accuracy")
    seed: int = _opt(0, "random seed (data order, augmentation, attack starts, backward samples)")
    deterministic: bool = _opt(False, "deterministic kernels: a resumed run ends bit-identical to an uninterrupted one")
    skip_nonfinite: int = _opt(0, "skip up to N steps whose loss or gradient is NaN/inf instead of stopping")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")
    amp: str = _opt("auto", "mixed precision: auto (bf16 on CUDA if supported, else fp16; off on CPU), bf16, "
                    "native-bf16 (bf16 where the hardware has it: CUDA, CPUs with AVX512-BF16 or AMX; else off), fp16, off")
    compile: bool = _opt(False, "torch.compile the student (CUDA; the first epoch pays the compile time)")
    sync_bn: bool = _opt(False, "under torchrun on CUDA: SyncBatchNorm, so BatchNorm sees the global batch")
    check_sync: bool = _opt(False, "under torchrun: verify after every step that all ranks hold identical weights")
    threads: int | None = _opt(None, "CPU threads for PyTorch (default: all cores)")
    tensorboard: bool = _opt(False, "also log each epoch's loss terms, lr, throughput and held-out accuracy for "
                             "TensorBoard into RUN/tensorboard (needs the tensorboard extra)")
    out: str | None = _opt(None, "run directory (default: runs/<method>)")
    #: the method's own hyper-parameters by name (declared by each method, see :class:`HyperParams`);
    #: flat beside the fields above in ``config.yaml``, presets and checkpoints
    params: dict[str, Any] = field(default_factory=dict, metadata={"help": "", "cli": False})

    def validate(self) -> None:
        """Check the values that need no registry; raise :class:`UserError` on the first problem.

        Names (method, architecture, dataset, AMP mode, the method's hyper-parameters) are checked where
        their registries live, by :func:`agkd_bml.train.settings.check`, so this module stays at the bottom.
        """
        for name in ("epochs", "batch_size", "val_steps"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive; got {getattr(self, name)}")
        if self.steps is not None and self.steps < 0:
            raise UserError(f"--steps must be >= 0; got {self.steps}")
        for name in ("train_limit", "threads"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive; got {v}")
        if self.skip_nonfinite < 0:
            raise UserError(f"--skip-nonfinite must be >= 0; got {self.skip_nonfinite}")
        if self.val_n < 0 or self.val_split < 0:
            raise UserError(f"--val-n and --val-split must be >= 0; got {self.val_n} and {self.val_split}")
        if not 0 <= self.ema < 1:
            raise UserError(f"--ema is a decay in [0, 1) (e.g. 0.999; 0 turns it off); got {self.ema}")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive; got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"unknown --lr-schedule {self.lr_schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}")
        if self.lr_schedule == "cyclic" and self.milestones:
            raise UserError("--milestones apply to --lr-schedule multistep; the cyclic schedule has none")
        for name in ("eps", "step_size"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0; got {v}")
            if v is not None and v > 1:
                raise UserError(f"--{name.replace('_', '-')} {v} is in pixel units, but images are in [0, 1]; did you mean {v:g}/255 = {v / 255:.6f}?")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise UserError(f"--label-smoothing must be in [0, 1); got {self.label_smoothing}")

    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.method

    def to_dict(self) -> dict[str, Any]:
        """The flat form of ``config.yaml``: the fields, then the method's hyper-parameters."""
        d = dataclasses.asdict(self)
        params = d.pop("params")
        return {**d, **params}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The record of a flat dict: field names become fields, every other key a hyper-parameter."""
        core = {k: v for k, v in values.items() if k in FIELDS}
        params = {**core.pop("params", {}), **{k: v for k, v in values.items() if k not in FIELDS}}
        return cls(**core, params=params)

    def with_params(self, **params: Any) -> TrainConfig:
        """A copy with some hyper-parameters replaced."""
        return dataclasses.replace(self, params={**self.params, **params})


#: The fields of :class:`TrainConfig` by name (``params`` holds the methods' hyper-parameters).
FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


@dataclass(kw_only=True, frozen=True)
class HyperParam:
    """One hyper-parameter a method declares: its ``--name`` option, YAML key and default."""

    name: str
    default: bool | float | str
    help: str
    choices: tuple[str, ...] = ()  #: allowed values of a string parameter (empty: any)
