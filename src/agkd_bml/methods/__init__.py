"""Training methods by name. A new method is one file with a :class:`Method` subclass plus one line here."""

from __future__ import annotations

from agkd_bml.config import HyperParam
from agkd_bml.methods.agkd_bml import Agkd, AgkdBml, Bml
from agkd_bml.methods.base import LossTerms, Method, MethodContext
from agkd_bml.methods.fast_at import FastAt
from agkd_bml.methods.mart import Mart
from agkd_bml.methods.pgd_at import PgdAt
from agkd_bml.methods.sml import Sml
from agkd_bml.methods.standard import Standard
from agkd_bml.methods.trades import Trades

#: Registry: ``--method NAME`` -> class.
METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (Standard, PgdAt, FastAt, Trades, Mart, Sml, Bml, Agkd, AgkdBml)
}

#: Every hyper-parameter some method declares, by name (one CLI option and config key each).
PARAMS: dict[str, HyperParam] = {p.name: p for cls in METHODS.values() for p in cls.params}


def methods_using(name: str) -> list[str]:
    """The methods that read hyper-parameter ``name``."""
    return [m for m, cls in METHODS.items() if any(p.name == name for p in cls.params)]


__all__ = ["METHODS", "PARAMS", "LossTerms", "Method", "MethodContext", "methods_using"]
