"""Robust accuracy of models under attack specs, and the tables that report it."""

from agkd_bml.evaluate.robust import AttackResult, evaluate_attacks
from agkd_bml.evaluate.table import format_table, write_tables

__all__ = ["AttackResult", "evaluate_attacks", "format_table", "write_tables"]
