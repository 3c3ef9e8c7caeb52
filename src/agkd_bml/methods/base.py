"""The one interface every training objective implements.

A method turns a clean batch into named loss terms; the trainer sums them, back-propagates and logs each term.
Everything a method may need beyond the batch (the frozen teacher, the sampler of backward images, the
resolved attack budget) is handed over once in :class:`MethodContext`. """

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from agkd_bml.attacks import pgd
from agkd_bml.attacks.norms import dataset_eps
from agkd_bml.config import HyperParam, HyperParams, TrainConfig
from agkd_bml.data import DataSpec, ImageSampler
from agkd_bml.models import Classifier

LossTerms = dict[str, torch.Tensor]


def default_step_size(steps: int, eps: float) -> float:
    """The training attack's step when ``--step-size`` is not given: eps/4, or ``2.5 * eps / steps`` (capped
    at eps) where eps/4 steps cannot cross the ball.

    eps/4 is the paper's 2/255 for 7 and 10 steps. With it, two steps move at most eps/2 past the random
    start, so a 2-step method would train against about half the budget of the 7-step ones; at the small
    scale, AGKD-BML-2 with step eps kept 17.3% under PGD-20 and 8.6% under AA against 10.9% and 5.8% with
    eps/4 (docs/reproduction.md). One rule for ``train``, ``reproduce`` and the API. """
    if steps <= 0 or steps >= 4:
        return eps / 4
    return min(eps, 2.5 * eps / steps)


@dataclass(kw_only=True, frozen=True)
class TrainingAttack:
    """A run's training attack, resolved once from its config, its method and its dataset.

    The trainer, the held-out validation and ``reproduce`` all read this record, and a run's ``config.yaml``
    stores its values, so a default changed later can never change what ``--resume`` continues.
    """

    eps: float  #: L-inf budget (the dataset's default unless set)
    steps: int  #: 0: the method trains on clean images only
    step_size: float
    #: towards a chosen class (AGKD-BML's most confusing class) rather than away from the label
    targeted: bool
    loss: str  #: what the attack ascends: ``ce`` or ``kl`` (TRADES)

    @property
    def adversarial(self) -> bool:
        """Whether the method trains on adversarial examples (then held-out PGD selects its weights)."""
        return self.steps > 0


def resolve_attack(cfg: TrainConfig, spec: DataSpec) -> TrainingAttack:
    """The training attack of ``cfg`` on data ``spec``: the config's values, else the
    method's and dataset's defaults."""
    from agkd_bml.methods import METHODS  # the registry imports this module

    cls = METHODS[cfg.method]
    eps = cfg.attack.eps if cfg.attack.eps is not None else dataset_eps(spec)
    steps = cls.default_steps if cfg.attack.steps is None else cfg.attack.steps
    if cfg.attack.step_size is not None:
        step_size = cfg.attack.step_size
    elif cls.default_step is not None:
        step_size = cls.default_step * eps
    else:
        step_size = default_step_size(steps, eps)
    return TrainingAttack(eps=eps, steps=steps, step_size=step_size, targeted=cls.attack_targeted,
                          loss=cls.attack_loss)


def resolved(cfg: TrainConfig, spec: DataSpec) -> TrainConfig:
    """``cfg`` with the training attack and the label smoothing written out (what ``config.yaml`` stores)."""
    from agkd_bml.methods import METHODS

    attack = resolve_attack(cfg, spec)
    smoothing = (METHODS[cfg.method].default_smoothing if cfg.optim.label_smoothing is None
                 else cfg.optim.label_smoothing)
    return cfg.replace(eps=attack.eps, steps=attack.steps, step_size=attack.step_size,
                       label_smoothing=smoothing)


@dataclass(kw_only=True)
class MethodContext:
    """What the trainer provides to a method besides the batch."""

    num_classes: int
    attack: TrainingAttack  #: the resolved training attack
    teacher: Classifier | None = None  #: frozen, eval mode; only for methods with ``needs_teacher``
    sampler: ImageSampler | None = None  #: draws training images of given classes (backward samples)


class Method(ABC):
    """A training objective. Subclasses set ``name`` and the defaults, and implement :meth:`loss`."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""  #: one line for `agkd-bml methods`
    default_steps: ClassVar[int] = 0  #: attack steps when ``--steps`` is not given
    #: the attack step as a multiple of eps when ``--step-size`` is not
    #: given (None: :func:`default_step_size`)
    default_step: ClassVar[float | None] = None
    default_smoothing: ClassVar[float] = 0.0  #: label smoothing when ``--label-smoothing`` is not given
    attack_targeted: ClassVar[bool] = False  #: whether its training attack is targeted
    attack_loss: ClassVar[str] = "ce"  #: the loss its training attack ascends
    needs_teacher: ClassVar[bool] = False
    needs_sampler: ClassVar[bool] = False
    #: whether the training attack runs the model in train mode (BatchNorm
    #: on batch statistics) instead of eval
    attack_in_train_mode: ClassVar[bool] = False
    #: the method's own hyper-parameters, a record whose fields each become a ``--name`` option and a
    #: config key (:class:`~agkd_bml.config.HyperParams`)
    Params: ClassVar[type[HyperParams]] = HyperParams
    #: their declarations (from :attr:`Params`), for the registry, the config checks and ``--help``
    params: ClassVar[tuple[HyperParam, ...]] = ()
    #: the values of :attr:`Params` for this run: the config's, else the declared defaults
    hp: HyperParams

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.params = cls.Params.declared()

    def __init__(self, cfg: TrainConfig, ctx: MethodContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.hp = self.Params(**{p.name: cfg.params.get(p.name, p.default) for p in self.params})
        self.eps = ctx.attack.eps
        self.steps = ctx.attack.steps
        self.step_size = ctx.attack.step_size
        self.smoothing = (self.default_smoothing if cfg.optim.label_smoothing is None
                          else cfg.optim.label_smoothing)

    def settings(self) -> dict[str, float | int | bool | str]:
        """The resolved hyper-parameters, recorded in the run's metrics so every number says what made it."""
        a = self.ctx.attack  # "loss" in the metrics is the loss terms, so the attack's is "attack_loss"
        return {"eps": a.eps, "step_size": a.step_size, "steps": a.steps, "targeted": a.targeted,
                "attack_loss": a.loss, "label_smoothing": self.smoothing}

    def attack(
        self, model: Classifier, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None,
        *, targeted: bool = False,
    ) -> torch.Tensor:
        """The method's training attack: L-inf PGD with a uniform random start and its resolved budget."""
        return pgd(
            model, x, labels, eps=self.eps, step_size=self.step_size, steps=self.steps,
            targeted=targeted, generator=generator, keep_mode=self.attack_in_train_mode,
        )

    @abstractmethod
    def loss(
        self, model: Classifier, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> LossTerms:
        """Named loss terms for a clean batch ``x`` in [0, 1] with labels ``y``; the model is in train mode.

        ``generator`` (on the batch's device) is the only source of randomness, so a run is reproducible.
        """
