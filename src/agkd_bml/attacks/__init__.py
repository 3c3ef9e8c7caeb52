"""L-inf attacks on models that take inputs in [0, 1], all behind :class:`Attack`; specs in :mod:`.registry`."""

from agkd_bml.attacks.apgd import APGDAttack
from agkd_bml.attacks.autoattack import AutoAttack, TorchattacksAutoAttack
from agkd_bml.attacks.base import Attack, fmt_eps
from agkd_bml.attacks.fab import FABAttack
from agkd_bml.attacks.pgd import (
    LOSSES,
    Clean,
    PGDAttack,
    ce_loss,
    cw_margin,
    eval_mode,
    most_confusing_class,
    pgd,
    project,
    uniform_start,
)
from agkd_bml.attacks.registry import ATTACKS, full_length, parse_attacks, spec_help
from agkd_bml.attacks.spsa import SPSA
from agkd_bml.attacks.square import SquareAttack
from agkd_bml.attacks.transfer import Transfer

__all__ = [
    "ATTACKS",
    "LOSSES",
    "SPSA",
    "Attack",
    "APGDAttack",
    "AutoAttack",
    "FABAttack",
    "Clean",
    "PGDAttack",
    "SquareAttack",
    "TorchattacksAutoAttack",
    "Transfer",
    "ce_loss",
    "cw_margin",
    "eval_mode",
    "fmt_eps",
    "full_length",
    "most_confusing_class",
    "parse_attacks",
    "pgd",
    "project",
    "spec_help",
    "uniform_start",
]
