"""What the reproduce targets share: scales, the runs they train (or reuse), and the ways they score them.

A scale fixes everything that differs between ``small`` (2 CPU cores on the shared CIFAR-10 file), ``paper``
(WRN-28-10, 200 epochs; a GPU job) and ``tiny`` (a smoke test). Runs are trained into
``OUT/runs/<label>-s<seed>``, reused when finished and resumed when not. A scorer turns runs into
:data:`Scores` (model label -> column key -> one value per seed), which :mod:`.targets` renders. """

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import cast

import torch

from agkd_bml.attacks import Attack, PgdAttack, TransferAttack, full_length, parse_attacks
from agkd_bml.attacks.norms import dataset_eps
from agkd_bml.config import TrainConfig
from agkd_bml.data import Dataset, load_dataset
from agkd_bml.errors import UserError
from agkd_bml.evaluation import EvalState, NotSaved, evaluate_attacks
from agkd_bml.models.checkpoint import load_model
from agkd_bml.train import finished_without_checkpoint, resolve, train

Scores = dict[str, dict[str, list[float]]]  #: model label -> column key -> value per seed


@dataclass(kw_only=True, frozen=True)
class Scale:
    """Everything that differs between the small, the paper and the smoke-test scale."""

    dataset: str | None  #: None: CIFAR-10, from wherever the user has it (``reproduce --dataset``)
    arch: str
    train_limit: int | None
    epochs: int
    milestones: tuple[int, ...]
    lr: float
    batch_size: int
    seeds: tuple[int, ...]
    eval_n: int  #: test images for the fast attacks
    aa_n: int  #: test images for AutoAttack
    preset: str | None = None  #: a shipped preset the runs start from (paper scale)
    val_split: int = 0  #: training images held out for the per-epoch numbers and best.pt
    ema: float = 0.0  #: EMA decay of the weights (0: none)
    weights: str = "last"  #: which weights the tables evaluate: last, best (held-out PGD) or ema
    #: the AGKD teacher: its own run with this label smoothing (None: UM)
    teacher_smoothing: float | None = None
    #: table1 is the multi-step comparison (AT-7, SML-7, TRADES-10, MART-10, AGKD-BML-2/7)
    multi_step: bool = False
    amp: str = "auto"  #: the runs' --amp (training only: every table evaluates in full precision)


SCALES = {
    # about an hour of training on 2 CPU cores for table2 (12 runs), see docs/reproduction.md
    "small": Scale(dataset=None, arch="small-cnn", train_limit=10000, epochs=8, milestones=(6,), lr=0.05,
                   batch_size=128, seeds=(0, 1), eval_n=1000, aa_n=500),
    "paper": Scale(dataset="cifar10", arch="wrn-28-10", train_limit=None, epochs=200, milestones=(100, 150),
                   lr=0.1, batch_size=128, seeds=(0,), eval_n=10000, aa_n=10000, preset="paper-cifar10"),
    "tiny": Scale(dataset="digits", arch="small-cnn", train_limit=128, epochs=1, milestones=(), lr=0.05,
                  batch_size=64, seeds=(0, 1), eval_n=32, aa_n=8),
    # the multi-step comparison on all 50,000 CIFAR-10 training images less 1,000 held out, trained in bf16
    # autocast where the cores have it (2.2x faster on AVX512-BF16 cores, same accuracy; on cores without it
    # bf16 is emulated and slower than float32, so those train in float32: docs/reproduction.md); budget
    # measured to fit about 6.5 hours of table1 on 2 AVX512-BF16 cores, see docs/reproduction.md
    "medium": Scale(dataset=None, arch="small-cnn", train_limit=None, epochs=15, milestones=(10, 13), lr=0.05,
                    batch_size=128, seeds=(0, 1), eval_n=1000, aa_n=1000,
                    val_split=1000, ema=0.999, weights="best", teacher_smoothing=0.5, multi_step=True,
                    amp="native-bf16"),
    "tiny-medium": Scale(dataset="digits", arch="small-cnn", train_limit=128, epochs=1, milestones=(),
                         lr=0.05, batch_size=64, seeds=(0, 1), eval_n=32, aa_n=8, val_split=50, ema=0.9,
                         weights="best", teacher_smoothing=0.5, multi_step=True),
}

#: Table 2's models (the runs every target shares), each with its paper training steps: label -> method.
TABLE2 = [("UM", "standard"), ("AT", "pgd-at"), ("SML", "sml"), ("BML", "bml"), ("AGKD", "agkd"),
          ("AGKD-BML", "agkd-bml")]
DISTILLING = ("AGKD", "AGKD-BML")  #: the models whose teacher is the UM run of their seed


@dataclass(frozen=True, kw_only=True)
class DataChoice:
    """Where a reproduction's data come from: ``reproduce --dataset / --data-dir / --download``."""

    dataset: str | None = None  #: overrides the scale's (required where the scale has none: CIFAR-10 scales)
    data_dir: str | None = None
    download: bool = False


def run_config(scale: Scale, method: str, seed: int, out: Path, teacher: Path | None,
               data: DataChoice = DataChoice()) -> TrainConfig:
    """The training config of one run of a recipe."""
    base = resolve(scale.preset).to_dict() if scale.preset else {}
    if scale.preset:  # the paper preset is AGKD-BML's: other methods keep their own steps and smoothing
        base.update(steps=None, label_smoothing=None)
    base.update(method=method, seed=seed, out=str(out), teacher=str(teacher) if teacher else None,
                data_dir=data.data_dir, download=data.download)
    if not scale.preset:
        base.update(dataset=scale.dataset, arch=scale.arch, train_limit=scale.train_limit,
                    epochs=scale.epochs,
                    milestones=list(scale.milestones), lr=scale.lr, batch_size=scale.batch_size,
                    val_split=scale.val_split, ema=scale.ema, amp=scale.amp)
    cfg = TrainConfig.from_dict(base)
    cfg.validate()
    return cfg


@dataclass(kw_only=True)
class Context:
    """One reproduce call: its scale and folder, and the shared runs (trained on first use)."""

    scale_name: str
    out: Path
    progress: bool = True
    data_choice: DataChoice = DataChoice()  #: ``--dataset`` / ``--data-dir`` / ``--download``
    device: str = ""  #: where the runs trained (set by :func:`score_timing`)
    trained_s: float = 0.0  #: seconds this call spent training table2's runs (0 when all were finished)
    #: per-sample correctness by (label, seed, attack name), kept by :meth:`score` for paired tests
    flags: dict[tuple[str, int, str], torch.Tensor] = field(default_factory=dict)
    #: called with the scores so far when a scorer has some rows done and
    #: others still to train (a partial table)
    partial: Callable[[Scores], None] | None = None
    arch: str | None = None  #: train this architecture instead of the scale's (the capacity study)
    #: train and attack nothing: use finished runs and saved results only,
    #: raising :class:`NotSaved` for the rest
    saved_only: bool = False

    @property
    def scale(self) -> Scale:
        scale = SCALES[self.scale_name]
        if self.data_choice.dataset:
            scale = dataclasses.replace(scale, dataset=self.data_choice.dataset)
        elif scale.dataset is None:
            raise UserError(f"--scale {self.scale_name} trains on CIFAR-10: give --dataset cifar10 "
                            "(torchvision's files in --data-dir; --download fetches them) or --dataset "
                            "npz:PATH (docs/data.md builds one)")
        return dataclasses.replace(scale, arch=self.arch) if self.arch else scale

    @cached_property
    def runs(self) -> dict[tuple[str, int], Path]:
        """Table 2's runs by (label, seed), trained or resumed as needed."""
        found: dict[tuple[str, int], Path] = {}
        start = time.perf_counter()
        for seed in self.scale.seeds:
            um = self.run_dir("UM", seed)  # the clean model is also the AGKD teacher of its seed
            for label, method in TABLE2:
                self.train(label, seed, run_config(self.scale, method, seed, self.run_dir(label, seed),
                                                   um if label in DISTILLING else None, self.data_choice))
                found[(label, seed)] = self.run_dir(label, seed)
        self.trained_s = time.perf_counter() - start
        return found

    def run_dir(self, label: str, seed: int) -> Path:
        return self.out / "runs" / f"{label}-s{seed}"

    def train(self, label: str, seed: int, cfg: TrainConfig) -> None:
        if self.saved_only:
            metrics = cfg.run_dir() / "metrics.jsonl"
            if not metrics.is_file() or len(metrics.read_text().splitlines()) < cfg.optim.epochs:
                raise NotSaved(f"{cfg.runtime.out} has not finished")
            return
        print(f"== {label} seed {seed} -> {cfg.runtime.out}", file=sys.stderr)
        if finished_without_checkpoint(cfg):
            print(f"{cfg.runtime.out}: finished (its results are kept, not its training checkpoints); reused",
                  file=sys.stderr)
            return
        train(cfg, resume=True, start_if_none=True, progress=self.progress)

    @property
    def data_name(self) -> str:
        """The data as a table's note names them: a dataset's name, or an ``.npz`` file's name (not its path,
        which says where it was on one machine)."""
        ds = str(self.scale.dataset)
        return f"npz:{Path(ds[4:]).name}" if ds.startswith("npz:") else ds

    @cached_property
    def data(self) -> Dataset:
        dataset = self.scale.dataset
        assert dataset is not None  # the scale property asks for --dataset where the scale names none
        return load_dataset(dataset, data_dir=self.data_choice.data_dir,
                            download=self.data_choice.download)

    @property
    def train_images(self) -> int:
        """How many training images the runs saw (the k-NN index of table9)."""
        n = self.data.x_train.shape[0]
        return n if self.scale.train_limit is None else min(n, self.scale.train_limit)

    @property
    def eps(self) -> float:
        return dataset_eps(self.data.spec)

    def attacks(self, specs: str) -> list[Attack]:
        return parse_attacks(specs, eps=self.eps, num_classes=self.data.spec.num_classes)

    def test(self, n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The first ``n`` test images (fewer when the test set is smaller), their labels, and the count."""
        n = min(n, self.data.x_test.shape[0])
        return self.data.x_test[:n], self.data.y_test[:n], n

    def score(self, scores: Scores, label: str, seed: int, model: torch.nn.Module, n: int,
              attacks: list[Attack]) -> None:
        """Add each attack's robust accuracy (%) of one model on the first ``n`` test images to ``scores``."""
        x, y, _ = self.test(n)
        # every point is saved as it is computed (OUT/state), so a stopped target resumes its evaluation too
        for r in evaluate_attacks(model, x, y, attacks, seed=seed, progress=self.progress,
                                  desc=f"{label}-s{seed} ",
                                  state=EvalState(self.out / "state", saved_only=self.saved_only)):
            scores.setdefault(label, {}).setdefault(r.attack.name, []).append(100 * r.accuracy)
            self.flags[(label, seed, r.attack.name)] = r.correct

    def model(self, run: Path) -> torch.nn.Module:
        """A run's model, with the weights the scale evaluates (last, best or EMA)."""
        return load_model(run, weights=self.scale.weights)[0]


def score_attacks(ctx: Context, runs: dict[tuple[str, int], Path], specs: str, *, aa: bool = False) -> Scores:
    """Robust accuracy of each run under ``specs`` on ``eval_n`` images (and AutoAttack on ``aa_n``)."""
    scores: Scores = {}
    for (label, seed), run in runs.items():
        model = ctx.model(run)
        ctx.score(scores, label, seed, model, ctx.scale.eval_n, ctx.attacks(specs))
        if aa:
            ctx.score(scores, label, seed, model, ctx.scale.aa_n, ctx.attacks("aa"))
    return scores


def score_transfer(ctx: Context) -> Scores:
    """PGD-20 AEs crafted on the UM run of each seed (all 20 steps), scored on every other model."""
    pgd20 = ctx.attacks("pgd-20")[0]
    scores: Scores = {}
    for (label, seed), run in ctx.runs.items():
        if label == "UM":
            continue
        um = ctx.runs[("UM", seed)]
        inner = full_length(cast(PgdAttack, pgd20))
        black = TransferAttack(name="transfer", source_path=str(um), inner=inner, source=ctx.model(um))
        ctx.score(scores, label, seed, ctx.model(run), ctx.scale.eval_n, [black, pgd20])
    return scores


def score_knn(ctx: Context) -> Scores:
    """k-NN (k=50, cosine, the training images' embeddings as index) and softmax, clean and PGD-20."""
    from agkd_bml.analysis import embed, knn_predict

    data = ctx.data.limit_train(ctx.scale.train_limit, 0)
    attack = full_length(ctx.attacks("pgd-20")[0])  # the AEs' embeddings are studied
    x, y, _ = ctx.test(ctx.scale.eval_n)
    scores: Scores = {}
    for (label, seed), run in ctx.runs.items():
        model = ctx.model(run)
        index = embed(model, data.x_train, data.y_train)
        for split, emb in (("clean", embed(model, x, y)),
                           ("pgd-20", embed(model, x, y, attack=attack, seed=seed))):
            knn = knn_predict(index.embedding, index.labels, emb.embedding, k=50,
                              num_classes=data.spec.num_classes)
            cell = scores.setdefault(label, {})
            cell.setdefault(f"knn {split}", []).append(100 * float((knn == y).float().mean()))
            cell.setdefault(f"softmax {split}", []).append(100 * float((emb.pred == y).float().mean()))
    return scores


def score_timing(ctx: Context) -> Scores:
    """Attack steps, median seconds per epoch, epochs and images/s of each run, from its ``metrics.jsonl``."""
    from agkd_bml.analysis.timing import run_timing

    scores: Scores = {}
    for (label, _seed), run in ctx.runs.items():
        t = run_timing(run)
        cell = scores.setdefault(label, {})
        for key in ("steps", "median_seconds_per_epoch", "epochs", "images_per_s"):
            cell.setdefault(key, []).append(float(t[key]))
        ctx.device = t["device"]
    return scores


#: Table 6: AGKD distilling class-relevant Grad-CAM maps or class-irrelevant maps (label -> --attention).
TABLE6 = [("GC-orig", "gc-orig"), ("GC-false", "gc-false"), ("CAM-avg", "cam-avg"), ("AGKD", "agkd")]


def score_attention_variants(ctx: Context) -> Scores:
    """Train the 3 extra AGKD runs per seed (one per distilled map) and score them with table2's AGKD."""
    runs: dict[tuple[str, int], Path] = {}
    for label, kind in TABLE6:
        for seed in ctx.scale.seeds:
            if kind == "agkd":
                runs[(label, seed)] = ctx.runs[("AGKD", seed)]
                continue
            run = ctx.out / "runs" / f"AGKD-{label}-s{seed}"
            cfg = run_config(ctx.scale, "agkd", seed, run, ctx.runs[("UM", seed)]).with_params(attention=kind)
            ctx.train(f"AGKD with {label} maps", seed, cfg)
            runs[(label, seed)] = run
    return score_attacks(ctx, runs, "clean,pgd-20")
