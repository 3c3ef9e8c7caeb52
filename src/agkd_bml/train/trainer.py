"""The one training loop shared by every method.

Per epoch: batches in a seeded order, ``method.loss`` -> sum of named terms -> SGD step, a progress bar with
the terms and throughput, the lr schedule, clean and PGD accuracy on a held-out slice of the test set, one
JSON line of metrics and an atomic checkpoint. Randomness is derived from ``seed + epoch``, so a run resumed
from the checkpoint of epoch ``e`` replays epoch ``e + 1`` exactly as an uninterrupted run. """

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import operator
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from agkd_bml import distributed
from agkd_bml.attacks import parse_attacks
from agkd_bml.attacks.norms import dataset_eps
from agkd_bml.config import TrainConfig
from agkd_bml.data import Dataset, DataSpec, ImageSampler, iterate_batches, load_dataset
from agkd_bml.device import device_name, resolve_device
from agkd_bml.distributed import Dist, any_rank, check_in_sync, sum_over_ranks
from agkd_bml.errors import UserError
from agkd_bml.evaluation import AttackResult, evaluate_attacks
from agkd_bml.fileio import hold_lock, release_lock, write_text
from agkd_bml.methods import METHODS, Method, MethodContext
from agkd_bml.methods.base import resolve_attack, resolved
from agkd_bml.migration import UNRECORDED, read_config_yaml
from agkd_bml.models import Classifier, build_model
from agkd_bml.models.checkpoint import (
    BEST,
    LAST,
    PREV,
    Checkpoint,
    load_model,
    newest_valid,
    save_best,
    save_checkpoint,
)
from agkd_bml.models.modes import eval_mode
from agkd_bml.provenance import provenance, tensor_digest
from agkd_bml.train.amp import amp_dtype, autocast, grad_scaler, native_bf16, precision_name
from agkd_bml.train.ema import Ema
from agkd_bml.train.schedule import lr_scheduler, per_step
from agkd_bml.train.settings import check, complete

RUN_FILES = (LAST, PREV, BEST, "metrics.jsonl", "config.yaml")
#: the lock file of a run folder being trained (see :func:`agkd_bml.fileio.hold_lock`)
LOCK = ".lock"
#: Seed of the ``--val-split`` draw: one held-out set per dataset, shared by every run (teacher included).
HOLD_OUT_SEED = 0
#: Config keys that may change when a run is resumed (more epochs, another device).
RESUMABLE_CHANGES = {"epochs", "device", "threads", "out", "val_n", "val_steps", "data_dir", "download",
                     "skip_nonfinite",
                     "amp", "compile", "check_sync", "tensorboard"}


class TrainingDiverged(UserError):
    """A loss term or gradient became non-finite; the last checkpoint is left intact."""


def tensorboard_writer(folder: Path) -> Any:
    """TensorBoard's writer from torch (``--tensorboard``); the tensorboard package is an optional extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise UserError("--tensorboard needs the tensorboard package: pip install "
                        "'agkd-bml[tensorboard]'") from exc
    return SummaryWriter(str(folder))


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its run folder, ``.npz`` file, data folder and teacher as absolute paths."""
    def absolute(path: str | None) -> str | None:
        return str(Path(path).resolve()) if path else path

    dataset = (f"npz:{absolute(cfg.data.dataset[4:])}" if cfg.data.dataset.startswith("npz:")
               else cfg.data.dataset)
    return cfg.replace(out=absolute(str(cfg.run_dir())), dataset=dataset,
                       data_dir=absolute(cfg.data.data_dir),
                       teacher=absolute(cfg.model.teacher))


def status(text: str) -> None:
    """A status line (epochs, checkpoints, resuming): on stderr, so that stdout carries results only."""
    print(text, file=sys.stderr)


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Optimizer steps in one epoch: full batches only (a last partial batch is dropped), at least one."""
    return max(1, images // batch_size)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of everything random in one epoch (data order, augmentation, attack starts, samples)."""
    return (seed * 1_000_003 + epoch) % (2**63)


@dataclass(kw_only=True)
class Setup:
    """Everything :func:`train` builds before the first step."""

    cfg: TrainConfig
    device: torch.device
    data: Dataset
    model: torch.nn.Module  #: what the steps call: ``net``, or its DDP wrapper
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    run_dir: Path
    net: Classifier  #: the bare network (``model`` may be its DDP wrapper)
    dist: Dist = Dist()
    amp: torch.dtype | None = None  #: autocast dtype, None for full precision
    scaler: torch.amp.GradScaler
    skipped: int = 0  #: steps skipped so far for a non-finite loss or gradient
    val: tuple[torch.Tensor, torch.Tensor] | None = None  #: ``--val-split``: held-out training images, labels
    ema: Ema | None = None
    ema_model: Classifier | None = None  #: a network the EMA weights are loaded into for validation
    best: dict[str, Any] = field(default_factory=dict)  #: epoch and held-out PGD accuracy of ``best.pt``
    #: what produces the run (versions, device, commit, the training data's
    #: fingerprint), in every metrics line
    provenance: dict[str, Any] = field(default_factory=dict)
    board: Any = None  #: ``--tensorboard``: the SummaryWriter of RUN/tensorboard


def _load_teacher(cfg: TrainConfig, student: Classifier, data: Dataset, device: torch.device) -> Classifier:
    """Load and check the frozen teacher: same dataset shape, classes and last-feature-map size."""
    assert cfg.model.teacher is not None  # build() asks for --teacher first
    run = Path(cfg.model.teacher)
    if run.is_dir() and (run / BEST).is_file() and not any((run / f).is_file() for f in (LAST, PREV)):
        # a committed reproduction drops a finished run's training checkpoints; a teacher's last epoch must
        # outlive them until its students have trained, and when it did not, say what the ways on are
        raise UserError(
            f"teacher {cfg.model.teacher} keeps only its best weights ({BEST}), not the last epoch ({LAST}) "
            f"that a student distils: restore {LAST} where the teacher trained (commit it with `git add -f` "
            f"until its students finish), move {cfg.model.teacher} away to train the teacher again, or give "
            f"--teacher {run / BEST} to distil its best epoch instead")
    teacher, ckpt = load_model(cfg.model.teacher, device)
    t_spec, s = ckpt.data, data.spec
    if (t_spec.num_classes, t_spec.channels, t_spec.size) != (s.num_classes, s.channels, s.size):
        raise UserError(
            f"teacher {cfg.model.teacher} was trained on {t_spec.num_classes} classes of "
            f"{t_spec.channels}x{t_spec.size}x{t_spec.size} images, but {s.name} has {s.num_classes} "
            f"classes of {s.channels}x{s.size}x{s.size}"
        )
    probe = torch.zeros(1, s.channels, s.size, s.size, device=device)
    with torch.no_grad(), eval_mode(student):
        t_hw, s_hw = teacher(probe).features.shape[2:], student(probe).features.shape[2:]
    if t_hw != s_hw:
        raise UserError(
            f"teacher ({ckpt.arch}) has {tuple(t_hw)} attention maps, student ({cfg.model.arch}) has "
            f"{tuple(s_hw)}; AGKD needs equal sizes"
        )
    if cfg.model.init_from_teacher:
        if ckpt.arch != cfg.model.arch:
            raise UserError(f"--init-from-teacher needs the teacher's architecture ({ckpt.arch}), not "
                            f"{cfg.model.arch}")
        student.load_state_dict(teacher.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.to(memory_format=torch.channels_last)


def _prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool, create: bool = True) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} is a file; pass another --out")
    has_run = any((run_dir / f).exists() for f in RUN_FILES)
    if has_run and not (resume or overwrite):
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to "
                        "replace it")
    if not create:
        return
    for stale in run_dir.glob(".*.tmp"):  # left by a process killed while writing
        stale.unlink(missing_ok=True)
    if has_run and overwrite and not resume:
        for f in RUN_FILES:
            (run_dir / f).unlink(missing_ok=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create run directory {run_dir}: {exc.strerror}") from exc
    if shutil.disk_usage(run_dir).free < 50 * 2**20:
        raise UserError(f"less than 50 MiB free under {run_dir}; free some space before training")


def build(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, create: bool = True) -> Setup:
    """Validate ``cfg`` and build data, model, teacher, method and optimizer (nothing trains yet)."""
    cfg = complete(cfg)
    check(cfg)
    method_cls = METHODS[cfg.method]
    if method_cls.needs_teacher and not cfg.model.teacher:
        raise UserError(f"method {cfg.method!r} distils a teacher's attention: pass --teacher "
                        "RUN_DIR_OR_CHECKPOINT (a `standard` run)")
    if cfg.model.init_from_teacher and not cfg.model.teacher:
        raise UserError("--init-from-teacher needs --teacher")
    if cfg.runtime.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    d, device_name = distributed.setup(cfg.runtime.device)
    device = resolve_device(device_name)
    if d.enabled and cfg.optim.batch_size % d.world:
        raise UserError(f"--batch-size {cfg.optim.batch_size} is the global batch; it must divide by the "
                        f"{d.world} processes")
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.runtime.deterministic
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    run_dir = cfg.run_dir()
    # checked before any folder is made
    data = load_dataset(cfg.data.dataset, data_dir=cfg.data.data_dir, download=cfg.data.download)
    if d.main:
        _prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, create=create)
        # one process trains a run folder: a second `train --out` of it is refused, naming the first
        if create:
            hold_lock(run_dir / LOCK, f"run folder {run_dir}")
    distributed.barrier(d)
    val = None
    # held out before --train-limit, so that every run of the dataset holds out the same
    if cfg.validation.val_split:
        data, *val = data.hold_out(cfg.validation.val_split, HOLD_OUT_SEED)
    data = data.limit_train(cfg.data.train_limit, cfg.runtime.seed)
    if resume:
        cfg = _continue_saved(cfg, run_dir, data.spec)
    # config.yaml and the checkpoints record the values the run trains with, and paths that mean the same from
    # any folder (`train --config RUN/config.yaml --resume` elsewhere continues this run, not a new ./RUN)
    cfg = absolute_paths(resolved(cfg, data.spec))
    torch.manual_seed(cfg.runtime.seed)  # weight initialisation
    # channels-last on every device: cuDNN and oneDNN convolutions both prefer it (on 2 CPU cores a
    # training step is 14% (WRN-16-4) to 28% (small CNN) faster than in NCHW)
    model = build_model(cfg.model.arch, data.spec).to(memory_format=torch.channels_last).to(device)
    if cfg.runtime.compile:
        model.compile()  # in place: state_dict keys, checkpoints and attributes stay those of the plain model
    teacher = (_load_teacher(cfg, model, data, device) if cfg.model.teacher and method_cls.needs_teacher
               or cfg.model.init_from_teacher else None)
    sampler = None
    if method_cls.needs_sampler:
        try:
            sampler = ImageSampler(data.x_train, data.y_train, data.spec.num_classes, data.spec.augment,
                                   device)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    method = method_cls(cfg,
                        MethodContext(num_classes=data.spec.num_classes,
                                      attack=resolve_attack(cfg, data.spec), teacher=teacher,
                                      sampler=sampler))
    if cfg.runtime.sync_bn:
        if not (d.enabled and device.type == "cuda"):
            raise UserError("--sync-bn needs torchrun with several processes on CUDA (PyTorch's "
                            "SyncBatchNorm is GPU-only)")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameters, same state_dict keys
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                weight_decay=cfg.optim.weight_decay)
    scheduler = lr_scheduler(cfg, optimizer, steps_per_epoch(data.x_train.shape[0], cfg.optim.batch_size))
    dtype = amp_dtype(cfg.runtime.amp, device)
    net, step_model = model, cast(torch.nn.Module, model)  # the steps call the DDP wrapper under torchrun
    if d.enabled:
        step_model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda"
                                             else None)
    ema, ema_model = None, None
    if cfg.optim.ema:
        ema = Ema(net, cfg.optim.ema)
        ema_model = build_model(cfg.model.arch, data.spec).to(memory_format=torch.channels_last).to(device)
    made_by = provenance(device, tensor_digest(data.x_train, data.y_train)) if d.main else {}
    return Setup(cfg=cfg, device=device, data=data, model=step_model, method=method, optimizer=optimizer,
                 scheduler=scheduler, run_dir=run_dir, net=net, dist=d, amp=dtype,
                 scaler=grad_scaler(device, dtype), val=(val[0], val[1]) if val else None, ema=ema,
                 ema_model=ema_model,
                 provenance=made_by)


#: Config keys that ``build`` resolves (the training attack and the label smoothing): ``None`` in a saved run
#: means "the default then", which :func:`_continue_saved` takes over.
RESOLVED = ("eps", "steps", "step_size", "label_smoothing")


def _continue_saved(cfg: TrainConfig, run_dir: Path, spec: DataSpec) -> TrainConfig:
    """``cfg`` with the resolved values of the run being resumed where the command leaves them to defaults.

    A run records the training attack it resolved in ``config.yaml``; resuming continues that attack even
    if a default has changed since. Runs saved before a value was recorded continue with what they
    resolved it to then (:data:`agkd_bml.migration.UNRECORDED`). """
    path = run_dir / "config.yaml"
    if not path.is_file():
        return cfg
    saved = read_config_yaml(path)
    if saved.method != cfg.method:
        return cfg  # another run: _restore reports the difference
    values = {k: saved.value(k) for k in RESOLVED if cfg.value(k) is None and saved.value(k) is not None}
    eps = next((e for e in (cfg.attack.eps, saved.attack.eps) if e is not None), dataset_eps(spec))
    for name, then in UNRECORDED.items():
        if cfg.value(name) is None and saved.value(name) is None:
            values[name] = then(eps)
    return cfg.replace(**values)


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> set[str]:
    """The config keys in which a run asked for now differs from a saved one
    (beyond what may change on resume)."""
    # a resolved key saved as None (a run from before the values were recorded), or left None now (a default
    # not yet resolved), is not a difference: resolution fills it from the saved run
    changed = {k for k, v in now.items()
               if saved.get(k) != v and not (k in RESOLVED and (saved.get(k) is None or v is None))}
    # the same teacher reached by another path (a reproduction folder linked to another) is the same teacher
    if "teacher" in changed and saved.get("teacher") and now.get("teacher") and \
            Path(saved["teacher"]).resolve() == Path(now["teacher"]).resolve():
        changed.discard("teacher")
    if "dataset" in changed and same_npz(str(saved.get("dataset")), str(now.get("dataset"))):
        changed.discard("dataset")
    return changed - RESUMABLE_CHANGES


def same_npz(saved: str, now: str) -> bool:
    """Whether two ``npz:PATH`` datasets are the same file: the same contents where both paths exist here,
    else (a run made on another machine, whose path means nothing here) the same file name.

    A run records its dataset as the path it was given, relative to where it started; the same data reached
    from elsewhere (``reproduce --dataset npz:ELSEWHERE/cifar10.npz`` over a committed reproduction) is the
    same run, not another config.
    """
    if not (saved.startswith("npz:") and now.startswith("npz:")):
        return False
    a, b = Path(saved[4:]), Path(now[4:])
    if a.is_file() and b.is_file():
        return a.samefile(b) or file_sha256(a) == file_sha256(b)
    return a.name == b.name


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def finished_without_checkpoint(cfg: TrainConfig) -> bool:
    """Whether ``cfg``'s run finished and kept only its results (a committed reproduction keeps ``best.pt``,
    ``config.yaml`` and ``metrics.jsonl``, not the training checkpoints), so
    there is nothing to train or resume.

    Raises :class:`UserError` when the folder holds a run of another config. """
    run = cfg.run_dir()
    if any((run / f).exists() for f in (LAST, PREV)) or not (run / "config.yaml").is_file():
        return False
    saved = complete(read_config_yaml(run / "config.yaml")).to_dict()
    changed = _differences(saved, complete(cfg).to_dict())
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {complete(cfg).to_dict()[k]!r}" for k in sorted(changed))
        raise UserError(f"{run} holds a finished run of another config ({diffs}); use another --out")
    metrics = run / "metrics.jsonl"
    epochs = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
    return epochs >= cfg.optim.epochs


def _restore(s: Setup, log: Callable[[str], None], *, start_if_none: bool) -> int:
    """Load the newest valid checkpoint of the run directory into ``s``; return its finished epochs.

    With no checkpoint to resume, ``start_if_none`` starts the run; otherwise that is an error: a ``--resume``
    that silently trained from scratch (a mistyped folder, a config read from elsewhere) costs hours. """
    ckpt = newest_valid(s.run_dir, log)
    if ckpt is None:
        if not start_if_none:
            raise UserError(f"nothing to resume in {s.run_dir} (no checkpoint there); run without --resume "
                            "to start "
                            "it, or add --start-if-none to resume a run or start it when it has none")
        log(f"nothing to resume in {s.run_dir}; starting fresh")
        return 0
    saved = complete(ckpt.config).to_dict()  # read through agkd_bml.migration: keys added since are filled in
    now = s.cfg.to_dict()
    changed = _differences(saved, now)
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in sorted(changed))
        raise UserError(f"cannot resume {s.run_dir}: the config differs from the saved run ({diffs}); use "
                        "--overwrite or another --out")
    if ckpt.arch != s.cfg.model.arch:
        raise UserError(f"cannot resume: checkpoint is {ckpt.arch}, config asks for {s.cfg.model.arch}")
    s.net.load_state_dict(ckpt.model)
    s.optimizer.load_state_dict(ckpt.optimizer)
    s.scheduler.load_state_dict(ckpt.scheduler)
    if ckpt.scaler:
        s.scaler.load_state_dict(ckpt.scaler)
    if s.ema is not None:
        s.ema.load_state_dict(ckpt.ema)
    s.best = dict(ckpt.best)
    return ckpt.epoch


def _validate(s: Setup, epoch: int) -> dict[str, Any]:
    """Clean and PGD accuracy (same images and starts every epoch), of the weights and of their EMA.

    The images are the ``--val-split`` held-out training images, else the first ``val_n`` test images (a trace
    of the run only: no weights are selected on them). """
    if s.val is not None:
        x, y, source = *s.val, "held-out training images"
    else:
        n = min(s.cfg.validation.val_n, s.data.x_test.shape[0])
        x, y, source = s.data.x_test[:n], s.data.y_test[:n], "first test images"
    if x.shape[0] == 0:
        return {}
    attacks = parse_attacks(f"clean,pgd-{s.cfg.validation.val_steps}", eps=s.method.eps)

    def scores(net: Classifier) -> list[AttackResult]:
        return evaluate_attacks(net, x, y, attacks, batch_size=max(s.cfg.optim.batch_size, 256),
                                device=s.device, seed=s.cfg.runtime.seed)

    clean, robust = scores(s.net)
    out = {"val_clean": clean.accuracy, "val_pgd": robust.accuracy, "val_n": int(x.shape[0]),
           "val_source": source,
           "val_attack": attacks[1].describe()}
    if s.ema is not None and s.ema_model is not None:
        s.ema_model.load_state_dict(s.ema.weights)
        clean, robust = scores(s.ema_model)
        out.update(ema_val_clean=clean.accuracy, ema_val_pgd=robust.accuracy)
    return out


def _truncate_metrics(path: Path, epochs: int) -> None:
    """Drop metric lines of epochs after the checkpoint we resume from (a crash may have left them)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["epoch"] <= epochs:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a crash
    write_text(path, "".join(k + "\n" for k in keep))


def train_epoch(s: Setup, epoch: int, *, progress: bool = True) -> dict[str, Any]:
    """Train one epoch; return its mean loss terms, its last step's lr and throughput. Raises
    :class:`TrainingDiverged`."""
    cfg, model, d = s.cfg, s.model, s.dist
    seed = epoch_seed(cfg.runtime.seed, epoch)
    order = torch.Generator().manual_seed(seed)  # the same data order on every rank...
    # ...other draws per rank
    gen = torch.Generator(device=s.device).manual_seed((seed + d.rank * 2**32) % 2**63)
    x, y = s.data.x_train, s.data.y_train
    batch = cfg.optim.batch_size // d.world
    n_batches = steps_per_epoch(x.shape[0], cfg.optim.batch_size)
    batches = iterate_batches(
        x, y, batch, device=s.device, order=order, augment=s.data.spec.augment,
        augment_generator=gen, drop_last=x.shape[0] >= cfg.optim.batch_size, shard=(d.rank, d.world),
    )
    sums: dict[str, float] = {}
    seen = 0
    lr = s.optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    model.train()
    # disable=None: tqdm turns itself off when stderr is not a terminal (no carriage returns in logs)
    bar = tqdm(batches, total=n_batches, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
               disable=None if progress and d.main else True,
               leave=False, unit="batch")
    for step, (xb, yb) in enumerate(bar):
        xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(s.device, s.amp):
            terms = s.method.loss(cast(Classifier, model), xb, yb, gen)  # a DDP wrapper calls through
        # one device-to-host copy for all terms (a float() per term would be one sync each on CUDA)
        values = dict(zip(terms, torch.stack([v.detach().float() for v in terms.values()]).tolist(),
                          strict=True))
        bad = [f"loss term {k!r}" for k, v in values.items() if not math.isfinite(v)]
        if any_rank(bool(bad), d, s.device) and not bad:
            # every rank must skip the backward (its all-reduce) together
            bad = ["a loss term on another rank"]
        s.optimizer.zero_grad(set_to_none=True)
        if not bad:
            s.scaler.scale(functools.reduce(operator.add, terms.values())).backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            # with fp16 loss scaling, an overflowing step is the scaler's business (it skips it and backs off)
            if not s.scaler.is_enabled() and not math.isfinite(float(torch.nn.utils.get_total_norm(grads))):
                bad = ["the gradient"]  # all-reduced by DDP, so the same on every rank
        if bad:
            s.skipped += 1
            where = f"{', '.join(bad)} became non-finite at epoch {epoch + 1}, step {step + 1}"
            if s.skipped > cfg.runtime.skip_nonfinite:
                raise TrainingDiverged(f"{where}; stopped, the last checkpoint is intact (try a lower --lr, "
                                       "or --skip-nonfinite N)")
            s.optimizer.zero_grad(set_to_none=True)
            bar.write(f"skipping step: {where} ({s.skipped}/{cfg.runtime.skip_nonfinite} skips used)")
            continue
        lr = s.optimizer.param_groups[0]["lr"]
        s.scaler.step(s.optimizer)
        s.scaler.update()
        if per_step(cfg):
            s.scheduler.step()
        if s.ema is not None:
            s.ema.update(s.net)
        if cfg.runtime.check_sync:
            check_in_sync(s.net, d, s.device, f"after epoch {epoch + 1}, step {step + 1}")
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v * yb.shape[0]
        seen += yb.shape[0]
        rate = seen / (time.perf_counter() - start)
        bar.set_postfix({**{k: f"{v:.3f}" for k, v in values.items()}, "img/s": f"{rate:.0f}"}, refresh=False)
    seconds = time.perf_counter() - start
    keys = sorted(sums)
    *totals, images = sum_over_ranks([sums[k] for k in keys] + [float(seen)], d, s.device)
    check_in_sync(s.net, d, s.device, f"at the end of epoch {epoch + 1}")
    return {"loss": {k: v / max(images, 1) for k, v in zip(keys, totals, strict=True)}, "lr": lr,
            "seconds": seconds, "images_per_s": images / seconds, "images": int(images), "processes": d.world,
            "precision": precision_name(s.amp)}


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    start_if_none: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    dry_run: bool = False,
    log: Callable[[str], None] = status,
) -> Path:
    """Train ``cfg`` into its run directory; return the path of the final checkpoint.

    ``resume`` continues the run's newest checkpoint and is an error where there is none, unless
    ``start_if_none`` (what scripts that rerun the same command want).

    ``dry_run`` checks everything (config, data, teacher, run directory) and stops before training. """
    if dry_run and not (resume or overwrite):
        _prepare_run_dir(cfg.run_dir(), resume=False, overwrite=False, create=False)
    s = build(cfg, resume=resume or dry_run, overwrite=overwrite and not dry_run, create=not dry_run)
    if dry_run:
        log(f"dry run: {cfg.method} ({cfg.model.arch}) on {s.data.spec.name} with "
            f"{json.dumps(s.method.settings())} is ready to train into {s.run_dir}")
        return s.run_dir / LAST
    try:
        return _run(s, resume=resume, start_if_none=start_if_none,
                    log=log if s.dist.main else (lambda _m: None),
                    progress=progress)
    finally:
        if s.board is not None:
            s.board.close()
        if s.dist.main:
            release_lock(s.run_dir / LOCK)
        distributed.teardown(s.dist)


def improves(metrics: dict[str, Any], best: dict[str, Any], key: str) -> bool:
    """Whether an epoch's held-out accuracies beat ``best.pt``'s: higher
    ``key``, or the same and higher clean.

    With 1,000 held-out images a robust curve that has flattened ties at one image's resolution; on a tie the
    earlier epoch is not the better model, the one that also classifies more clean images is (AGKD-BML-7 seed
    0 of the medium scale tied at epochs 7 and 15, 59.5% and 65.6% clean). """
    return (metrics[key], metrics["val_clean"]) > (best.get(key, -1.0), best.get("val_clean", -1.0))


def _end_epoch(s: Setup, epoch: int, stats: dict[str, Any], lr: float, log: Callable[[str], None]) -> None:
    """Validate, then write ``best.pt`` (when the held-out accuracy improved), ``last.pt`` and the metrics.

    Adversarially trained runs select by held-out PGD accuracy (Rice et al.'s early stopping), ties broken
    by held-out clean accuracy (:func:`improves`); clean runs (``standard``, no training attack) by held-out
    clean accuracy: their PGD accuracy is noise near zero.

    ``best.pt`` goes first: a crash between the two writes leaves ``last.pt`` of the epoch before, and the
    resumed run replays this epoch and writes the same ``best.pt`` again. """
    cfg = s.cfg
    metrics = {"epoch": epoch + 1, "lr": lr, **stats, **_validate(s, epoch), "method": cfg.method,
               "device": device_name(s.device), **s.method.settings(), "provenance": s.provenance}
    weights = Checkpoint(arch=cfg.model.arch, data=s.data.spec, config=cfg, epoch=epoch + 1,
                         model=s.net.state_dict(), metrics=metrics)
    by = "val_pgd" if s.method.ctx.attack.adversarial else "val_clean"
    improved = s.val is not None and improves(metrics, s.best, by)
    if improved:
        s.best = {"epoch": epoch + 1, "val_pgd": metrics["val_pgd"], "val_clean": metrics["val_clean"],
                  "by": by}
        save_best(weights, s.run_dir)
    if s.val is not None:
        metrics["best_epoch"] = s.best["epoch"]
    save_checkpoint(dataclasses.replace(weights, optimizer=s.optimizer.state_dict(),
                                        scheduler=s.scheduler.state_dict(), scaler=s.scaler.state_dict(),
                                        ema=s.ema.state_dict() if s.ema is not None else {}, best=s.best),
                    s.run_dir)
    with open(s.run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(metrics) + "\n")
    if s.board is not None:
        scalars = {**{f"loss/{k}": v for k, v in stats["loss"].items()}, "lr": lr,
                   "images_per_s": stats["images_per_s"],
                   **{f"held_out/{k}": metrics[k] for k in ("val_clean", "val_pgd", "ema_val_clean",
                                                            "ema_val_pgd")
                      if k in metrics}}
        for tag, value in scalars.items():
            s.board.add_scalar(tag, value, epoch + 1)
        s.board.flush()
    val = ""
    if "val_clean" in metrics:
        val = (f", val clean {100 * metrics['val_clean']:.1f}% / PGD-{cfg.validation.val_steps} "
               f"{100 * metrics['val_pgd']:.1f}%"
               f" ({metrics['val_n']} {metrics['val_source']}){' best' if improved else ''}")
    if "ema_val_clean" in metrics:
        val += f", EMA {100 * metrics['ema_val_clean']:.1f}% / {100 * metrics['ema_val_pgd']:.1f}%"
    loss = " ".join(f"{k} {v:.3f}" for k, v in stats["loss"].items())
    log(f"epoch {epoch + 1}/{cfg.optim.epochs}: {loss}, "
        f"{stats['seconds']:.1f}s ({stats['images_per_s']:.0f} img/s){val}")


def _run(s: Setup, *, resume: bool, start_if_none: bool, log: Callable[[str], None], progress: bool) -> Path:
    """The epochs of :func:`train`; under torchrun only rank 0 writes files (``log`` is silent elsewhere)."""
    cfg, main = s.cfg, s.dist.main
    start_epoch = _restore(s, log, start_if_none=start_if_none) if resume else 0
    # a finished run's files stay as they are (its config.yaml says what made it)
    if start_epoch >= cfg.optim.epochs:
        log(f"{s.run_dir} already finished {start_epoch} epoch(s)")
        return s.run_dir / LAST
    if main and cfg.runtime.tensorboard:
        s.board = tensorboard_writer(s.run_dir / "tensorboard")
    if main:
        write_text(s.run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        _truncate_metrics(s.run_dir / "metrics.jsonl", start_epoch)
    procs = f" x {s.dist.world} processes" if s.dist.enabled else ""
    n, used = (s.data.x_train.shape[0],
               s.data.x_train.shape[0] // cfg.optim.batch_size * cfg.optim.batch_size
               or s.data.x_train.shape[0])
    images = (f"{n} images" if used == n else f"{n} images ({used} an epoch in full batches of "
              f"{cfg.optim.batch_size}, a new draw each epoch)")
    log(f"training {cfg.method} ({cfg.model.arch}) on {s.data.spec.name}: {images}, "
        f"{cfg.optim.epochs} epochs, device {s.device}{procs}, {json.dumps(s.method.settings())}")
    if s.amp == torch.bfloat16 and not native_bf16(s.device):
        log(f"warning: --amp {cfg.runtime.amp}: this {s.device.type.upper()} has no native bf16 (AVX512-BF16 "
            "or AMX), so PyTorch emulates it and training is slower than in float32; --amp native-bf16 uses "
            "bf16 only where it is native")
    for epoch in range(start_epoch, cfg.optim.epochs):
        stats = train_epoch(s, epoch, progress=progress)
        lr = stats.pop("lr")  # the lr of the epoch's last step
        if not per_step(cfg):
            s.scheduler.step()
        if main:
            _end_epoch(s, epoch, stats, lr, log)
        distributed.barrier(s.dist)  # no rank races ahead of a checkpoint it might have to resume from
    return s.run_dir / LAST
