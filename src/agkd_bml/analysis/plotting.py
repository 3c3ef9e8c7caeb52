"""Shared matplotlib set-up: a headless backend and atomic PNG/PDF writes."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from agkd_bml.fileio import atomic_write


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display on servers and in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, stem: Path, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Write ``stem.png`` / ``stem.pdf`` atomically and close the figure."""
    paths = []
    for ext in formats:
        path = stem.with_suffix(f".{ext}")
        atomic_write(path, functools.partial(fig.savefig, format=ext, dpi=120, bbox_inches="tight"))
        paths.append(path)
    pyplot().close(fig)
    return paths
