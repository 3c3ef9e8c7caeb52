"""Robust accuracy under attack specs, the tables that report it, accuracy curves and the masking audit."""

from agkd_bml.evaluation.audit import Check, audit, verdict, write_audit
from agkd_bml.evaluation.curves import Curves, accuracy_curves, write_curves
from agkd_bml.evaluation.loader import EvalOptions, ModelLoader, require_positive
from agkd_bml.evaluation.robust import AttackResult, evaluate_attacks
from agkd_bml.evaluation.state import EvalState, NotSaved
from agkd_bml.evaluation.stats import mcnemar, wilson_interval
from agkd_bml.evaluation.table import format_table, write_tables

__all__ = [
    "AttackResult",
    "Check",
    "Curves",
    "EvalOptions",
    "EvalState",
    "ModelLoader",
    "NotSaved",
    "accuracy_curves",
    "audit",
    "evaluate_attacks",
    "format_table",
    "mcnemar",
    "require_positive",
    "verdict",
    "wilson_interval",
    "write_audit",
    "write_curves",
    "write_tables",
]
