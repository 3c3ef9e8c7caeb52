"""Attack specs from CLI strings such as ``clean,fgsm,bim-7,pgd-20,cw-100,mim-40,aa,square-5000,spsa-100``.

A new attack is one new file plus one :data:`ATTACKS` line: a builder from (steps, context) to an
:class:`Attack`, and whether it takes a step count. """

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from torch import nn

from agkd_bml.attacks.apgd import ApgdAttack
from agkd_bml.attacks.autoattack import RAND_COMPONENTS, RAND_EOT, AutoAttack, TorchattacksAutoAttack
from agkd_bml.attacks.base import Attack, Clean
from agkd_bml.attacks.fab import FabAttack
from agkd_bml.attacks.norms import LINF, NORMS, Norm
from agkd_bml.attacks.pgd import PgdAttack
from agkd_bml.attacks.spsa import SpsaAttack
from agkd_bml.attacks.square import SQUARE_QUERIES, SquareAttack
from agkd_bml.attacks.transfer import TransferAttack
from agkd_bml.errors import UserError


@dataclass(kw_only=True, frozen=True)
class Context:
    """What a spec string does not say: the budget, the number of classes, and the CLI's overrides."""

    eps: float
    num_classes: int = 10
    step_size: float | None = None
    restarts: int = 1
    targeted: bool = False
    norm: Norm = LINF  #: the threat model of every attack built


def _linf_only(name: str, ctx: Context) -> None:
    if ctx.norm is not LINF:
        raise UserError(f"attack {name!r} is available for the L-inf threat model only (not --norm "
                        f"{ctx.norm.name})")


def _spsa(k: int, ctx: Context) -> Attack:
    _linf_only("spsa", ctx)
    return SpsaAttack(name=f"spsa-{k}", steps=k, eps=ctx.eps)


def _gradient(name: str, steps: int, ctx: Context, *, step_size: float, random_start: bool,
              **kw) -> PgdAttack:
    return PgdAttack(
        name=name, steps=steps, eps=ctx.eps,
        step_size=ctx.step_size if ctx.step_size is not None else step_size, random_start=random_start,
        restarts=ctx.restarts if random_start else 1, targeted=ctx.targeted, early_stop=True, norm=ctx.norm,
        **kw,
    )


@dataclass(kw_only=True, frozen=True)
class Family:
    build: Callable[[int, Context], Attack]
    steps: str  #: "none" (``fgsm``), "required" (``pgd-20``) or "optional" (``square`` = ``square-5000``)
    default_steps: int = 1
    help: str = ""


#: Step sizes: eps/4 (2/255 at 8/255) for BIM, PGD and CW; eps/steps for MIM (Dong et al.); eps for FGSM.
#: Under L2 the same sizes apply to normalised-gradient steps (FGSM is then FGM).
ATTACKS: dict[str, Family] = {
    "clean": Family(build=lambda k, c: Clean(c.eps, norm=c.norm), steps="none", help="no attack"),
    "fgsm": Family(build=lambda k, c: _gradient("fgsm", 1, c, step_size=c.eps, random_start=False),
                   steps="none",
                   help="one signed-gradient step of size eps"),
    "bim": Family(build=lambda k, c: _gradient(f"bim-{k}", k, c, step_size=c.eps / 4, random_start=False),
                  steps="required",
                  help="K steps of eps/4, no random start"),
    "pgd": Family(build=lambda k, c: _gradient(f"pgd-{k}", k, c, step_size=c.eps / 4, random_start=True),
                  steps="required",
                  help="K steps of eps/4 (2/255 at 8/255) from a uniform random start"),
    "cw": Family(build=lambda k,
                 c: _gradient(f"cw-{k}", k, c, step_size=c.eps / 4, random_start=True, loss="cw"),
                 steps="required", help="PGD-K on the CW margin loss (margin 50)"),
    "mim": Family(build=lambda k,
                  c: _gradient(f"mim-{k}", k, c, step_size=c.eps / k, random_start=False, momentum=1.0),
                  steps="required", help="K momentum steps of eps/K (momentum 1.0)"),
    "aa": Family(build=lambda k, c: AutoAttack(eps=c.eps, num_classes=c.num_classes, norm=c.norm),
                 steps="none",
                 help="AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square-5000, per-sample cascade "
                      "(batched)"),
    "aa-bf16": Family(build=lambda k,
                      c: AutoAttack(eps=c.eps, num_classes=c.num_classes, name="aa-bf16", precision="bf16",
                                                       norm=c.norm), steps="none",
                      help="aa with bf16 search passes, each success confirmed (or the part redone) in "
                           "float32; faster where bf16 is native (AVX512-BF16/AMX CPUs, recent GPUs)"),
    "aa-rand": Family(build=lambda k,
                      c: AutoAttack(eps=c.eps, num_classes=c.num_classes, name="aa-rand",
                                    components=RAND_COMPONENTS,
                                              eot=RAND_EOT, norm=c.norm), steps="none",
                      help="AutoAttack's rand version for randomized models: APGD-CE and APGD-DLR with "
                           "gradients averaged over 20 passes (EoT), per-sample cascade"),
    "aa-torchattacks": Family(build=lambda k,
                              c: TorchattacksAutoAttack(eps=c.eps, num_classes=c.num_classes, norm=c.norm),
                              steps="none",
                              help="the same AutoAttack cascade composed "
                                   "from torchattacks (reference, slower)"),
    "apgd-ce": Family(build=lambda k,
                      c: ApgdAttack(name="apgd-ce", eps=c.eps, num_classes=c.num_classes, norm=c.norm),
                      steps="none",
                      help="APGD on CE, 100 iterations"),
    "apgd-dlr": Family(build=lambda k,
                       c: ApgdAttack(name="apgd-dlr", eps=c.eps, num_classes=c.num_classes, loss="dlr",
                                     norm=c.norm),
                       steps="none",
                       help="APGD on the untargeted DLR loss, 100 iterations"),
    "apgd-t": Family(build=lambda k,
                     c: ApgdAttack(name="apgd-t", eps=c.eps, num_classes=c.num_classes, targeted=True,
                                   norm=c.norm),
                     steps="none",
                     help="targeted APGD on DLR, 100 iterations, 9 targets"),
    "fab-t": Family(build=lambda k,
                    c: FabAttack(name="fab-t", eps=c.eps, num_classes=c.num_classes, norm=c.norm),
                    steps="none",
                    help="targeted FAB, 100 iterations, 9 targets"),
    "square": Family(build=lambda k, c: SquareAttack(name=f"square-{k}", eps=c.eps, queries=k, norm=c.norm),
                     steps="optional",
                     default_steps=SQUARE_QUERIES, help="Square attack with K queries (gradient-free)"),
    "spsa": Family(build=_spsa, steps="required",
                   help="SpsaAttack with K iterations of 128 samples (gradient-free; L-inf only)"),
}
_SPEC = re.compile(r"^([a-z]+(?:-[a-z][a-z0-9]*)?)(?:-(\d+))?$")
TRANSFER_PREFIX = "transfer:"

#: Loads a source checkpoint for ``transfer:PATH`` onto the evaluation device.
SourceLoader = Callable[[str], nn.Module]


AttackT = TypeVar("AttackT", bound=Attack)


def full_length(attack: AttackT) -> AttackT:
    """``attack`` with all its steps run on every image.

    Evaluation stops each image at its first fooling iterate, which is right for counting broken points but
    leaves AEs just across the decision boundary. AEs that are studied (embeddings, k-NN, t-SNE, attention) or
    transferred to another model must be the full attack's, as in the paper. """
    return (replace(attack, early_stop=False) if isinstance(attack, PgdAttack) and attack.early_stop
            else attack)


def spec_help() -> str:
    """One line per family for ``--help`` and error messages."""
    lines = [f"{name}{'-K' if f.steps == 'required' else '[-K]' if f.steps == 'optional' else ''}: {f.help}"
             for name, f in ATTACKS.items()]
    return "; ".join(lines + ["transfer:CHECKPOINT: PGD-20 crafted on another model (black-box)"])


def _one(item: str, ctx: Context, load_source: SourceLoader | None) -> Attack:
    if item.startswith(TRANSFER_PREFIX):
        path = item[len(TRANSFER_PREFIX):]
        if not path:
            raise UserError("transfer: needs a source checkpoint, e.g. transfer:runs/teacher")
        if load_source is None:
            raise UserError("transfer attacks need a source model loader here")
        # all 20 steps on the source: stopping once the *source* is fooled would weaken the transfer
        inner = full_length(ATTACKS["pgd"].build(20, replace(ctx, targeted=False)))
        assert isinstance(inner, PgdAttack)  # the "pgd" family builds PgdAttack
        return TransferAttack(name=item, source_path=path, inner=inner, source=load_source(path))
    m = _SPEC.match(item.lower())
    family = ATTACKS.get(m.group(1)) if m else None
    if m is None or family is None:
        raise UserError(f"unknown attack spec {item!r}; known: {', '.join(ATTACKS)}, transfer:CHECKPOINT")
    name, steps = m.group(1), m.group(2)
    if family.steps == "none" and steps is not None:
        raise UserError(f"attack {name!r} takes no step count; write {name!r}")
    if family.steps == "required" and steps is None:
        raise UserError(f"attack {item!r} needs a positive step count, e.g. {name}-20")
    k = int(steps) if steps is not None else family.default_steps
    if k <= 0:
        raise UserError(f"attack {item!r} needs a positive step count, e.g. {name}-20")
    return family.build(k, ctx)


def parse_attacks(
    text: str,
    *,
    eps: float,
    num_classes: int = 10,
    step_size: float | None = None,
    restarts: int = 1,
    targeted: bool = False,
    load_source: SourceLoader | None = None,
    norm: str = "linf",
) -> list[Attack]:
    """Parse ``clean,fgsm,pgd-20,...`` into attacks; ``step_size``,
    ``restarts``, ``targeted`` override defaults.

    ``norm``: the threat model, ``linf`` (default) or ``l2``. """
    if norm not in NORMS:
        raise UserError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
    if not eps >= 0:
        raise UserError(f"eps must be >= 0; got {eps}")
    if eps > 1 and norm == "linf":
        raise UserError(f"eps {eps} is larger than the whole [0, 1] pixel range; did you mean {eps:g}/255?")
    if step_size is not None and not step_size > 0:
        raise UserError(f"step size must be > 0; got {step_size}")
    if restarts < 1:
        raise UserError(f"restarts must be >= 1; got {restarts}")
    ctx = Context(eps=eps, num_classes=num_classes, step_size=step_size, restarts=restarts, targeted=targeted,
                  norm=NORMS[norm])
    attacks = [_one(item.strip(), ctx, load_source) for item in text.split(",") if item.strip()]
    if not attacks:
        raise UserError("no attack given; e.g. --attacks clean,fgsm,pgd-20")
    names = [a.name for a in attacks]
    if len(set(names)) != len(names):
        raise UserError(f"an attack is listed twice in {text!r}")
    return attacks
