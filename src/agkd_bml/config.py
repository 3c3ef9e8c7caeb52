"""The training configuration: one flat, typed record, built from defaults < preset < YAML < CLI flags.

Every field carries its ``--help`` text, so the CLI options, the YAML keys and the saved ``config.yaml``
of a run are the same names with the same meaning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from agkd_bml.errors import UserError, unknown_choice


def _opt(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - "help" reads best in the table below
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved as the run's ``config.yaml``)."""

    method: str = _opt("agkd-bml", "training method (see `agkd-bml methods`)")
    dataset: str = _opt("digits", "digits (embedded), npz:PATH, cifar10, cifar100, svhn, mnist, fashion-mnist, tiny-imagenet")
    data_dir: str = _opt("./data", "where torchvision / Tiny ImageNet files live")
    download: bool = _opt(False, "let torchvision download the dataset into --data-dir")
    train_limit: int | None = _opt(None, "train on this many training images, a fixed random subset (default: all)")
    arch: str = _opt("small-cnn", "small-cnn, wrn-D-K (wrn-16-4, wrn-28-10, wrn-34-10), preact-resnet18, resnet50")
    teacher: str | None = _opt(None, "checkpoint (or run directory) of a `standard` model: the frozen teacher of AGKD (required by the methods that distil)")
    init_from_teacher: bool = _opt(False, "start the student from the teacher's weights (the released code does)")
    epochs: int = _opt(10, "number of training epochs")
    batch_size: int = _opt(128, "mini-batch size (clean images per step)")
    lr: float = _opt(0.1, "initial SGD learning rate")
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(2e-4, "SGD weight decay")
    milestones: list[int] = _opt([], "epochs at which the learning rate is multiplied by --gamma", nargs="*")
    gamma: float = _opt(0.1, "learning-rate decay factor at each milestone")
    eps: float | None = _opt(None, "L-inf budget of training attacks in [0,1] units (default: the dataset's, 8/255 for CIFAR)")
    step_size: float | None = _opt(None, "attack step size (default eps/4, i.e. 2/255 at eps 8/255)")
    steps: int | None = _opt(None, "attack steps (default per method: pgd-at 7, trades/mart 10, sml 7, agkd-bml 2)")
    label_smoothing: float | None = _opt(None, "Feature-Scattering label smoothing (default: 0.5 for the AGKD/BML family, 0 otherwise)")
    beta: float = _opt(6.0, "TRADES / MART trade-off weight")
    margin: float = _opt(0.03, "triplet margin of SML / BML")
    lambda_triplet: float = _opt(2.0, "weight of the metric-learning loss (lambda_1)")
    lambda_norm: float = _opt(0.001, "weight of the embedding-norm term inside it (lambda_2)")
    attention: str = _opt("agkd", "map AGKD distils (Table 6): agkd (class-irrelevant, the paper's), gc-orig / "
                          "gc-false (Grad-CAM of the original / false class), cam-avg (CAM averaged over classes)")
    mart: bool = _opt(False, "add MART's BCE + beta * weighted KL to AGKD-BML (the released 10-step code)")
    val_n: int = _opt(500, "test images used for the per-epoch clean / PGD accuracy")
    val_steps: int = _opt(10, "PGD steps of the per-epoch robust accuracy")
    seed: int = _opt(0, "random seed (data order, augmentation, attack starts, backward samples)")
    deterministic: bool = _opt(False, "deterministic kernels: a resumed run ends bit-identical to an uninterrupted one")
    skip_nonfinite: int = _opt(0, "skip up to N steps whose loss or gradient is NaN/inf instead of stopping")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")
    amp: str = _opt("auto", "mixed precision: auto (bf16 on CUDA if supported, else fp16; off on CPU), bf16, fp16, off")
    compile: bool = _opt(False, "torch.compile the student (CUDA; the first epoch pays the compile time)")
    sync_bn: bool = _opt(False, "under torchrun on CUDA: SyncBatchNorm, so BatchNorm sees the global batch")
    check_sync: bool = _opt(False, "under torchrun: verify after every step that all ranks hold identical weights")
    threads: int | None = _opt(None, "CPU threads for PyTorch (default: all cores)")
    out: str | None = _opt(None, "run directory (default: runs/<method>)")

    def validate(self) -> None:
        """Check values that do not depend on the dataset; raise :class:`UserError` on the first problem."""
        from agkd_bml.data import DATASETS
        from agkd_bml.methods import METHODS
        from agkd_bml.models import check_arch

        if self.method not in METHODS:
            raise unknown_choice("method", self.method, METHODS)
        check_arch(self.arch)
        if not (self.dataset in DATASETS or self.dataset.startswith("npz:")):
            raise unknown_choice("dataset", self.dataset, [*DATASETS, "npz:PATH"])
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
        if self.val_n < 0:
            raise UserError(f"--val-n must be >= 0; got {self.val_n}")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive; got {self.lr}")
        for name in ("eps", "step_size"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0; got {v}")
            if v is not None and v > 1:
                raise UserError(f"--{name.replace('_', '-')} {v} is in pixel units, but images are in [0, 1]; did you mean {v:g}/255 = {v / 255:.6f}?")
        from agkd_bml.methods.losses import ATTENTION_KINDS
        from agkd_bml.train.amp import AMP_CHOICES

        if self.amp not in AMP_CHOICES:
            raise unknown_choice("--amp mode", self.amp, AMP_CHOICES)

        if self.attention not in ATTENTION_KINDS:
            raise unknown_choice("attention map", self.attention, ATTENTION_KINDS)
        if self.attention != "agkd" and not getattr(METHODS[self.method], "use_agkd", False):
            raise UserError(f"--attention {self.attention} only applies to methods that distil attention (agkd, agkd-bml)")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise UserError(f"--label-smoothing must be in [0, 1); got {self.label_smoothing}")

    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.method

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Check a YAML value against the field's type (YAML gives ints, floats, bools, lists, None)."""
    default = FIELDS[name].default if FIELDS[name].default is not dataclasses.MISSING else []
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UserError(f"config key {name!r} must be true or false; got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, list):
        if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
            raise UserError(f"config key {name!r} must be a list of integers; got {value!r}")
        return value
    if not isinstance(value, type(default)) or isinstance(value, bool) != isinstance(default, bool):
        raise UserError(f"config key {name!r} must be a {type(default).__name__}; got {value!r}")
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file (``yaml.safe_load``: no code runs), checking every key and value."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: expected a mapping of option: value")
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name == "preset":
            out[name] = value
            continue
        if name not in FIELDS:
            raise unknown_choice(f"config key in {path}:", str(key), [*FIELDS, "preset"])
        out[name] = _coerce(name, value)
    return out


def preset_names() -> list[str]:
    """Names of the presets shipped in ``agkd_bml/presets``."""
    return sorted(p.name[:-5] for p in resources.files("agkd_bml.presets").iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    if name not in preset_names():
        raise unknown_choice("preset", name, preset_names())
    return Path(str(resources.files("agkd_bml.presets") / f"{name}.yaml"))


def preset_values(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The values of a preset, after those of the preset it names as its base (``preset: NAME``)."""
    if name in _seen:
        raise UserError(f"presets {' -> '.join((*_seen, name))} form a cycle")
    values = read_yaml(preset_path(name))
    base = values.pop("preset", None)
    merged = preset_values(base, (*_seen, name)) if base else {}
    merged.update(values)
    return merged


def resolve(preset: str | None = None, config_file: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < preset < config file (which may name its own ``preset``) < command-line overrides."""
    file_values = read_yaml(config_file) if config_file else {}
    preset = preset or file_values.get("preset")
    file_values.pop("preset", None)
    values = preset_values(preset) if preset else {}
    values.update(file_values)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg
