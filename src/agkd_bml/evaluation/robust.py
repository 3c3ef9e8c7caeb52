"""Accuracy under attack, per sample, so that a worst case over attacks can be taken afterwards.

Convention (AutoAttack / RobustBench): a test point counts as robust under an attack only if the model
classifies it correctly both clean and attacked, and attacks are run only on the points it gets right clean
(the others are already errors; attacking them would only cost time). """

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from tqdm.auto import tqdm

from agkd_bml import distributed
from agkd_bml.attacks import Attack, Progress
from agkd_bml.data import to_float
from agkd_bml.evaluation.state import EvalState, Point, model_digest, tensor_digest
from agkd_bml.evaluation.stats import wilson_interval
from agkd_bml.models.modes import eval_mode


@dataclass
class AttackResult:
    """Per-sample outcome of one attack on one model."""

    attack: Attack
    correct: torch.Tensor  #: bool (n,), True where the model is still right on the attacked image
    seed: int

    @property
    def n(self) -> int:
        return int(self.correct.numel())

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean()) if self.n else float("nan")

    def wilson(self, z: float = 1.96) -> tuple[float, float]:
        """95% Wilson score interval of the accuracy."""
        return wilson_interval(self.accuracy, self.n, z)


@contextmanager
def no_cudnn_benchmark() -> Iterator[None]:
    """cuDNN's benchmark mode off while attacking, restored after.

    Training turns it on (fixed batch shapes: each shape is timed once, then the fastest kernels run). An
    evaluation's batch shapes vary without end: attacks run on the clean-correct images only, PGD drops each
    image as it is fooled, AutoAttack's parts take the survivors of the last. With benchmark mode on, every
    new shape is timed anew, forward and backward, in every layer; a ``reproduce`` process that trains and
    then evaluates would spend most of its time there. """
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def evaluate_attacks(
    model: nn.Module,  # called on images in [0, 1], returns ModelOutput
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: list[Attack],
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    desc: str = "",
    state: EvalState | None = None,
) -> list[AttackResult]:
    """Run each attack on images ``x`` (N, C, H, W; uint8, or float in [0, 1]) with labels ``y``.

    Batch ``b`` of every attack draws its randomness from a generator seeded by ``(seed, b)``, so a number is
    reproducible and does not depend on how the batches were shared out: under ``torchrun`` each rank attacks
    every world-th batch and all ranks get the gathered result, identical to one process's. With ``state``,
    results are saved as they come and a rerun continues where it stopped (same result). """
    device = torch.device(device)
    job = distributed.current()
    digest = model_digest(model) if state is not None else ""
    results = []
    with eval_mode(model), no_cudnn_benchmark():
        def run(attack: Attack | None, xs: torch.Tensor, ys: torch.Tensor, label: str) -> torch.Tensor:
            point = None
            if state is not None:
                point = state.load({"model": digest, "images": tensor_digest(xs, ys), "seed": seed,
                                    "rng": "per-batch",
                                    "batch_size": batch_size, "attack": _identity(attack)})
            bar = tqdm(total=math.ceil(xs.shape[0] / batch_size), desc=f"{desc}{label}", leave=False,
                       unit="batch",
                       disable=None if progress and attack is not None and job.main else True)
            with bar:
                return _correct(model, xs, ys, attack,
                                _Run(batch_size=batch_size, device=device, seed=seed, job=job, bar=bar,
                                     state=state), point)

        clean = run(None, x, y, "clean")
        for attack in attacks:
            correct = torch.zeros_like(clean)
            idx = clean.nonzero().squeeze(1)
            if idx.numel():
                correct[idx] = run(attack, x[idx], y[idx], attack.name)
            results.append(AttackResult(attack, correct, seed))
    return results


def _identity(attack: Attack | None) -> dict:
    """What an attack's result depends on, as the key of its saved state."""
    if attack is None:
        return {"attack": "none"}
    return {"name": attack.name, "eps": attack.eps, "norm": attack.norm.name, **attack.settings()}


def batch_generator(device: torch.device, seed: int, index: int) -> torch.Generator:
    """The generator of batch ``index``: ``seed`` itself for the first
    batch, a hash of both for the others."""
    if index == 0:
        return torch.Generator(device=device).manual_seed(seed)
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@dataclass(kw_only=True)
class _Run:
    """How one point's batches are computed: where, seeded how, by which ranks, shown and saved where."""

    batch_size: int
    device: torch.device
    seed: int
    job: distributed.Dist
    bar: tqdm
    state: EvalState | None


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack | None, r: _Run,
             point: Point | None) -> torch.Tensor:
    """Per-sample correctness of ``model`` on ``x`` attacked by ``attack`` (clean when None).

    Batches go in rounds of one per rank; after each round every rank holds all results so far, and rank 0
    saves them (``state``), so a stopped run resumes at its first unfinished round. A cascade's per-part tally
    (which part broke how many images, read by the checks) travels and is saved with each batch, so it covers
    all batches, also those of other ranks or of an earlier, interrupted run. """
    total = math.ceil(x.shape[0] / r.batch_size)
    done = list(point.batches) if point is not None else []
    tallies = list(point.tallies) if point is not None else []
    r.bar.update(len(done))
    for first in range(len(done) if not (point and point.done) else total, total, r.job.world):
        b = first + r.job.rank
        progress = _progress(point, b, r) if b < total else None
        mine = _batch(model, x, y, attack, b, r, progress) if b < total else None
        got = [cast(tuple[torch.Tensor, dict[str, int]], t) for t in distributed.gather_objects(mine, r.job)
               if t is not None]
        done.extend(c for c, _ in got)
        tallies.extend(t for _, t in got)
        r.bar.update(len(got))
        if r.state is not None and point is not None and r.job.main:
            point.batches, point.tallies, point.done, point.partial = done, tallies, len(done) == total, None
            r.state.save(point)
    # nothing to do: mark it done
    if r.state is not None and point is not None and not point.done and r.job.main:
        point.batches, point.tallies, point.done, point.partial = done, tallies, True, None
        r.state.save(point)
    counts = getattr(attack, "fooled_by", None)
    if counts is not None:
        counts.clear()
        for tally in tallies:
            for part, k in tally.items():
                counts[part] = counts.get(part, 0) + k
    return torch.cat(done) if done else torch.zeros(0, dtype=torch.bool)


def _progress(point: Point | None, b: int, r: _Run) -> Progress | None:
    """Batch ``b``'s progress within the attack: resumed from and saved to ``point`` (rank 0's batches).

    A report is saved like a finished batch, at most every ``SAVE_EVERY_S``; the finished batches saved with
    it are the ones before ``b``, so a resume continues batch ``b`` where its last report left it. """
    if r.state is None or point is None or not r.job.main:
        return None
    state = r.state
    partial = point.partial
    saved = partial["progress"] if partial is not None and partial.get("batch") == b else None

    def report(progress: dict[str, Any]) -> None:
        point.partial = {"batch": b, "progress": progress}
        state.save(point)

    return Progress(saved, report)


def _batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack | None, b: int,
           r: _Run, progress: Progress | None) -> tuple[torch.Tensor, dict[str, int]]:
    """Correctness on batch ``b`` (on the CPU, ready to be gathered and
    saved) and the attack's tally of it."""
    sl = slice(b * r.batch_size, (b + 1) * r.batch_size)
    xb, yb = to_float(x[sl]).to(r.device), y[sl].to(r.device)
    if attack is None:
        with torch.no_grad():
            return (model(xb).logits.argmax(1) == yb).cpu(), {}
    counts = getattr(attack, "fooled_by", None)
    before = dict(counts) if counts is not None else {}
    correct = (~attack(model, xb, yb, batch_generator(r.device, r.seed, b), progress=progress).fooled).cpu()
    return correct, {k: v - before.get(k, 0) for k, v in (counts or {}).items()}
