"""The training configuration: one typed record of sections, at the bottom of the package (it imports only
``errors``).

:class:`TrainConfig` holds the method, six frozen sections (data, model, optimisation, training attack,
validation, runtime) and the method's own hyper-parameters. Every field carries its ``--help`` text and has
one flat name, so the CLI options, the YAML keys and the saved ``config.yaml`` of a run are the same names
with the same meaning (:data:`SECTION_OF` maps them to the sections). A method's own hyper-parameters are
declared by the method (:class:`HyperParam`) and kept in ``params``. Building a record from defaults < preset
< YAML < CLI flags is :mod:`agkd_bml.train.settings`; reading a saved one, of any release,
:mod:`agkd_bml.migration`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from agkd_bml.errors import UserError


def _opt(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - "help" reads best in the table below
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


#: ``--lr-schedule`` values (see :func:`agkd_bml.train.schedule.lr_scheduler`)
LR_SCHEDULES = ("multistep", "cyclic")

#: The order of the flat names in ``--help`` and ``config.yaml`` (that of the flat record of release 0.2,
#: plus the keys added since).
FLAT_ORDER = (
    "method", "dataset", "data_dir", "download", "train_limit", "arch", "teacher", "init_from_teacher",
    "epochs", "batch_size", "lr", "momentum", "weight_decay", "milestones", "gamma", "lr_schedule",
    "cyclic_peak", "eps", "step_size", "steps", "label_smoothing", "val_n", "val_split", "ema", "val_steps",
    "seed", "deterministic", "skip_nonfinite", "device", "amp", "compile", "sync_bn", "check_sync", "threads",
    "tensorboard", "out",
)


@dataclass(kw_only=True, frozen=True)
class DataConfig:
    """What the run trains on."""

    dataset: str = _opt("digits",
                        "digits (embedded), npz:PATH, cifar10, cifar100, "
                        "svhn, mnist, fashion-mnist, tiny-imagenet")
    data_dir: str | None = _opt(None,
                                "where datasets by name live (default: $AGKD_BML_DATA, else "
                                "~/.cache/agkd-bml/data)")
    download: bool = _opt(False, "let torchvision download the dataset into --data-dir")
    train_limit: int | None = _opt(None,
                                   "train on this many training images, a fixed random subset (default: all)")


@dataclass(kw_only=True, frozen=True)
class ModelConfig:
    """The network, and the teacher it may learn from."""

    arch: str = _opt("small-cnn",
                     "small-cnn (small-cnn-wN: base width N, 32 by default), wrn-D-K "
                     "(wrn-16-4, wrn-28-10, wrn-34-10), preact-resnet18 "
                     "(preact-resnet18-wN: first-stage width N, 64 by default), resnet50")
    teacher: str | None = _opt(None,
                               "checkpoint (or run directory) of a `standard` model: the frozen teacher of "
                               "AGKD (required by the methods that distil)")
    init_from_teacher: bool = _opt(False,
                                   "start the student from the teacher's weights (the released code does)")


@dataclass(kw_only=True, frozen=True)
class OptimConfig:
    """The optimisation: schedule, SGD, the loss's label smoothing, weight averaging."""

    epochs: int = _opt(10, "number of training epochs")
    batch_size: int = _opt(128, "mini-batch size (clean images per step)")
    lr: float = _opt(0.1, "initial SGD learning rate")
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(2e-4, "SGD weight decay")
    milestones: list[int] = _opt([], "epochs at which the learning rate is multiplied by --gamma", nargs="*")
    gamma: float = _opt(0.1, "learning-rate decay factor at each milestone")
    lr_schedule: str = _opt("multistep",
                            "multistep (--lr, times --gamma at each of --milestones) "
                            "or cyclic (per step, linear from 0 up to --lr at 2/5 of "
                            "the epochs and back to 0: Wong et al. 2020's fast AT)",
                            choices=("multistep", "cyclic"))
    cyclic_peak: float | None = _opt(None,
                                     "the epoch (fractions allowed) at which the cyclic lr peaks; default: "
                                     "epochs * 2 // 5 (Wong et al.'s train_cifar.py); half the epochs is "
                                     "their train_fgsm.py's")
    label_smoothing: float | None = _opt(None, "Feature-Scattering label smoothing",
                                         per_method="default_smoothing")
    ema: float = _opt(0.0,
                      "also keep an exponential moving average of the weights and BN statistics with this "
                      "decay (e.g. 0.999, warm-up min(decay, (1+t)/(10+t))), saved in each checkpoint; 0: "
                      "off")


@dataclass(kw_only=True, frozen=True)
class AttackConfig:
    """The training attack as configured (None: the method's and dataset's default, resolved once
    and written into the run's ``config.yaml``)."""

    eps: float | None = _opt(None,
                             "L-inf budget of training attacks in [0,1] "
                             "units (default: the dataset's, 8/255 for CIFAR)")
    step_size: float | None = _opt(None,
                                   "attack step size (default eps/4, i.e. 2/255 at eps 8/255; with fewer "
                                   "than 4 steps 2.5*eps/steps, at most eps, so the steps can cross the "
                                   "ball)")
    steps: int | None = _opt(None, "attack steps", per_method="default_steps")


@dataclass(kw_only=True, frozen=True)
class ValidationConfig:
    """The per-epoch held-out trace, and the weights it selects."""

    val_n: int = _opt(500,
                      "without --val-split: the first N test images give the per-epoch clean / PGD accuracy "
                      "(a trace only: the test set never selects weights)")
    val_split: int = _opt(0,
                          "hold out N training images (a fixed, class-balanced draw) "
                          "for the per-epoch clean / PGD accuracy, and keep the "
                          "weights best on them as best.pt; 0: no hold-out, no best.pt")
    val_steps: int = _opt(10, "PGD steps of the per-epoch robust accuracy")


@dataclass(kw_only=True, frozen=True)
class RuntimeConfig:
    """Where and how the run executes; none of it changes what is learnt but the seed."""

    seed: int = _opt(0, "random seed (data order, augmentation, attack starts, backward samples)")
    deterministic: bool = _opt(False,
                               "deterministic kernels: a resumed run ends "
                               "bit-identical to an uninterrupted one")
    skip_nonfinite: int = _opt(0, "skip up to N steps whose loss or gradient is NaN/inf instead of stopping")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")
    amp: str = _opt("auto", "mixed precision: auto (bf16 on CUDA if supported, else "
                    "fp16; off on CPU), bf16, native-bf16 (bf16 where the hardware "
                    "has it: CUDA, CPUs with AVX512-BF16 or AMX; else off), fp16, off")
    compile: bool = _opt(False, "torch.compile the student (CUDA; the first epoch pays the compile time)")
    sync_bn: bool = _opt(False, "under torchrun on CUDA: SyncBatchNorm, so BatchNorm sees the global batch")
    check_sync: bool = _opt(False,
                            "under torchrun: verify after every step that all ranks hold identical weights")
    threads: int | None = _opt(None, "CPU threads for PyTorch (default: all cores)")
    tensorboard: bool = _opt(False,
                             "also log each epoch's loss terms, lr, throughput and held-out accuracy for "
                             "TensorBoard into RUN/tensorboard (needs the tensorboard extra)")
    out: str | None = _opt(None, "run directory (default: runs/<method>)")


@dataclass(kw_only=True, frozen=True)
class TrainConfig:
    """Everything that determines a training run, by section (saved flat as the run's ``config.yaml``).

    Code reads it typed (``cfg.optim.epochs``); people write it flat, as options and YAML keys (``--epochs``,
    ``epochs: 10``): :data:`SECTION_OF` is the one mapping between the two, so the flat names of every earlier
    release keep their meaning. Build one from flat names with :meth:`of` or :meth:`from_dict`, change one
    with :meth:`replace`; a saved one is read back through :mod:`agkd_bml.migration`.
    """

    method: str = _opt("agkd-bml", "training method (see `agkd-bml methods`)")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    #: the method's own hyper-parameters by name (declared by each method, see :class:`HyperParam`);
    #: flat beside the fields above in ``config.yaml``, presets and checkpoints
    params: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Check the values that need no registry; raise :class:`UserError` on the first problem.

        Names (method, architecture, dataset, AMP mode, the method's hyper-parameters) are checked where
        their registries live, by :func:`agkd_bml.train.settings.check`, so this module stays at the bottom.
        """
        o, a, v, r = self.optim, self.attack, self.validation, self.runtime
        for name, value in (("epochs", o.epochs), ("batch_size", o.batch_size), ("val_steps", v.val_steps)):
            if value <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive; got {value}")
        if a.steps is not None and a.steps < 0:
            raise UserError(f"--steps must be >= 0; got {a.steps}")
        for name, maybe in (("train_limit", self.data.train_limit), ("threads", r.threads)):
            if maybe is not None and maybe <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive; got {maybe}")
        if r.skip_nonfinite < 0:
            raise UserError(f"--skip-nonfinite must be >= 0; got {r.skip_nonfinite}")
        if v.val_n < 0 or v.val_split < 0:
            raise UserError(f"--val-n and --val-split must be >= 0; got {v.val_n} and {v.val_split}")
        if not 0 <= o.ema < 1:
            raise UserError(f"--ema is a decay in [0, 1) (e.g. 0.999; 0 turns it off); got {o.ema}")
        if o.lr <= 0:
            raise UserError(f"--lr must be positive; got {o.lr}")
        if o.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"unknown --lr-schedule {o.lr_schedule!r}; choose one of: "
                            f"{', '.join(LR_SCHEDULES)}")
        if o.lr_schedule == "cyclic" and o.milestones:
            raise UserError("--milestones apply to --lr-schedule multistep; the cyclic schedule has none")
        if o.cyclic_peak is not None and (o.lr_schedule != "cyclic" or not 0 < o.cyclic_peak < o.epochs):
            raise UserError(f"--cyclic-peak is an epoch strictly between 0 and --epochs ({o.epochs}) of "
                            f"--lr-schedule cyclic; got {o.cyclic_peak} with {o.lr_schedule}")
        for name, budget in (("eps", a.eps), ("step_size", a.step_size)):
            if budget is not None and budget < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0; got {budget}")
            if budget is not None and budget > 1:
                raise UserError(f"--{name.replace('_', '-')} {budget} is in pixel units, but images are in "
                                f"[0, 1]; did you mean {budget:g}/255 = {budget / 255:.6f}?")
        if o.label_smoothing is not None and not 0 <= o.label_smoothing < 1:
            raise UserError(f"--label-smoothing must be in [0, 1); got {o.label_smoothing}")

    def run_dir(self) -> Path:
        return Path(self.runtime.out) if self.runtime.out else Path("runs") / self.method

    def to_dict(self) -> dict[str, Any]:
        """The flat form of ``config.yaml``: the fields by their flat names,
        then the method's hyper-parameters."""
        return {**{name: self.value(name) for name in SECTION_OF}, **self.params}

    def value(self, name: str) -> Any:
        """A field by its flat name (``"epochs"``): for code that handles options by name."""
        section = SECTION_OF[name]
        return getattr(self if section is None else getattr(self, section), name)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The record of a flat dict: field names go to their sections, every
        other key is a hyper-parameter."""
        by_section: dict[str | None, dict[str, Any]] = {}
        params = dict(values.get("params") or {})
        for name, value in values.items():
            if name in SECTION_OF:
                by_section.setdefault(SECTION_OF[name], {})[name] = value
            elif name != "params":
                params[name] = value
        sections = {s: SECTIONS[s](**by_section.get(s, {})) for s in SECTIONS}
        return cls(**by_section.get(None, {}), **sections, params=params)

    @classmethod
    def of(cls, **values: Any) -> TrainConfig:
        """``TrainConfig.of(method="pgd-at", epochs=3)``: :meth:`from_dict` with keywords."""
        return cls.from_dict(values)

    def replace(self, **values: Any) -> TrainConfig:
        """A copy with some values replaced, by flat name (fields and hyper-parameters alike)."""
        return TrainConfig.from_dict({**self.to_dict(), **values})

    def with_params(self, **params: Any) -> TrainConfig:
        """A copy with some hyper-parameters replaced."""
        return dataclasses.replace(self, params={**self.params, **params})


#: The sections of :class:`TrainConfig` by attribute name.
SECTIONS: dict[str, type[Any]] = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
                                  "attack": AttackConfig, "validation": ValidationConfig,
                                  "runtime": RuntimeConfig}
#: The flat names of the options, YAML keys and ``config.yaml`` (in their order), each with the section that
#: holds it (None: :class:`TrainConfig` itself).
SECTION_OF: dict[str, str | None] = {
    name: section
    for name, section in sorted(
        [("method", None), *((f.name, s) for s, c in SECTIONS.items() for f in dataclasses.fields(c))],
        key=lambda item: FLAT_ORDER.index(item[0]),
    )
}
#: The fields by flat name (``params``, the methods' hyper-parameters, is not one of them).
FIELDS = {name: next(f for f in dataclasses.fields(TrainConfig if section is None else SECTIONS[section])
                     if f.name == name) for name, section in SECTION_OF.items()}


@dataclass(kw_only=True, frozen=True)
class HyperParam:
    """One hyper-parameter a method declares: its ``--name`` option, YAML key and default."""

    name: str
    default: bool | float | str
    help: str
    choices: tuple[str, ...] = ()  #: allowed values of a string parameter (empty: any)


def hyper(default: bool | float | str, help: str, *, choices: tuple[str, ...] = ()) -> Any:
    """A field of a method's :class:`HyperParams`: its default, its ``--help`` line and its allowed values."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(kw_only=True, frozen=True)
class HyperParams:
    """A method's own hyper-parameters as a typed record: each method declares a subclass whose fields
    (made with :func:`hyper`) are its options and config keys, and reads its values as ``self.hp.NAME``.

    Parameters that several methods share are declared once, as small records the methods' records
    inherit from (:mod:`agkd_bml.methods.params`), so one name always has one default and one meaning.
    """

    @classmethod
    def declared(cls) -> tuple[HyperParam, ...]:
        """The declarations of the fields, for the options, the config checks and ``--help``."""
        # every field comes from hyper(), which gives it a default
        return tuple(HyperParam(name=f.name, default=cast(bool | float | str, f.default),
                                help=f.metadata["help"], choices=f.metadata["choices"])
                     for f in dataclasses.fields(cls))
