"""AutoAttack (Croce & Hein 2020), standard version, L-inf or L2: APGD-CE, APGD-T, FAB-T, Square-5000.

The ensemble is a per-sample cascade: each part only sees the images that are still robust, and an image
counts as robust only if all four fail on it. Every part has the reference parameters (100 iterations,
9 target classes, 5,000 queries, 1 restart); the L2 version differs only in each part's threat model.

Two implementations with the same interface:

- ``aa`` (:class:`AutoAttack`): our batched parts (:mod:`.apgd`, :mod:`.fab`, :mod:`.square`) on a model
  prepared once per batch (:func:`~agkd_bml.models.inference.inference_copy`); images leave each part at
  their first success, and on a GPU the target classes run in one batch.
- ``aa-bf16``: ``aa`` with its search passes under bf16 autocast, 1.4-1.5x faster where bf16 is native
  (CPUs with AVX512-BF16 or AMX, recent GPUs). A bf16 pass can call a point adversarial that is not at
  full precision (it sits on the decision boundary), so every success is checked with a float32 pass,
  and an image whose success does not hold gets that part again in float32: the images it reports broken
  are broken at full precision, and the ones bf16 only nearly broke get the reference attack
  (:class:`~agkd_bml.attacks.engines.Bf16Search`).
- ``aa-torchattacks`` (:class:`TorchattacksAutoAttack`): the same cascade composed from torchattacks'
  classes, kept as the independent reference that tests and the benchmark compare against.
  (torchattacks' own ``AutoAttack`` class runs APGD with 10 iterations, not the reference's 100.)

Both report their progress after each part (:class:`~agkd_bml.attacks.base.Progress`), so a resumable
evaluation interrupted inside a batch continues at the part it stopped in. """

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from agkd_bml.attacks.apgd import APGD_STEPS, ApgdAttack, num_targets
from agkd_bml.attacks.base import Attack, Progress, fmt_eps, restore_rng, rng_state
from agkd_bml.attacks.engines import Bf16Search, Fp32Search
from agkd_bml.attacks.fab import FAB_STEPS, FabAttack
from agkd_bml.attacks.norms import LINF, Norm
from agkd_bml.attacks.square import SQUARE_QUERIES, SquareAttack
from agkd_bml.attacks.torchattacks_adapter import run_library_attack, torchattacks
from agkd_bml.errors import UserError
from agkd_bml.models.inference import channels_last, inference_copy

COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")
#: per-part progress (part, images broken, images still robust); the command line shows it on stderr
log = logging.getLogger(__name__)

Factory = Callable[[nn.Module, int], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


def _targets(attack: Any, num_classes: int) -> Any:
    attack.n_target_classes = num_targets(num_classes)
    return attack


def torchattacks_component(name: str, eps: float, num_classes: int, norm: Norm = LINF) -> Factory:
    """``make(logits_model, seed)`` for one part, built from torchattacks with the reference parameters."""
    lp = {"linf": "Linf", "l2": "L2"}[norm.name]
    if name == "apgd-ce":
        return lambda m, seed: torchattacks().APGD(
            m, norm=lp, eps=eps, steps=APGD_STEPS, n_restarts=1, seed=seed, loss="ce", rho=0.75
        )
    if name == "apgd-t":
        return lambda m, seed: _targets(torchattacks().APGDT(
            m, norm=lp, eps=eps, steps=APGD_STEPS, n_restarts=1, seed=seed, rho=0.75, n_classes=num_classes
        ), num_classes)
    if name == "fab-t":
        return lambda m, seed: _targets(torchattacks().FAB(
            m, norm=lp, eps=eps, steps=FAB_STEPS, n_restarts=1, seed=seed, multi_targeted=True,
            n_classes=num_classes,
        ), num_classes)
    if name == "square":
        return lambda m, seed: torchattacks().Square(
            m, norm=lp, eps=eps, n_queries=SQUARE_QUERIES, n_restarts=1, p_init=0.8, loss="margin",
            resc_schedule=True, seed=seed,
        )
    raise ValueError(f"unknown AutoAttack component {name!r}")


def native_components(
    eps: float, num_classes: int, eot: int = 1, norm: Norm = LINF,
) -> dict[str, ApgdAttack | FabAttack | SquareAttack]:
    """Our parts, by name (the standard four, and APGD-DLR of the rand version); ``eot`` for the APGD ones."""
    return {"apgd-ce": ApgdAttack(name="apgd-ce", eps=eps, num_classes=num_classes, eot=eot, norm=norm),
            "apgd-dlr": ApgdAttack(name="apgd-dlr", eps=eps, num_classes=num_classes, loss="dlr", eot=eot,
                                   norm=norm),
            "apgd-t": ApgdAttack(name="apgd-t", eps=eps, num_classes=num_classes, targeted=True, norm=norm),
            "fab-t": FabAttack(name="fab-t", eps=eps, num_classes=num_classes, norm=norm),
            "square": SquareAttack(name="square", eps=eps, norm=norm)}


#: AutoAttack's version for randomized defences: APGD-CE and APGD-DLR, gradients averaged over 20 passes.
RAND_COMPONENTS, RAND_EOT = ("apgd-ce", "apgd-dlr"), 20


@dataclass(kw_only=True, frozen=True)
class AutoAttack(Attack):
    """``aa``: APGD-CE, APGD-T, FAB-T, Square (5,000 queries) as a per-sample cascade, batched parts."""

    eps: float
    num_classes: int
    name: str = "aa"
    components: tuple[str, ...] = COMPONENTS
    library: str = "agkd-bml"
    #: ``fp32``, or ``bf16``: search passes under bf16 autocast, every success confirmed in float32.
    precision: str = "fp32"
    eot: int = 1  #: APGD passes per gradient: 1 (standard version) or 20 (``aa-rand``, with RAND_COMPONENTS)
    norm: Norm = LINF
    #: images each part broke, summed over calls (not a setting: the evaluation reads it for its checks)
    fooled_by: dict[str, int] = field(default_factory=dict, compare=False, hash=False, repr=False)
    #: wall seconds spent in each part, summed over calls (the benchmark's per-part times)
    seconds_by: dict[str, float] = field(default_factory=dict, compare=False, hash=False, repr=False)
    #: the last call's ``"part"``: per image, the index in :attr:`components`
    #: of the part that broke it (-1: none)
    last: dict[str, torch.Tensor] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def broken_by(self) -> list[str | None]:
        """For each image of the last call, the name of the part that broke it (None: no part did)."""
        part = self.last.get("part")
        return [] if part is None else [self.components[k] if k >= 0 else None for k in part.tolist()]

    def _count(self, part: str, fooled: torch.Tensor, started: float) -> None:
        self.fooled_by[part] = self.fooled_by.get(part, 0) + int(fooled.sum())
        self.seconds_by[part] = self.seconds_by.get(part, 0.0) + time.perf_counter() - started

    @property
    def version(self) -> str:
        return "rand" if self.eot > 1 else "standard"

    def settings(self) -> dict[str, Any]:
        parts = native_components(self.eps, self.num_classes, self.eot, self.norm)
        return {"attack": "autoattack", "version": self.version, "eps": self.eps,
                **{c: {k: v for k, v in parts[c].settings().items() if k not in ("attack", "eps")}
                   for c in self.components},
                "cascade": "per-sample", "library": self.library, "precision": self.precision}

    def describe(self) -> str:
        precision = ", bf16 search, successes confirmed in fp32" if self.precision == "bf16" else ""
        if self.version == "rand":
            return (f"{self.name}: AutoAttack rand (for randomized models), {self.norm.title} eps "
                    f"{fmt_eps(self.eps)}: APGD-CE and APGD-DLR ({APGD_STEPS} it., gradients averaged over "
                    f"{self.eot} passes), 1 restart each, per-sample cascade ({self.library}{precision})")
        return (f"{self.name}: AutoAttack standard, {self.norm.title} eps {fmt_eps(self.eps)}: APGD-CE "
                f"({APGD_STEPS} it.), APGD-T ({APGD_STEPS} it., {num_targets(self.num_classes)} targets), "
                f"FAB-T ({FAB_STEPS} it.), Square ({SQUARE_QUERIES} queries), 1 restart each, per-sample "
                f"cascade ({self.library}{precision})")

    def _search(self, device: torch.device) -> Fp32Search | Bf16Search:
        """How the parts search: as they are, or under bf16 with each success confirmed in float32."""
        if self.precision == "fp32":
            return Fp32Search()
        if self.precision != "bf16":
            raise ValueError(f"AutoAttack precision must be fp32 or bf16, not {self.precision!r}")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError(f"{self.name}: this GPU has no bf16 support; use aa (float32)")
        return Bf16Search(device)

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        return self._cascade(model, x, y, generator, None)

    def run_staged(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None,
        progress: Progress,
    ) -> torch.Tensor:
        """The cascade, reporting after each part: a batch interrupted in Square resumes at Square."""
        return self._cascade(model, x, y, generator, progress)

    def _prepare(self, model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
        """The model and images the parts attack: the folded, channels-last copy."""
        return inference_copy(model), channels_last(x.detach())

    def _part(
        self, name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
        generator: torch.Generator | None,
        progress: Progress | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(adv, fooled) of part ``name`` on the still-robust images ``x``; ``progress`` within the part."""
        part = native_components(self.eps, self.num_classes, self.eot, self.norm)[name]

        def redo(net: nn.Module, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return part.run_prepared(net, xs, ys, generator)

        def search(net: nn.Module, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if progress is None:
                return redo(net, xs, ys)
            return part.run_prepared_staged(net, xs, ys, generator, progress)

        return self._search(x.device)(search, redo, model, x, y)

    def _cascade(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None,
        progress: Progress | None,
    ) -> torch.Tensor:
        """Each part on the images no earlier part broke; with ``progress``, resumable between parts.

        What a resume needs after part ``k`` is small: the images found so far, the robust mask, the
        generator's state (the next part must draw the same numbers) and the tally of this batch. A part
        that reports within itself (Square) is reported as the next part with its own state (``inner``).
        """
        net, xs = self._prepare(model, x)
        saved = progress.saved if progress is not None else None
        if saved is not None:
            start, adv, robust, tally = self._restore(saved, xs, generator)
            part = saved.get("part_of", torch.full_like(y, -1)).to(y.device)
        else:
            start, adv, tally = 0, xs.clone(), {}
            with torch.no_grad():
                robust = net(xs).logits.argmax(1) == y
            part = torch.full_like(y, -1)
        self.last["part"] = part
        for k in range(start, len(self.components)):
            name = self.components[k]
            idx = robust.nonzero().squeeze(1)
            if not idx.numel():
                break
            started = time.perf_counter()
            inner = None
            if progress is not None:
                inner = Progress(saved["inner"] if saved is not None and k == start and "inner" in saved
                                 else None,
                                 self._reporter(progress, k, adv, robust, part, tally, generator))
            found, fooled = self._part(name, net, xs[idx], y[idx], generator, inner)
            adv[idx[fooled]] = found[fooled]
            robust[idx[fooled]] = False
            part[idx[fooled]] = k
            self._count(name, fooled, started)
            tally[name] = tally.get(name, 0) + int(fooled.sum())
            log.info("%s: %s broke %d of %d, %d of %d images still robust (%.1f s)", self.name, name,
                     int(fooled.sum()),
                     idx.numel(), int(robust.sum()), robust.numel(), time.perf_counter() - started)
            if progress is not None and k + 1 < len(self.components):
                self._reporter(progress, k + 1, adv, robust, part, tally, generator)(None)
        return adv

    @staticmethod
    def _reporter(
        progress: Progress, part: int, adv: torch.Tensor, robust: torch.Tensor, part_of: torch.Tensor,
        tally: dict[str, int], generator: torch.Generator | None,
    ) -> Callable[[dict[str, Any] | None], None]:
        """Report the cascade before ``part``, with that part's own state (``inner``, which holds the
        generator's) or, when the part has not started (None), with the generator's state."""
        def report(inner: dict[str, Any] | None) -> None:
            state = {"part": part, "adv": adv.to("cpu", copy=True), "robust": robust.to("cpu", copy=True),
                     "part_of": part_of.to("cpu", copy=True), "fooled_by": dict(tally)}
            if inner is not None:
                state["inner"] = inner
            else:
                state["rng"] = rng_state(generator)
            progress.report(state)

        return report

    def _restore(
        self, saved: dict[str, Any], xs: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[int, torch.Tensor, torch.Tensor, dict[str, int]]:
        """(next part, adv, robust, tally) from what an interrupted call reported; its tally counts again."""
        start, adv, robust = int(saved["part"]), saved["adv"], saved["robust"]
        if not 0 <= start < len(self.components) or adv.shape != xs.shape or robust.shape != xs.shape[:1]:
            raise UserError(f"{self.name}: the saved progress of this batch does not fit it (part {start}, "
                            f"{tuple(adv.shape)} images for {tuple(xs.shape)}); delete the state")
        restore_rng(generator, saved.get("rng"))  # None with ``inner``: the part's own state holds it
        tally = {str(k): int(v) for k, v in saved["fooled_by"].items()}
        for part, count in tally.items():
            self.fooled_by[part] = self.fooled_by.get(part, 0) + count
        return start, adv.to(xs.device, xs.dtype), robust.to(xs.device), tally


@dataclass(kw_only=True, frozen=True)
class TorchattacksAutoAttack(AutoAttack):
    """``aa-torchattacks``: the same cascade built from torchattacks' classes (the reference for checks)."""

    name: str = "aa-torchattacks"
    library: str = "torchattacks"

    def _prepare(self, model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
        return model, x.detach()

    def _part(
        self, name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
        generator: torch.Generator | None,
        progress: Progress | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """torchattacks' parts cannot resume within themselves: the cascade resumes between them only."""
        make = torchattacks_component(name, self.eps, self.num_classes, self.norm)
        found = run_library_attack(make, model, x, y, eps=self.eps, generator=generator, norm=self.norm)
        with torch.no_grad():
            return found, model(found).logits.argmax(1) != y
