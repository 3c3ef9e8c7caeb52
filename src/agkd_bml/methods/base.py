"""The one interface every training objective implements.

A method turns a clean batch into named loss terms; the trainer sums them, back-propagates and logs each
term. Everything a method may need beyond the batch (the frozen teacher, the sampler of backward images,
the resolved attack budget) is handed over once in :class:`MethodContext`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from agkd_bml.attacks import pgd
from agkd_bml.config import HyperParam, TrainConfig
from agkd_bml.data import ImageSampler
from agkd_bml.models import Classifier

LossTerms = dict[str, torch.Tensor]


@dataclass
class MethodContext:
    """What the trainer provides to a method besides the batch."""

    num_classes: int
    eps: float  #: resolved training budget (the dataset's default unless set)
    teacher: Classifier | None = None  #: frozen, eval mode; only for methods with ``needs_teacher``
    sampler: ImageSampler | None = None  #: draws training images of given classes (backward samples)


class HyperValues(dict):
    """A method's resolved hyper-parameters, read as attributes (``self.hp.beta``)."""

    def __getattr__(self, name: str) -> object:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(f"no hyper-parameter {name!r} (declare it in the method's params)") from exc


class Method(ABC):
    """A training objective. Subclasses set ``name`` and the defaults, and implement :meth:`loss`."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""  #: one line for `agkd-bml methods`
    default_steps: ClassVar[int] = 0  #: attack steps when ``--steps`` is not given
    default_smoothing: ClassVar[float] = 0.0  #: label smoothing when ``--label-smoothing`` is not given
    needs_teacher: ClassVar[bool] = False
    needs_sampler: ClassVar[bool] = False
    #: the method's own hyper-parameters: each becomes a ``--name`` option and a config key
    params: ClassVar[tuple[HyperParam, ...]] = ()

    def __init__(self, cfg: TrainConfig, ctx: MethodContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        #: resolved values of :attr:`params` (``self.hp.beta``); the config's, else the declared default
        self.hp = HyperValues({p.name: cfg.params.get(p.name, p.default) for p in self.params})
        self.eps = ctx.eps
        self.steps = self.default_steps if cfg.steps is None else cfg.steps
        self.step_size = cfg.step_size if cfg.step_size is not None else self.eps / 4
        self.smoothing = self.default_smoothing if cfg.label_smoothing is None else cfg.label_smoothing

    def settings(self) -> dict[str, float | int | bool]:
        """The resolved hyper-parameters, recorded in the run's metrics so every number says what made it."""
        return {"eps": self.eps, "step_size": self.step_size, "steps": self.steps, "label_smoothing": self.smoothing}

    def attack(
        self, model: Classifier, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None,
        *, targeted: bool = False,
    ) -> torch.Tensor:
        """The method's training attack: L-inf PGD with a uniform random start and its resolved budget."""
        return pgd(
            model, x, labels, eps=self.eps, step_size=self.step_size, steps=self.steps,
            targeted=targeted, generator=generator,
        )

    @abstractmethod
    def loss(
        self, model: Classifier, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> LossTerms:
        """Named loss terms for a clean batch ``x`` in [0, 1] with labels ``y``; the model is in train mode.

        ``generator`` (on the batch's device) is the only source of randomness, so a run is reproducible.
        """
