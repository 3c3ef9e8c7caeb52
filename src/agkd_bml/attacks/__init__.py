"""L-inf attacks on models that take inputs in [0, 1]; see :func:`pgd` and :mod:`.specs`."""

from agkd_bml.attacks.pgd import LOSSES, ce_loss, cw_margin, eval_mode, pgd, project, uniform_start
from agkd_bml.attacks.specs import ATTACKS, AttackSpec, parse_attacks

__all__ = [
    "ATTACKS",
    "LOSSES",
    "AttackSpec",
    "ce_loss",
    "cw_margin",
    "eval_mode",
    "parse_attacks",
    "pgd",
    "project",
    "uniform_start",
]
