"""Training methods by name. A new method is one file with a :class:`Method` subclass plus one line here."""

from __future__ import annotations

from agkd_bml.methods.agkd_bml import Agkd, AgkdBml, Bml
from agkd_bml.methods.base import LossTerms, Method, MethodContext
from agkd_bml.methods.mart import Mart
from agkd_bml.methods.pgd_at import PgdAT
from agkd_bml.methods.sml import Sml
from agkd_bml.methods.standard import Standard
from agkd_bml.methods.trades import Trades

#: Registry: ``--method NAME`` -> class.
METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (Standard, PgdAT, Trades, Mart, Sml, Bml, Agkd, AgkdBml)
}

__all__ = ["METHODS", "LossTerms", "Method", "MethodContext"]
