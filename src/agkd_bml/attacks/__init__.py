"""Attacks on models that take inputs in [0, 1], all behind :class:`Attack`; specs in :mod:`.registry`.

``attack(model, x, y)`` returns :class:`Adversarial` (images, fooled mask) under one contract, enforced
in :mod:`.base`; the threat model's parts live in :mod:`.norms`, the shared losses in :mod:`.ops`.
"""

from agkd_bml.attacks.apgd import ApgdAttack
from agkd_bml.attacks.autoattack import AutoAttack, TorchattacksAutoAttack
from agkd_bml.attacks.base import Adversarial, Attack, Clean, Progress, fmt_eps
from agkd_bml.attacks.fab import FabAttack
from agkd_bml.attacks.norms import LINF, NORMS, Norm
from agkd_bml.attacks.ops import LOSSES, ce_loss, cw_margin, most_confusing_class, upcast
from agkd_bml.attacks.pgd import PgdAttack, pgd
from agkd_bml.attacks.registry import ATTACKS, full_length, parse_attacks, spec_help
from agkd_bml.attacks.spsa import SpsaAttack
from agkd_bml.attacks.square import SquareAttack
from agkd_bml.attacks.transfer import TransferAttack

__all__ = [
    "ATTACKS",
    "LINF",
    "LOSSES",
    "NORMS",
    "Adversarial",
    "ApgdAttack",
    "Attack",
    "AutoAttack",
    "Clean",
    "FabAttack",
    "Norm",
    "PgdAttack",
    "Progress",
    "SpsaAttack",
    "SquareAttack",
    "TorchattacksAutoAttack",
    "TransferAttack",
    "ce_loss",
    "cw_margin",
    "fmt_eps",
    "full_length",
    "most_confusing_class",
    "parse_attacks",
    "pgd",
    "spec_help",
    "upcast",
]
